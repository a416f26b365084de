//! Titan's fused CUDA kernels and their launchers.
//!
//! Owns: the CUDA C++ sources in `kernels/` (compiled by `build.rs` to sm_90a cubins with nvcc
//! when feature `cuda` is on, embedded in the binary and loaded per device on first use) and
//! one Rust launcher per kernel that takes and returns candle tensors on the device's stream.
//! Each launcher checks dtype, layout and sizes and returns [`Error::Unsupported`] for
//! anything outside its kernel, so callers can fall back to the plain path.
//!
//! Must not know: parameters, modules, models or training. The engine (`titan-core`) decides
//! when a fused kernel replaces a composite; this crate only computes. Without feature `cuda`
//! it holds the sources and the error type only.

mod error;
pub use error::{supported, Error, Result};

#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
pub use launch::{kernel_names, preload};

#[cfg(feature = "cuda")]
pub mod adamw;
#[cfg(feature = "cuda")]
pub mod attention;
#[cfg(feature = "cuda")]
pub mod elementwise;
#[cfg(feature = "cuda")]
pub mod embedding;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod gradnorm;
#[cfg(feature = "cuda")]
pub mod norm;
#[cfg(feature = "cuda")]
pub mod rope;
#[cfg(feature = "cuda")]
pub mod swiglu;
#[cfg(feature = "cuda")]
pub mod xent;

/// Whether this build carries the fused kernels (feature `cuda`).
pub const AVAILABLE: bool = cfg!(feature = "cuda");
