//! Titan's training engine: parameters, modules with explicit forward and backward, block
//! hooks and activation checkpointing, built on candle's tensors.
//!
//! This crate owns the numerics of one training step on one device. It knows nothing of
//! models (no Llama here), of collectives or of file formats: models are built from its
//! modules, and parallelism attaches to its block hooks.

pub mod error;
pub mod param;
pub mod rng;

pub use error::{Error, Result};
pub use param::{Init, Module, Param, ParamSpec};
