//! `[checkpoint]`: saving, resuming and exporting.

use crate::declare::{choice, section};

choice! {
    /// Dtype of the final model-only export.
    pub enum ExportDtype {
        /// float16.
        Float16 = "float16",
        /// bfloat16.
        Bfloat16 = "bfloat16",
        /// float32.
        Float32 = "float32",
    }
}

choice! {
    /// How checkpoints are written.
    pub enum AsyncMode {
        /// Synchronous: training waits for the write.
        Disabled = "disabled",
        /// Written in the background.
        Async = "async",
        /// Staged to pinned host memory, written by a separate process.
        AsyncWithPinnedMem = "async_with_pinned_mem",
    }
}

/// What `checkpoint.exclude_from_loading` may name.
pub const CHECKPOINT_PARTS: &[&str] = &[
    "model",
    "optimizer",
    "lr_scheduler",
    "dataloader",
    "train_state",
];

section! {
    /// Checkpointing: `{job.dump_folder}/{checkpoint.folder}/step-{N}/`.
    pub struct Checkpoint {
        /// Whether to enable checkpointing.
        pub enable: bool = false,
        /// Checkpoint the dataloader index for fault-tolerant replicas (TorchFT only).
        pub enable_ft_dataloader_checkpoints: bool = true,
        /// Folder for checkpoints, under `job.dump_folder`.
        pub folder: String = String::from("checkpoint"),
        /// Checkpointing interval, in steps.
        pub interval: usize = 500,
        /// Checkpoint to load when `checkpoint.folder` has none (e.g. pretrained weights); a step folder.
        pub initial_load_path: Option<String> = None,
        /// Load only the model (not optimizer, scheduler, data state) from `initial_load_path`.
        pub initial_load_model_only: bool = true,
        /// `initial_load_path` is in Hugging Face safetensors format (needs `initial_load_model_only`).
        pub initial_load_in_hf: bool = false,
        /// The Hugging Face checkpoint to load is quantized and must be dequantized on load.
        pub initial_load_in_hf_quantized: bool = false,
        /// At the last step save only the model (cast to `export_dtype`) instead of a full checkpoint.
        pub last_save_model_only: bool = true,
        /// At the last step save in Hugging Face safetensors format (needs `last_save_model_only`).
        pub last_save_in_hf: bool = false,
        /// Dtype of the last-step model-only export: `float16`, `bfloat16` or `float32`.
        pub export_dtype: ExportDtype = ExportDtype::Float32,
        /// Checkpoint writing mode: `disabled`, `async` or `async_with_pinned_mem`.
        pub async_mode: AsyncMode = AsyncMode::Disabled,
        /// Keep only the latest k checkpoints; 0 keeps all, 1 is not allowed.
        pub keep_latest_k: usize = 10,
        /// Step to load; -1 loads the latest.
        pub load_step: i64 = -1,
        /// Checkpoint parts not to load: any of `model`, `optimizer`, `lr_scheduler`, `dataloader`, `train_state`.
        pub exclude_from_loading: Vec<String> = Vec::new(),
        /// Also save a checkpoint right after the first step.
        pub enable_first_step_checkpoint: bool = false,
        /// Initialize the model on one device, save it as step 0 and exit (needs `enable`).
        pub create_seed_checkpoint: bool = false,
        /// Load checkpoints but never save any.
        pub load_only: bool = false,
    }
}

impl Checkpoint {
    /// `load_step` with torchtitan's -1 decoded: `None` means the latest checkpoint.
    pub fn step_to_load(&self) -> Option<usize> {
        usize::try_from(self.load_step).ok()
    }
}
