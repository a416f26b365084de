//! The fused CUDA path (feature `cuda`): titan-kernels' multi-tensor grad norm, gradient
//! scaling and Adam/AdamW. Each entry point returns "not applicable" (`None` / `false`) unless
//! fused kernels are on (`titan_core::ops::fused::enabled()`) and every tensor involved is an
//! f32 contiguous CUDA tensor on one device; the caller then runs the composite path.

use std::borrow::Borrow;

use candle_core::{DType, Tensor};
use titan_core::Param;
use titan_kernels::adamw::{AdamParam, AdamScalars, WeightDecay};
use titan_kernels::gradnorm::{Scale, SqNorm};

use crate::clip::GradScale;
use crate::config::AdamWConfig;
use crate::Result;

/// `Unsupported` becomes `None` (use the composite path); other failures are errors.
fn lift<T>(r: titan_kernels::Result<T>) -> Result<Option<T>> {
    Ok(titan_kernels::supported(r)?)
}

/// Whether `t` can go to a multi-tensor kernel next to tensors on `like`'s device.
pub(crate) fn fits(t: &Tensor, like: &Tensor) -> bool {
    t.dtype() == DType::F32
        && t.is_contiguous()
        && t.device().is_cuda()
        && t.device().same_device(like.device())
}

/// Every gradient of `params`, when fused kernels are on and all are f32 contiguous tensors
/// on one CUDA device (and there is at least one).
fn cuda_grads<P: Borrow<Param>>(params: &[P]) -> Option<Vec<&Tensor>> {
    if !titan_core::ops::fused::enabled() {
        return None;
    }
    let grads: Vec<&Tensor> = params.iter().filter_map(|p| p.borrow().grad()).collect();
    let first = *grads.first()?;
    grads.iter().all(|g| fits(g, first)).then_some(grads)
}

/// Sum of squares of every gradient (and, with `max_norm`, the clip coefficient) on the
/// device, or `None` when the fused kernel does not apply.
pub(crate) fn sq_norm<P: Borrow<Param>>(
    params: &[P],
    max_norm: Option<f32>,
) -> Result<Option<SqNorm>> {
    let Some(grads) = cuda_grads(params) else {
        return Ok(None);
    };
    lift(titan_kernels::gradnorm::sq_norm(&grads, max_norm))
}

/// Multiply every gradient by `scale` in place; `false` when the fused kernel does not apply.
pub(crate) fn scale_grads<P: Borrow<Param>>(params: &[P], scale: &GradScale) -> Result<bool> {
    let Some(grads) = cuda_grads(params) else {
        return Ok(false);
    };
    let device_scale;
    let scale = match scale {
        GradScale::Host(s) => Scale::Host(*s),
        GradScale::Device(t) => {
            device_scale = t.to_device(grads[0].device())?.to_dtype(DType::F32)?;
            Scale::Device(&device_scale)
        }
    };
    Ok(lift(titan_kernels::gradnorm::scale_in_place(&grads, scale))?.is_some())
}

/// The step-wide scalars of the kernel, rounded to f32 as the composite update rounds them.
pub(crate) fn adam_scalars(cfg: &AdamWConfig, lr: f64) -> AdamScalars {
    let weight_decay = if cfg.weight_decay == 0.0 {
        WeightDecay::None
    } else if cfg.decoupled {
        WeightDecay::Decoupled {
            factor: (1.0 - lr * cfg.weight_decay) as f32,
        }
    } else {
        WeightDecay::L2 {
            weight_decay: cfg.weight_decay as f32,
        }
    };
    let (beta1, beta2) = cfg.betas;
    AdamScalars {
        weight_decay,
        lerp_weight: (1.0 - beta1) as f32,
        beta2: beta2 as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        eps: cfg.eps as f32,
    }
}

/// One multi-tensor Adam/AdamW launch; `false` when the kernel does not take the inputs.
pub(crate) fn adam_step(
    params: &[AdamParam],
    scalars: &AdamScalars,
    scale: &GradScale,
) -> Result<bool> {
    let Some(first) = params.first() else {
        return Ok(true);
    };
    let device_scale;
    let scale = match scale {
        GradScale::Host(s) => Scale::Host(*s),
        GradScale::Device(t) => {
            device_scale = t.to_device(first.master.device())?.to_dtype(DType::F32)?;
            Scale::Device(&device_scale)
        }
    };
    Ok(lift(titan_kernels::adamw::adam_step(params, scalars, scale))?.is_some())
}
