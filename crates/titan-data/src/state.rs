//! The loader's checkpointable state (torchtitan's map-style dataset state: `token_buffer`,
//! `sample_idx`, plus the epoch), stored per data-parallel rank.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a loader is, as of the last batch it handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Dataset name, checked on load.
    pub dataset: String,
    /// Data-parallel rank that wrote this state, checked on load.
    pub dp_rank: usize,
    /// Data-parallel world size that wrote this state, checked on load.
    pub dp_world_size: usize,
    /// Completed passes over this rank's records.
    pub epoch: u64,
    /// Records of this rank's block already tokenized in the current epoch (for `synthetic`:
    /// windows generated).
    pub sample_idx: u64,
    /// Tokens read but not yet cut into a window.
    pub token_buffer: Vec<u32>,
    /// A finite loader reached the end of its data.
    pub exhausted: bool,
}

impl LoaderState {
    /// The state of a loader that has not handed out anything.
    pub fn initial(dataset: &str, dp_rank: usize, dp_world_size: usize) -> Self {
        LoaderState {
            dataset: dataset.to_string(),
            dp_rank,
            dp_world_size,
            epoch: 0,
            sample_idx: 0,
            token_buffer: Vec::new(),
            exhausted: false,
        }
    }

    /// JSON text, for checkpoint writers that store opaque blobs.
    pub fn to_json(&self) -> String {
        // Plain data (strings, integers, bools): serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Inverse of [`LoaderState::to_json`].
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(Error::StateFormat)
    }

    /// Errors unless this state was written by a loader with the same dataset and data-parallel
    /// layout.
    pub(crate) fn check_compatible(
        &self,
        dataset: &str,
        dp_rank: usize,
        dp_world_size: usize,
    ) -> Result<()> {
        let mismatch = |key, saved: String, current: String| {
            Err(Error::StateMismatch {
                key,
                saved,
                current,
            })
        };
        if self.dataset != dataset {
            return mismatch("dataset", self.dataset.clone(), dataset.to_string());
        }
        if self.dp_world_size != dp_world_size {
            return mismatch(
                "dp_world_size",
                self.dp_world_size.to_string(),
                dp_world_size.to_string(),
            );
        }
        if self.dp_rank != dp_rank {
            return mismatch("dp_rank", self.dp_rank.to_string(), dp_rank.to_string());
        }
        Ok(())
    }
}
