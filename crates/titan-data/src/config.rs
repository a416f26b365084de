//! Data loader settings (torchtitan's `training.dataset`, `dataset_path`, `seq_len`,
//! `local_batch_size`, plus the data-parallel coordinates).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::DatasetRegistry;

/// How to build a [`crate::DataLoader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataLoaderConfig {
    /// Registered dataset name (case-insensitive), e.g. `"sotu"`, `"c4_test"`, `"synthetic"`.
    pub dataset: String,
    /// Overrides the dataset's default location (a local mirror).
    pub dataset_path: Option<PathBuf>,
    /// JSON field / Parquet column holding the document text.
    pub text_field: String,
    /// Tokens per row.
    pub seq_len: usize,
    /// Rows per batch on this rank.
    pub local_batch_size: usize,
    /// This rank's index among the data-parallel ranks.
    pub dp_rank: usize,
    /// Number of data-parallel ranks (ranks that read different data).
    pub dp_world_size: usize,
    /// Loop over the data forever (training) instead of stopping at its end (validation).
    pub infinite: bool,
    /// Also emit per-document positions (block-causal attention).
    pub emit_positions: bool,
    /// Seed of the `synthetic` dataset.
    pub seed: u64,
    /// Batches prepared ahead on a background thread; 0 prepares them on the caller's thread.
    pub prefetch: usize,
    /// The model's vocabulary size: a token id at or above it is an error, and `synthetic`
    /// draws ids below it. `None` skips the check (and `synthetic` uses the tokenizer's size).
    pub vocab_size: Option<usize>,
}

impl Default for DataLoaderConfig {
    /// torchtitan's defaults (seq_len 2048, local batch 8), on the embedded corpus.
    fn default() -> Self {
        DataLoaderConfig {
            dataset: "sotu".into(),
            dataset_path: None,
            text_field: "text".into(),
            seq_len: 2048,
            local_batch_size: 8,
            dp_rank: 0,
            dp_world_size: 1,
            infinite: true,
            emit_positions: false,
            seed: 0,
            prefetch: 2,
            vocab_size: None,
        }
    }
}

impl DataLoaderConfig {
    /// Defaults with this dataset and shape.
    pub fn new(dataset: impl Into<String>, seq_len: usize, local_batch_size: usize) -> Self {
        DataLoaderConfig {
            dataset: dataset.into(),
            seq_len,
            local_batch_size,
            ..Default::default()
        }
    }

    /// The same settings on the dataset's registered validation split (e.g. `sotu` ->
    /// `sotu_validation`, `c4` -> `c4_validation`), finite.
    pub fn validation(&self, registry: &DatasetRegistry) -> Result<DataLoaderConfig> {
        let name =
            registry
                .validation_of(&self.dataset)
                .ok_or_else(|| Error::NoValidationSplit {
                    dataset: self.dataset.clone(),
                })?;
        Ok(DataLoaderConfig {
            dataset: name.to_string(),
            infinite: false,
            ..self.clone()
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |key, value: usize, hint: &str| Error::Config {
            key,
            value: value.to_string(),
            hint: hint.to_string(),
        };
        if self.seq_len == 0 {
            return Err(bad("seq_len", 0, "use a positive sequence length"));
        }
        if self.local_batch_size == 0 {
            return Err(bad("local_batch_size", 0, "use a positive batch size"));
        }
        if self.dp_world_size == 0 {
            return Err(bad(
                "dp_world_size",
                0,
                "use at least one data-parallel rank",
            ));
        }
        if self.dp_rank >= self.dp_world_size {
            return Err(bad(
                "dp_rank",
                self.dp_rank,
                &format!("must be below dp_world_size {}", self.dp_world_size),
            ));
        }
        if self.vocab_size == Some(0) {
            return Err(bad("vocab_size", 0, "use the model's vocabulary size"));
        }
        if self.vocab_size.is_some_and(|v| v > u32::MAX as usize) {
            return Err(bad(
                "vocab_size",
                self.vocab_size.unwrap_or(0),
                "token ids are u32; use a smaller vocabulary",
            ));
        }
        Ok(())
    }
}
