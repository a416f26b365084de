//! Titan's optimization: AdamW/Adam, global gradient-norm clipping and torchtitan's
//! learning-rate schedule, over titan-core [`Param`](titan_core::Param)s.
//!
//! This crate owns the update rule and its state. It knows nothing of models (it sees named
//! parameters), of data, or of collectives: distributed clipping is split into a local sum of
//! squares ([`local_sq_norm`]) that the caller reduces, and [`clip_with_total_norm`].
//!
//! # Precision
//!
//! Whatever the compute dtype (bf16 forward/backward), the optimizer works on the f32 master
//! ([`Param::master`](titan_core::Param::master)) and the f32 gradient, and keeps its state
//! (`exp_avg`, `exp_avg_sq`) in f32, with a per-parameter integer step count. Every tensor
//! operation runs in f32 on the parameter's device; scalars (bias corrections, step size,
//! `1 - lr * weight_decay`) are computed in f64 and cast to f32, as PyTorch does with Python
//! floats. The update follows PyTorch's single-tensor `Adam`/`AdamW` operation by operation.
//! After a step the compute copies are stale: callers refresh them
//! ([`Param::refresh_compute`](titan_core::Param::refresh_compute)) or use
//! [`Optimizer::step_and_refresh`].
//!
//! ```
//! # fn main() -> titan_optim::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use titan_core::{Init, Param};
//! use titan_optim::{clip_grad_norm, AdamWConfig, LrScheduler, LrSchedulerConfig, Optimizer};
//!
//! let mut w = Param::from_tensor("w", Tensor::ones(4, DType::F32, &Device::Cpu)?, Init::Ones)?;
//! w.accumulate_grad(&Tensor::new(&[3f32, 4.0, 0.0, 0.0], &Device::Cpu)?)?;
//!
//! let mut opt = Optimizer::new(AdamWConfig::default())?;
//! let mut sched = LrScheduler::new(LrSchedulerConfig { total_steps: 10, warmup_steps: 2, ..Default::default() })?;
//!
//! let grad_norm = clip_grad_norm(&mut [&mut w], 1.0)?; // 5.0, grads scaled by 1/5
//! assert!((grad_norm - 5.0).abs() < 1e-6);
//! opt.step_and_refresh(&mut [&mut w], sched.current_lr(), DType::BF16)?;
//! sched.step();
//! assert_eq!(sched.last_step(), 1);
//! # Ok(()) }
//! ```

pub mod clip;
pub mod config;
pub mod error;
#[cfg(feature = "cuda")]
mod fused;
pub mod lr_scheduler;
pub mod optimizer;
pub mod state;
mod update;

pub use clip::{
    clip_coefficient, clip_grad_norm, clip_scale, clip_with_total_norm, local_sq_norm, ClipScale,
    GradScale,
};
pub use config::AdamWConfig;
pub use error::{Error, Result};
pub use lr_scheduler::{DecayType, LrScheduler, LrSchedulerConfig, LrSchedulerState};
pub use optimizer::Optimizer;
pub use state::{exp_avg_key, exp_avg_sq_key, OptimizerState, OptimizerStateMeta};
