//! The `[checkpoint]` options, with torchtitan v0.2.2's names, defaults and checks.

use std::path::PathBuf;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Whether saves block training until the files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsyncMode {
    /// `save` returns once the checkpoint is on disk.
    #[default]
    Disabled,
    /// `save` copies tensors to host memory and returns; a background thread writes them.
    Async,
}

/// The dtype of floating-point model tensors in a model-only last save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportDtype {
    #[default]
    Float32,
    Bfloat16,
    Float16,
}

impl ExportDtype {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            ExportDtype::Float32 => DType::F32,
            ExportDtype::Bfloat16 => DType::BF16,
            ExportDtype::Float16 => DType::F16,
        }
    }
}

/// Checkpoint options (torchtitan's `[checkpoint]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save and load checkpoints at all.
    pub enable: bool,
    /// Where step folders live: the caller resolves torchtitan's `{dump_folder}/{folder}`.
    pub folder: PathBuf,
    /// Save every `interval` steps.
    pub interval: u64,
    /// Keep only the newest `k` complete checkpoints; 0 keeps all; 1 is refused.
    pub keep_latest_k: usize,
    /// Step to resume from when `folder` holds checkpoints; -1 = the latest.
    pub load_step: i64,
    /// Blocking or background writes.
    pub async_mode: AsyncMode,
    /// The last step saves the model only, cast to `export_dtype`.
    pub last_save_model_only: bool,
    /// The last (model-only) save also writes a Hugging Face folder (`step-N/hf`).
    pub last_save_in_hf: bool,
    /// dtype of model tensors in model-only saves.
    pub export_dtype: ExportDtype,
    /// Top-level keys not restored on load: `optimizer`, `lr_scheduler`, `dataloader`,
    /// `train_state`, `model`.
    pub exclude_from_loading: Vec<String>,
    /// A checkpoint folder (a `step-N` folder, or a Hugging Face folder with
    /// `initial_load_in_hf`) to start from when `folder` holds no checkpoint.
    pub initial_load_path: Option<PathBuf>,
    /// Load only the model from `initial_load_path`.
    pub initial_load_model_only: bool,
    /// `initial_load_path` (or `hf_assets_path`) is in Hugging Face layout.
    pub initial_load_in_hf: bool,
    /// torchtitan's `model.hf_assets_path`: the HF folder `initial_load_in_hf` falls back to.
    pub hf_assets_path: Option<PathBuf>,
    /// Also save after step 1.
    pub enable_first_step_checkpoint: bool,
    /// This run only writes a seed checkpoint (`step-0`, model only) and exits.
    pub create_seed_checkpoint: bool,
    /// Load but never save.
    pub load_only: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enable: false,
            folder: PathBuf::from("./outputs/checkpoint"),
            interval: 500,
            keep_latest_k: 10,
            load_step: -1,
            async_mode: AsyncMode::Disabled,
            last_save_model_only: true,
            last_save_in_hf: false,
            export_dtype: ExportDtype::Float32,
            exclude_from_loading: Vec::new(),
            initial_load_path: None,
            initial_load_model_only: true,
            initial_load_in_hf: false,
            hf_assets_path: None,
            enable_first_step_checkpoint: false,
            create_seed_checkpoint: false,
            load_only: false,
        }
    }
}

impl CheckpointConfig {
    /// Reject option values torchtitan rejects, naming the option and the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, fix: &str| {
            Err(Error::Config {
                field,
                value,
                fix: fix.to_string(),
            })
        };
        if self.interval == 0 {
            return bad(
                "interval",
                "0".into(),
                "use a positive number of steps between saves",
            );
        }
        if self.keep_latest_k == 1 {
            return bad(
                "keep_latest_k",
                "1".into(),
                "use 0 (keep all) or at least 2, so a good checkpoint survives while the next one is written",
            );
        }
        if self.load_step < -1 {
            return bad(
                "load_step",
                self.load_step.to_string(),
                "use -1 (latest) or a saved step number",
            );
        }
        if self.folder.as_os_str().is_empty() {
            return bad(
                "folder",
                "\"\"".into(),
                "name a folder (torchtitan's default is \"checkpoint\")",
            );
        }
        if self.create_seed_checkpoint && !self.enable {
            return bad(
                "create_seed_checkpoint",
                "true".into(),
                "a seed checkpoint is written through the checkpointer: also set checkpoint.enable = true",
            );
        }
        if self.last_save_in_hf && !self.last_save_model_only {
            return bad(
                "last_save_in_hf",
                "true".into(),
                "Hugging Face folders hold the model only: also set checkpoint.last_save_model_only = true",
            );
        }
        if let Some(key) = self
            .exclude_from_loading
            .iter()
            .find(|k| k.is_empty() || k.contains('.'))
        {
            return bad(
                "exclude_from_loading",
                format!("{:?}", self.exclude_from_loading),
                &format!("`{key}` is not a top-level key: use names like \"optimizer\", \"lr_scheduler\", \"dataloader\", \"train_state\""),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_torchtitan() {
        let c = CheckpointConfig::default();
        assert!(!c.enable);
        assert_eq!(c.interval, 500);
        assert_eq!(c.keep_latest_k, 10);
        assert_eq!(c.load_step, -1);
        assert_eq!(c.async_mode, AsyncMode::Disabled);
        assert!(c.last_save_model_only);
        assert_eq!(c.export_dtype, ExportDtype::Float32);
        assert!(c.initial_load_model_only);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn deserializes_torchtitan_spellings() {
        let c: CheckpointConfig = serde_json::from_str(
            r#"{"enable": true, "folder": "/tmp/x", "async_mode": "async", "export_dtype": "bfloat16",
                "exclude_from_loading": ["dataloader", "optimizer"], "keep_latest_k": 0}"#,
        )
        .unwrap();
        assert_eq!(c.async_mode, AsyncMode::Async);
        assert_eq!(c.export_dtype.dtype(), DType::BF16);
        assert_eq!(c.keep_latest_k, 0);
        assert!(serde_json::from_str::<CheckpointConfig>(r#"{"enabel": true}"#).is_err());
    }

    #[test]
    fn rejects_what_torchtitan_rejects() {
        let with = |f: &dyn Fn(&mut CheckpointConfig)| {
            let mut c = CheckpointConfig {
                enable: true,
                ..Default::default()
            };
            f(&mut c);
            c.validate()
        };
        let msg = with(&|c| c.keep_latest_k = 1).unwrap_err().to_string();
        assert!(
            msg.contains("keep_latest_k") && msg.contains("at least 2"),
            "{msg}"
        );
        assert!(with(&|c| c.interval = 0).is_err());
        assert!(with(&|c| c.load_step = -2).is_err());
        assert!(with(&|c| {
            c.last_save_in_hf = true;
            c.last_save_model_only = false
        })
        .is_err());
        assert!(with(&|c| c.exclude_from_loading = vec!["optimizer.state".into()]).is_err());
        assert!(with(&|c| c.keep_latest_k = 2).is_ok());
    }
}
