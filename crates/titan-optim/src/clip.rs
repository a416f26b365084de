//! Global gradient-norm clipping (torchtitan's `clip_grad_norm_`, 2-norm).
//!
//! Split in two so data-/model-parallel training can reduce in between: each rank computes
//! [`local_sq_norm`] over the gradients it holds, the caller sums those over ranks, takes the
//! square root and calls [`clip_with_total_norm`]. [`clip_grad_norm`] does both on one rank.

use std::borrow::{Borrow, BorrowMut};

use candle_core::{DType, Device, Tensor};
use titan_core::Param;

use crate::{Error, Result};

/// PyTorch's `clip_grads_with_norm_` adds this to the norm before dividing.
const NORM_EPS: f32 = 1e-6;

/// Sum over `params` of the sum of squared gradient elements (parameters without a gradient
/// count as zero). Each tensor is reduced in f32 on its device; the per-tensor sums are added
/// in f64 on the host, with one transfer per device. Non-finite gradients give a non-finite sum.
pub fn local_sq_norm<P: Borrow<Param>>(params: &[P]) -> Result<f64> {
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

/// Scale every gradient by `max_norm / (total_norm + 1e-6)` when that is below 1 (PyTorch
/// multiplies by the coefficient clamped to 1, which leaves gradients unchanged otherwise).
///
/// A non-finite `total_norm` leaves gradients untouched and is only logged: the caller sees
/// the norm and stops (PyTorch would multiply by NaN or 0).
pub fn clip_with_total_norm<P: BorrowMut<Param>>(
    params: &mut [P],
    max_norm: f64,
    total_norm: f64,
) -> Result<()> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::InvalidMaxNorm { max_norm });
    }
    if !total_norm.is_finite() {
        tracing::warn!(
            total_norm,
            "gradient norm is not finite; gradients left unclipped"
        );
        return Ok(());
    }
    // f32, as PyTorch computes the coefficient from the f32 norm tensor.
    let coef = max_norm as f32 / (total_norm as f32 + NORM_EPS);
    if coef >= 1.0 {
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
