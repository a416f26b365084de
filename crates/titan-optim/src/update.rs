//! One Adam/AdamW update of one f32 tensor, in the order of operations of PyTorch's
//! single-tensor (`for-loop`) implementation (`torch/optim/adam.py::_single_tensor_adam`).
//!
//! Every operation is one candle op in f32 with its scalar cast to f32, as PyTorch casts a
//! Python float to the tensor's compute type. Where PyTorch's CPU and CUDA kernels differ in
//! association we follow CUDA, where training runs:
//! - `tensor / scalar` is `tensor * (1 / scalar)` with the reciprocal taken in f32;
//! - `addcmul(a, b, c, value)` is `a + value * (b * c)`;
//! - `addcdiv(a, b, c, value)` is `a + value * (b / c)`.

use candle_core::Tensor;

use crate::config::AdamWConfig;
use crate::Result;

/// Adam's per-parameter state: first and second moments and the number of steps taken.
#[derive(Debug, Clone)]
pub(crate) struct MomentState {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: u64,
}

/// `torch.lerp(start, end, weight)` for a scalar weight: `start + w * (end - start)` when
/// `|w| < 0.5`, else `end - (end - start) * (1 - w)` (ATen's two forms, both in f32).
fn lerp(start: &Tensor, end: &Tensor, weight: f64) -> Result<Tensor> {
    let w = weight as f32;
    let diff = (end - start)?;
    if w.abs() < 0.5 {
        Ok((start + diff.affine(w as f64, 0.0)?)?)
    } else {
        Ok((end - diff.affine((1.0f32 - w) as f64, 0.0)?)?)
    }
}

/// The per-parameter scalars of step number `step` (1-based), in f64 as Python computes them
/// from the step count, then rounded to f32 as the tensor ops round them. Shared with the
/// fused CUDA kernel so both paths use the same bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepScalars {
    /// `-(lr / bias_correction1)`: `addcdiv_(exp_avg, denom, value=-step_size)`.
    pub neg_step_size: f32,
    /// `1 / bias_correction2.sqrt()`, the reciprocal taken in f32 (`tensor / scalar`).
    pub inv_bc2_sqrt: f32,
}

pub(crate) fn step_scalars(cfg: &AdamWConfig, step: u64, lr: f64) -> StepScalars {
    let (beta1, beta2) = cfg.betas;
    let step = step as f64;
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    StepScalars {
        neg_step_size: (-step_size) as f32,
        inv_bc2_sqrt: 1.0f32 / bias_correction2_sqrt as f32,
    }
}

/// Apply one step to `param` (the f32 master) with gradient `grad` and learning rate `lr`;
/// returns the new master and updates `state` (its step counter included).
pub(crate) fn adam_step(
    cfg: &AdamWConfig,
    param: &Tensor,
    grad: &Tensor,
    state: &mut MomentState,
    lr: f64,
) -> Result<Tensor> {
    let (beta1, beta2) = cfg.betas;
    state.step += 1;

    let mut param = param.clone();
    let mut grad = grad.clone();
    if cfg.weight_decay != 0.0 {
        if cfg.decoupled {
            // AdamW: param.mul_(1 - lr * weight_decay), the factor computed in f64.
            param = param.affine(1.0 - lr * cfg.weight_decay, 0.0)?;
        } else {
            // Adam: grad = grad.add(param, alpha=weight_decay).
            grad = (grad + param.affine(cfg.weight_decay, 0.0)?)?;
        }
    }

    // exp_avg.lerp_(grad, 1 - beta1)
    state.exp_avg = lerp(&state.exp_avg, &grad, 1.0 - beta1)?;
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    state.exp_avg_sq =
        (state.exp_avg_sq.affine(beta2, 0.0)? + grad.sqr()?.affine(1.0 - beta2, 0.0)?)?;

    let scalars = step_scalars(cfg, state.step, lr);

    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    let denom = state
        .exp_avg_sq
        .sqrt()?
        .affine(scalars.inv_bc2_sqrt as f64, 0.0)?
        .affine(1.0, cfg.eps)?;

    // param.addcdiv_(exp_avg, denom, value=-step_size)
    let update = (&state.exp_avg / &denom)?.affine(scalars.neg_step_size as f64, 0.0)?;
    Ok((param + update)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn lerp_uses_both_aten_forms() -> Result<()> {
        let a = Tensor::new(&[1f32, -2.0], &Device::Cpu)?;
        let b = Tensor::new(&[3f32, 6.0], &Device::Cpu)?;
        // Small weight: a + w (b - a).
        let small = lerp(&a, &b, 0.25)?.to_vec1::<f32>()?;
        assert_eq!(small, vec![1.0 + 0.25 * 2.0, -2.0 + 0.25 * 8.0]);
        // Large weight: b - (b - a)(1 - w).
        let large = lerp(&a, &b, 0.75)?.to_vec1::<f32>()?;
        assert_eq!(large, vec![3.0 - 2.0 * 0.25, 6.0 - 8.0 * 0.25]);
        Ok(())
    }
}
