//! `[training]`, `[validation]` and their `dataloader` subsections.

use crate::declare::{choice, section};

choice! {
    /// Device to train on.
    pub enum Device {
        /// CUDA when Titan was built with it and a GPU is visible, else CPU.
        Auto = "auto",
        /// The CPU.
        Cpu = "cpu",
        /// CUDA GPUs (one per rank).
        Cuda = "cuda",
    }
}

choice! {
    /// Floating-point dtype of parameters or computation.
    pub enum FloatDtype {
        /// bfloat16.
        Bfloat16 = "bfloat16",
        /// float32.
        Float32 = "float32",
    }
}

choice! {
    /// Dtype of gradient reductions (torchtitan allows only float32).
    pub enum ReduceDtype {
        /// float32.
        Float32 = "float32",
    }
}

section! {
    /// Data-loader settings (torchtitan passes them to PyTorch's StatefulDataLoader).
    pub struct DataLoader {
        /// Number of worker processes for data loading.
        pub num_workers: usize = 0,
        /// Keep workers alive between epochs; only valid when `num_workers > 0`.
        pub persistent_workers: bool = false,
        /// Copy batches to pinned memory before returning them.
        pub pin_memory: bool = false,
        /// Batches loaded in advance by each worker; only valid when `num_workers > 0`.
        pub prefetch_factor: Option<usize> = None,
    }
}

section! {
    /// Training data, batch shape, length of the run and numerics.
    pub struct Training {
        /// Dataset to use (torchtitan: `c4_test`, `c4`; Titan: `sotu`, its embedded corpus).
        pub dataset: String = String::from("c4_test"),
        /// Path to the dataset on disk; overrides the dataset's built-in location.
        pub dataset_path: Option<String> = None,
        /// Local batch size (sequences per device per micro-step).
        pub local_batch_size: usize = 8,
        /// Global batch size in sequences; -1 means `local_batch_size * data-parallel degree` (no accumulation).
        ///
        /// Must be a multiple of `local_batch_size * data-parallel degree`; the quotient is the
        /// number of gradient-accumulation micro-steps.
        pub global_batch_size: i64 = -1,
        /// Sequence length (tokens per row).
        pub seq_len: usize = 2048,
        /// Max norm for gradient clipping.
        pub max_norm: f64 = 1.0,
        /// How many train steps to run.
        pub steps: usize = 10000,
        /// Offload parameters, gradients and optimizer states to the CPU (FSDP).
        pub enable_cpu_offload: bool = false,
        /// Training dtype; `bfloat16` keeps parameters, gradients and optimizer states in bf16 without fp32 masters.
        pub dtype: FloatDtype = FloatDtype::Float32,
        /// Dtype of the parameters used in forward and backward under mixed precision.
        pub mixed_precision_param: FloatDtype = FloatDtype::Bfloat16,
        /// Dtype of gradient reductions under mixed precision.
        pub mixed_precision_reduce: ReduceDtype = ReduceDtype::Float32,
        /// Python garbage-collection interval, in steps (Titan: accepted, no effect).
        pub gc_freq: usize = 50,
        /// Run garbage collection every step to find reference cycles (Titan: accepted, no effect).
        pub gc_debug: bool = false,
        /// (Titan) Device to train on: `auto`, `cpu` or `cuda`.
        pub device: Device = Device::Auto,
    }
    subsections {
        pub dataloader: DataLoader,
    }
}

section! {
    /// Validation: a separate dataset evaluated every `freq` steps.
    pub struct Validation {
        /// Enable validation.
        pub enable: bool = false,
        /// Dataset to use for validation.
        pub dataset: String = String::from("c4_validation"),
        /// Path to the validation dataset on disk.
        pub dataset_path: Option<String> = None,
        /// Batch size for validation.
        pub local_batch_size: usize = 8,
        /// Sequence length for validation.
        pub seq_len: usize = 2048,
        /// Validate every `freq` steps.
        pub freq: usize = 10,
        /// Validation steps per validation run; -1 consumes the whole validation set.
        pub steps: i64 = -1,
    }
    subsections {
        pub dataloader: DataLoader,
    }
}

impl Training {
    /// `global_batch_size` with torchtitan's -1 decoded: `None` means one micro-step per step.
    pub fn global_batch(&self) -> Option<usize> {
        usize::try_from(self.global_batch_size).ok()
    }
}

impl Validation {
    /// `steps` with torchtitan's -1 decoded: `None` means run until the validation set ends.
    pub fn step_limit(&self) -> Option<usize> {
        usize::try_from(self.steps).ok()
    }
}
