//! Titan's checkpoints: named tensors (possibly sharded across ranks) and opaque JSON blobs
//! saved per step as per-rank safetensors files with a checksummed index, written
//! atomically (temporary folder, completion marker, rename), optionally in the background,
//! and loaded back into any number of ranks (resharding). Also Hugging Face Llama
//! import/export through a [`hf::StateDictAdapter`].
//!
//! This crate knows nothing of training loops, optimizers, collectives or data loaders: the
//! trainer hands it tensors and blobs and asks for regions back; multi-rank coordination
//! (barriers before [`Checkpointer::finalize`]) is the caller's. See `docs/checkpoint.md`
//! for the on-disk format.
//!
//! ```no_run
//! # use titan_checkpoint::*;
//! # fn demo(w: candle_core::Tensor) -> Result<()> {
//! let cfg = CheckpointConfig { enable: true, folder: "/tmp/run/checkpoint".into(), interval: 10, ..Default::default() };
//! let mut ckpt = Checkpointer::new(cfg)?;
//! let wants = [TensorRequest::full("model.norm.weight", vec![256])];
//! if let Some(state) = ckpt.resume(&wants)? {
//!     let _norm = &state.tensors["model.norm.weight"];
//! }
//! if ckpt.should_save(10, false) {
//!     let mut req = SaveRequest::single(10, false);
//!     req.tensors.push(ShardedTensor::full("model.norm.weight", w));
//!     req.blobs.insert(keys::TRAIN_STATE.into(), serde_json::json!({"step": 10}));
//!     ckpt.save(req)?;
//! }
//! ckpt.wait()?;
//! # Ok(()) }
//! ```

pub mod checkpointer;
pub mod config;
pub mod error;
pub mod hf;
pub mod host;
pub mod index;
pub mod keys;
pub mod layout;
pub mod load;
pub mod params;
mod progress;
pub mod region;
pub mod request;
pub mod safetensors_io;
mod save;
pub mod xxh64;

pub use checkpointer::{Checkpointer, LoadPlan};
pub use config::{AsyncMode, CheckpointConfig, ExportDtype};
pub use error::{Error, Result};
pub use hf::llama::{LlamaAdapter, LlamaArgs};
pub use hf::{
    export_checkpoint, import_checkpoint, load_hf, HfExportOptions, HfImportOptions,
    StateDictAdapter,
};
pub use index::CheckpointIndex;
pub use load::{load_step_dir, verify_step_dir, LoadFilter, LoadedState};
pub use region::Region;
pub use request::{SaveRequest, ShardedTensor, TensorRequest};
