//! Titan's training engine: parameters, modules with explicit forward and backward, block
//! hooks and activation checkpointing, built on candle's tensors.
//!
//! This crate owns the numerics of one training step on one device. It knows nothing of
//! models (no Llama here), of collectives or of file formats: models are built from its
//! modules ([`ops`]) and shaped as a [`LayeredModel`]; parallelism attaches to its
//! [`BlockHooks`]; the [`Executor`] runs a pass and applies activation checkpointing.
//!
//! Candle is the tensor substrate only: the training path never calls candle's
//! `Tensor::backward()`; every module saves what its backward needs and computes its own
//! gradients (f32 accumulation into [`Param`] gradients).

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod executor;
pub mod hooks;
pub mod layered;
pub mod ops;
pub mod param;
pub mod rng;
pub mod testing;

pub use error::{Error, Result};
pub use executor::{ActivationCheckpoint, Executor, PassReport};
pub use hooks::{BlockHooks, HookChain, MicrobatchInfo, NoHooks, UnitId};
pub use layered::{Block, LayeredModel, SaveMode, SavedState};
pub use param::{Init, Module, Param, ParamSpec};
