//! Global gradient-norm clipping (torchtitan's `clip_grad_norm_`, 2-norm).
//!
//! Split in two so data-/model-parallel training can reduce in between: each rank computes
//! [`local_sq_norm`] over the gradients it holds, the caller sums those over ranks, takes the
//! square root and calls [`clip_with_total_norm`]. [`clip_grad_norm`] does both on one rank.
//!
//! Instead of scaling the gradients, the coefficient can be handed to the optimizer, which
//! multiplies each gradient as it reads it ([`GradScale`], [`crate::Optimizer::step_with_scale`]):
//! [`clip_coefficient`] from a host norm, or [`clip_scale`], which on CUDA computes norm and
//! coefficient on the device without a host synchronization.
//!
//! On CUDA with fused kernels on (feature `cuda`), the norm is one multi-tensor reduction
//! (deterministic, f32 within a thread, f64 above) and clipping scales the gradients in place
//! in one launch.

use std::borrow::{Borrow, BorrowMut};

use candle_core::{DType, Device, Tensor};
use titan_core::Param;

use crate::{Error, Result};

/// PyTorch's `clip_grads_with_norm_` adds this to the norm before dividing.
const NORM_EPS: f32 = 1e-6;

/// A factor the optimizer multiplies every gradient by as it reads it: the clip coefficient.
#[derive(Debug, Clone)]
pub enum GradScale {
    /// A host value (1.0: no scaling).
    Host(f32),
    /// A one-element f32 tensor, computed on the gradients' device (see [`clip_scale`]).
    Device(Tensor),
}

impl GradScale {
    /// No scaling.
    pub const ONE: GradScale = GradScale::Host(1.0);

    /// `grad * scale` as the composite path computes it (the clip's `grad * coef`).
    pub(crate) fn apply(&self, grad: &Tensor) -> Result<Tensor> {
        match self {
            GradScale::Host(s) if *s == 1.0 => Ok(grad.clone()),
            GradScale::Host(s) => Ok(grad.affine(*s as f64, 0.0)?),
            GradScale::Device(t) => {
                let s = t
                    .to_device(grad.device())?
                    .to_dtype(DType::F32)?
                    .reshape(())?;
                Ok(grad.broadcast_mul(&s)?)
            }
        }
    }
}

/// Sum over `params` of the sum of squared gradient elements (parameters without a gradient
/// count as zero). Each tensor is reduced in f32 on its device; the per-tensor sums are added
/// in f64 on the host, with one transfer per device. Non-finite gradients give a non-finite sum.
///
/// On CUDA (fused kernels on, every gradient f32 on one device) all gradients reduce in one
/// deterministic multi-tensor kernel and one scalar is read back.
pub fn local_sq_norm<P: Borrow<Param>>(params: &[P]) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if let Some(sq) = crate::fused::sq_norm(params, None)? {
        return Ok(sq.sum_sq.to_scalar::<f64>()?);
    }
    // Per-tensor sums grouped by device, so each device costs one host synchronization.
    let mut groups: Vec<(Device, Vec<Tensor>)> = Vec::new();
    for p in params {
        let Some(g) = p.borrow().grad() else { continue };
        let sum = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
        match groups.iter_mut().find(|(d, _)| d.same_device(sum.device())) {
            Some((_, sums)) => sums.push(sum),
            None => groups.push((sum.device().clone(), vec![sum])),
        }
    }
    let mut total = 0f64;
    for (_, sums) in groups {
        let sums = Tensor::stack(&sums, 0)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        total += sums.iter().sum::<f64>();
    }
    Ok(total)
}

/// The factor clipping multiplies gradients by: `max_norm / (total_norm + 1e-6)` in f32 (as
/// PyTorch computes it from the f32 norm tensor) when that is below 1, else exactly 1.
///
/// A non-finite `total_norm` gives 1 (gradients untouched) and is only logged: the caller sees
/// the norm and stops (PyTorch would multiply by NaN or 0).
pub fn clip_coefficient(max_norm: f64, total_norm: f64) -> Result<f32> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::InvalidMaxNorm { max_norm });
    }
    if !total_norm.is_finite() {
        tracing::warn!(
            total_norm,
            "gradient norm is not finite; gradients left unclipped"
        );
        return Ok(1.0);
    }
    let coef = max_norm as f32 / (total_norm as f32 + NORM_EPS);
    Ok(if coef < 1.0 { coef } else { 1.0 })
}

