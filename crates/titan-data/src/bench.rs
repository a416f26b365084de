//! Throughput of the CPU side of the pipeline (tokenize + pack) on the embedded corpus, on the
//! calling thread only; `cargo xtask bench data` reports it.

use std::sync::Arc;
use std::time::Instant;

use crate::config::DataLoaderConfig;
use crate::embedded;
use crate::error::Result;
use crate::loader::DataLoader;
use crate::registry::DatasetRegistry;
use crate::source::DocumentSource;

/// One pass over the embedded train split.
#[derive(Debug, Clone, Copy)]
pub struct TokenizePackReport {
    /// Addresses read.
    pub documents: u64,
    /// UTF-8 bytes of text read.
    pub text_bytes: u64,
    /// Input tokens handed out in batches.
    pub tokens: u64,
    /// Wall time of the pass.
    pub seconds: f64,
}

impl TokenizePackReport {
    /// Tokens handed out per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Tokenizes and packs the whole embedded train split once into `seq_len` rows, inline (no
/// prefetch thread), and times it.
pub fn bench_tokenize_pack(seq_len: usize) -> Result<TokenizePackReport> {
    let tokenizer = Arc::new(embedded::tokenizer()?);
    let corpus = embedded::sotu_train()?;
    let text_bytes = corpus.documents().iter().map(|d| d.len() as u64).sum();
    let registry = DatasetRegistry::with_builtins();
    let cfg = DataLoaderConfig {
        infinite: false,
        prefetch: 0,
        ..DataLoaderConfig::new("sotu", seq_len, 1)
    };
    let mut loader = DataLoader::new(&cfg, tokenizer, &registry)?;
    let started = Instant::now();
    let mut tokens = 0u64;
    while let Some(batch) = loader.next_batch()? {
        tokens += batch.inputs.len() as u64;
    }
    Ok(TokenizePackReport {
        documents: corpus.num_records(),
        text_bytes,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}
