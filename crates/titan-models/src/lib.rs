//! Titan's models: what they are (shapes, parameter names, init rules, FLOPs) and how they
//! compute (explicit forward and backward built from `titan-core` modules).
//!
//! Models know nothing of collectives, sharding, checkpoint files or data loading: a model is
//! a [`titan_core::LayeredModel`] whose units the parallelism crate may gather and shard
//! through the engine's block hooks.

pub mod error;
pub mod llama3;

pub use error::{Error, Result};
