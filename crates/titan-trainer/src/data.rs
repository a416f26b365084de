//! Where batches come from: a small trait, and Titan's data loader behind it.

use std::sync::Arc;
use std::time::Duration;

use titan_config::JobConfig;
use titan_data::{Batch, DataLoader, DataLoaderConfig, DatasetRegistry, Tokenizer};

use crate::Result;

/// A checkpointable stream of host batches for one data-parallel rank.
pub trait BatchSource: Send {
    /// The next batch, or `None` when a finite source ends.
    fn next_batch(&mut self) -> Result<Option<Batch>>;
    /// Everything needed to resume exactly here.
    fn state(&self) -> Result<serde_json::Value>;
    /// Resume from a [`BatchSource::state`].
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()>;
    /// Total time the trainer has waited for batches.
    fn wait_time(&self) -> Duration;
    /// The dataset's name, for messages.
    fn name(&self) -> String;
}

impl BatchSource for DataLoader {
    fn next_batch(&mut self) -> Result<Option<Batch>> {
        Ok(DataLoader::next_batch(self)?)
    }
    fn state(&self) -> Result<serde_json::Value> {
        serde_json::to_value(DataLoader::state(self))
            .map_err(|e| crate::Error::Msg(format!("data loader state: {e}")))
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: titan_data::LoaderState = serde_json::from_value(state.clone()).map_err(|e| {
            crate::Error::Msg(format!("the checkpoint's data loader state does not parse ({e}); add \"dataloader\" to checkpoint.exclude_from_loading to start the data from the beginning"))
        })?;
        Ok(DataLoader::load_state(self, &s)?)
    }
    fn wait_time(&self) -> Duration {
        DataLoader::wait_time(self)
    }
    fn name(&self) -> String {
        self.dataset().to_string()
    }
}

/// What a data builder is asked for.
#[derive(Clone)]
pub struct DataRequest<'a> {
    pub config: &'a JobConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub registry: &'a DatasetRegistry,
    pub dp_rank: usize,
    pub dp_world_size: usize,
    /// Whether the model wants per-document positions.
    pub emit_positions: bool,
    /// Validation split instead of training.
    pub validation: bool,
    /// The model's vocabulary size (synthetic data draws below it; real data is checked).
    pub vocab_size: usize,
}

/// Titan's default: the `titan-data` loader on `training.dataset` (or `validation.dataset`).
pub fn default_batch_source(req: &DataRequest<'_>) -> Result<Box<dyn BatchSource>> {
    let cfg = req.config;
    let (dataset, path, seq_len, batch) = if req.validation {
        let v = &cfg.validation;
        (
            v.dataset.clone(),
            v.dataset_path.clone(),
            v.seq_len,
            v.local_batch_size,
        )
    } else {
        let t = &cfg.training;
        (
            t.dataset.clone(),
            t.dataset_path.clone(),
            t.seq_len,
            t.local_batch_size,
        )
    };
    let mut dl = DataLoaderConfig::new(dataset, seq_len, batch);
    dl.dataset_path = path.map(Into::into);
    dl.dp_rank = req.dp_rank;
    dl.dp_world_size = req.dp_world_size;
    dl.infinite = !req.validation;
    dl.emit_positions = req.emit_positions;
    dl.seed = cfg.debug.seed.unwrap_or(0);
    dl.vocab_size = Some(req.vocab_size);
    Ok(Box::new(DataLoader::new(
        &dl,
        req.tokenizer.clone(),
        req.registry,
    )?))
}
