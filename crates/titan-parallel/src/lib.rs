//! Titan's distributed runtime and data parallelism.
//!
//! This crate owns how ranks find each other (torchrun/Slurm rendezvous, a TCP store), how
//! they talk ([`ProcessGroup`]: in-process threads, TCP; NCCL with feature `nccl`), how a job
//! is laid out ([`DeviceMesh`] from torchtitan's `parallelism.*` degrees), how a local
//! multi-process job is launched, and how parameters and gradients are distributed (FSDP, HSDP, DDP) through
//! titan-core's [`titan_core::BlockHooks`].
//!
//! It must NOT know any model: strategies work on any [`titan_core::LayeredModel`] /
//! [`titan_core::Module`] through units and parameter names. It knows nothing of optimizers,
//! data or checkpoint formats either: it hands the optimizer titan-core [`titan_core::Param`]s
//! (shards under FSDP) and the checkpointer shard metadata.

pub mod clip;
pub mod comm;
pub mod data_parallel;
pub mod ddp;
pub mod env;
pub mod error;
pub mod fsdp;
pub mod init;
pub mod launch;
pub mod mesh;
pub mod reduce;
mod rows;
pub mod shard;
pub mod state;
pub mod store;
pub mod trace;

pub use clip::{clip_grad_norm_distributed, global_grad_norm, local_sq_norm};
pub use comm::{local_world, run_local, Group, PendingWork, ProcessGroup, ReduceOp, Work};
pub use data_parallel::{DataParallel, DataParallelConfig};
pub use ddp::{Ddp, DdpConfig};
pub use env::{parse_nodelist, DistEnv, EnvSource};
pub use error::{Error, Result};
pub use fsdp::{Fsdp, FsdpConfig, ReshardAfterForward, ShardInit};
pub use init::{init_process_group, init_process_group_on, CommOptions, Rendezvous};
pub use launch::{launch, launch_local, parse_log_rank, LaunchConfig};
pub use mesh::{DeviceMesh, MeshAxis, ParallelDims};
pub use reduce::{all_reduce_f64, max_f64, sum_f64, sum_u64};
pub use shard::ShardLayout;
pub use state::ShardMeta;
