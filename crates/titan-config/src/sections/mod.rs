//! The configuration sections, one struct per TOML table, and [`JobConfig`] holding them all.
//!
//! Names, types and defaults follow torchtitan 0.2.2's `JobConfig`; options whose doc starts
//! with `(Titan)` are Titan extensions.

mod checkpoint;
mod compile;
mod job;
mod memory;
mod model;
mod observe;
mod optim;
mod parallelism;
mod training;

pub use checkpoint::{AsyncMode, Checkpoint, ExportDtype, CHECKPOINT_PARTS};
pub use compile::{
    Compile, Float8GroupedMm, Float8Linear, Float8Recipe, MxCastKernel, MxGroupedMm,
    MxGroupedRecipe, MxLinear, Quantize, QuantizedGroupedMm, QuantizedLinear,
};
pub use job::{Debug, Experimental, Job};
pub use memory::{AcMode, ActivationCheckpoint, MemoryEstimation, SelectiveAcOption};
pub use model::{AttnMaskType, Model};
pub use observe::{Metrics, Profiling};
pub use optim::{DecayType, LrScheduler, Optimizer, OptimizerImplementation, OptimizerName};
pub use parallelism::{
    Comm, CommMode, CpLoadBalancer, CpRotateMethod, EpCommBackend, FaultTolerance, FtProcessGroup,
    Parallelism, ReshardAfterForward, SemiSyncMethod,
};
pub use training::{DataLoader, Device, FloatDtype, ReduceDtype, Training, Validation};

use crate::declare::section;

section! {
    /// The whole job configuration: every section of torchtitan 0.2.2's `JobConfig`.
    pub struct JobConfig {
    }
    subsections {
        pub job: Job,
        pub profiling: Profiling,
        pub metrics: Metrics,
        pub model: Model,
        pub optimizer: Optimizer,
        pub lr_scheduler: LrScheduler,
        pub training: Training,
        pub parallelism: Parallelism,
        pub checkpoint: Checkpoint,
        pub activation_checkpoint: ActivationCheckpoint,
        pub compile: Compile,
        pub quantize: Quantize,
        pub comm: Comm,
        pub memory_estimation: MemoryEstimation,
        pub fault_tolerance: FaultTolerance,
        pub experimental: Experimental,
        pub validation: Validation,
        pub debug: Debug,
    }
}