/// Scale every gradient by `max_norm / (total_norm + 1e-6)` when that is below 1 (PyTorch
/// multiplies by the coefficient clamped to 1, which leaves gradients unchanged otherwise).
///
/// A non-finite `total_norm` leaves gradients untouched and is only logged: the caller sees
/// the norm and stops (PyTorch would multiply by NaN or 0).
///
/// On CUDA (fused kernels on, every gradient f32 on one device, none sharing memory) the
/// gradients are scaled in place in one launch, so other handles on them see the change.
pub fn clip_with_total_norm<P: BorrowMut<Param>>(
    params: &mut [P],
    max_norm: f64,
    total_norm: f64,
) -> Result<()> {
    let coef = clip_coefficient(max_norm, total_norm)?;
    if coef >= 1.0 {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    if crate::fused::scale_grads(params, &GradScale::Host(coef))? {
        return Ok(());
    }
    for p in params.iter_mut() {
        let p = p.borrow_mut();
        let Some(g) = p.grad() else { continue };
        let clipped = g.affine(coef as f64, 0.0)?;
        p.set_grad(Some(clipped))?;
    }
    Ok(())
}

/// Single-process clipping: compute the global 2-norm of all gradients, clip to `max_norm`,
/// return the norm before clipping (torchtitan logs it as `grad_norm`).
pub fn clip_grad_norm<P: BorrowMut<Param>>(params: &mut [P], max_norm: f64) -> Result<f64> {
    let total_norm = local_sq_norm(params)?.sqrt();
    clip_with_total_norm(params, max_norm, total_norm)?;
    Ok(total_norm)
}

/// The global norm and clip coefficient of [`clip_scale`], without touching the gradients.
#[derive(Debug, Clone)]
pub struct ClipScale {
    scale: GradScale,
    sum_sq: SumSq,
}

#[derive(Debug, Clone)]
enum SumSq {
    Host(f64),
    /// f64, shape `()`, on the gradients' device.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Device(Tensor),
}

impl ClipScale {
    /// The coefficient to pass to [`crate::Optimizer::step_with_scale`].
    pub fn scale(&self) -> &GradScale {
        &self.scale
    }

    /// The global 2-norm before clipping (torchtitan's `grad_norm`). On the device path this
    /// reads one scalar back: call it after queueing the optimizer step so the GPU does not
    /// wait. A non-finite norm is logged (the coefficient is then 1).
    pub fn total_norm(&self) -> Result<f64> {
        let sq = match &self.sum_sq {
            SumSq::Host(v) => *v,
            SumSq::Device(t) => t.to_scalar::<f64>()?,
        };
        let norm = sq.sqrt();
        if !norm.is_finite() {
            tracing::warn!(
                total_norm = norm,
                "gradient norm is not finite; gradients left unclipped"
            );
        }
        Ok(norm)
    }
}

/// Single-process clipping without scaling the gradients: the global 2-norm of `params`'
/// gradients and the coefficient [`clip_coefficient`] gives for it, for the optimizer to apply
/// as it reads each gradient (`opt.step_with_scale(params, lr, clip.scale())`), so gradients
/// are read once instead of three times.
///
/// On CUDA (fused kernels on, every gradient f32 on one device) both stay on the device: no
/// host synchronization until [`ClipScale::total_norm`]. Elsewhere the norm is computed on
/// the host as [`local_sq_norm`] does.
pub fn clip_scale<P: Borrow<Param>>(params: &[P], max_norm: f64) -> Result<ClipScale> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::InvalidMaxNorm { max_norm });
    }
    #[cfg(feature = "cuda")]
    if let Some(sq) = crate::fused::sq_norm(params, Some(max_norm as f32))? {
        if let Some(coef) = sq.coef {
            return Ok(ClipScale {
                scale: GradScale::Device(coef),
                sum_sq: SumSq::Device(sq.sum_sq),
            });
        }
    }
    let sum_sq = local_sq_norm(params)?;
    let norm = sum_sq.sqrt();
    // Non-finite: 1 without the warning here; total_norm() logs it.
    let coef = if norm.is_finite() {
        clip_coefficient(max_norm, norm)?
    } else {
        1.0
    };
    Ok(ClipScale {
        scale: GradScale::Host(coef),
        sum_sq: SumSq::Host(sum_sq),
    })
}
