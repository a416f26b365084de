//! Titan's data pipeline: text in, packed token batches out.
//!
//! This crate owns tokenization (Hugging Face `tokenizer.json` with torchtitan's BOS/EOS rules),
//! the dataset registry (embedded State of the Union corpus, JSON lines, plain-text folders,
//! Parquet, synthetic tokens, and user-registered sources), torchtitan 0.2.2 packing
//! (`seq_len + 1` windows, labels shifted by one, optional per-document positions), contiguous
//! per-data-parallel-rank sharding, a background prefetch thread with wait-time accounting,
//! and checkpointable loader state. It also rebuilds its embedded assets (`corpus_build`).
//!
//! It must NOT know about tensors, devices, models, parallelism beyond "my dp rank of N", or
//! checkpoint file layouts: it hands out plain `Vec`s and a serializable [`LoaderState`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use titan_data::{embedded, DataLoader, DataLoaderConfig, DatasetRegistry};
//!
//! # fn main() -> titan_data::Result<()> {
//! let tokenizer = Arc::new(embedded::tokenizer()?);
//! let registry = DatasetRegistry::with_builtins();
//! let cfg = DataLoaderConfig::new("sotu", 256, 4);
//! let mut loader = DataLoader::new(&cfg, tokenizer, &registry)?;
//! let batch = loader.next_batch()?.expect("the training loader is infinite");
//! assert_eq!(batch.inputs.len(), 4 * 256);
//! let saved = loader.state(); // store it in the checkpoint
//! # Ok(()) }
//! ```

mod batch;
pub mod bench;
mod config;
pub mod corpus_build;
pub mod embedded;
mod error;
mod loader;
mod pack;
mod producer;
mod registry;
mod shard;
pub mod source;
mod state;
mod synthetic;
mod tokenizer;

pub use batch::{Batch, IGNORE_INDEX};
pub use config::DataLoaderConfig;
pub use error::{Error, Result};
pub use loader::DataLoader;
pub use pack::document_positions;
pub use registry::{Dataset, DatasetRegistry, SourceFactory, SourceRequest};
pub use shard::contiguous_shard;
pub use source::{DocumentReader, DocumentSource, InMemorySource};
pub use state::LoaderState;
pub use tokenizer::{check_vocab, Tokenizer};
