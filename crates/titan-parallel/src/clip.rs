//! Global gradient-norm clipping over shards and ranks (torchtitan's `clip_grad_norm_`, 2-norm).
//!
//! Each rank sums the squares of the gradients it holds; the sums are added over the groups
//! that hold *different* pieces of the model (the FSDP shard group; later TP and PP), never
//! over replicas (HSDP's replicate axis, DDP), whose gradients are identical after reduction:
//! adding them would count every element once per replica. The reduction gives every rank the
//! same bits, so every rank scales by the same coefficient.

use std::borrow::{Borrow, BorrowMut};

use titan_core::Param;

use crate::comm::{ProcessGroup, ReduceOp};
use crate::reduce::all_reduce_f64;
use crate::{Error, Result};

/// PyTorch's `clip_grads_with_norm_` adds this to the norm before dividing.
const NORM_EPS: f32 = 1e-6;

/// Sum over `params` of the squared gradient elements this rank holds (no gradient counts as
/// zero). Each tensor reduces in f32; tensors add in f64, in parameter order.
pub fn local_sq_norm<P: Borrow<Param>>(params: &[P]) -> Result<f64> {
    // titan-optim's: on CUDA one multi-tensor kernel (candle's `sum_all` reduces a whole
    // tensor in one thread block: ~70 ms for a 1B model's shards on an H200).
    Ok(titan_optim::local_sq_norm(params)?)
}

/// The global 2-norm of the gradients: local squares summed over each group of `sum_over`.
pub fn global_grad_norm<P: Borrow<Param>>(
    params: &[P],
    sum_over: &[&dyn ProcessGroup],
) -> Result<f64> {
    let mut sq = local_sq_norm(params)?;
    for g in sum_over {
        sq = all_reduce_f64(*g, &[sq], ReduceOp::Sum)?[0];
    }
    Ok(sq.sqrt())
}

/// Clips the gradients of `params` to a global 2-norm of `max_norm` and returns the norm
/// before clipping (logged as `grad_norm`). Gradients scale by `max_norm / (norm + 1e-6)`
/// when that is below 1; a non-finite norm leaves them untouched (and is returned, so the
/// caller can stop).
pub fn clip_grad_norm_distributed<P: BorrowMut<Param>>(
    params: &mut [P],
    max_norm: f64,
    sum_over: &[&dyn ProcessGroup],
) -> Result<f64> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::Config(format!(
            "training.max_norm = {max_norm}: must be positive (gradient clipping to a 2-norm of max_norm)"
        )));
    }
    let total = global_grad_norm(params, sum_over)?;
    if !total.is_finite() {
        tracing::warn!(
            total,
            "gradient norm is not finite; gradients left unclipped"
        );
        return Ok(total);
    }
    // f32, as PyTorch computes the coefficient from the f32 norm tensor.
    let coef = max_norm as f32 / (total as f32 + NORM_EPS);
    if coef < 1.0 {
        for p in params.iter_mut() {
            let p = p.borrow_mut();
            if let Some(g) = p.grad() {
                let clipped = g.affine(coef as f64, 0.0)?;
                p.set_grad(Some(clipped))?;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use candle_core::{DType, Device, Tensor};
    use titan_core::Init;

    use super::*;
    use crate::comm::run_local;

    fn param(name: &str, grad: &[f32]) -> Param {
        let dev = Device::Cpu;
        let mut p = Param::from_tensor(
            name,
            Tensor::zeros(grad.len(), DType::F32, &dev).unwrap(),
            Init::Zeros,
        )
        .unwrap();
        p.set_grad(Some(Tensor::from_slice(grad, grad.len(), &dev).unwrap()))
            .unwrap();
        p
    }

    #[test]
    fn shards_add_up_to_the_full_norm_and_clip_identically() {
        // Full gradient [3, 4, 12] (norm 13) split over two ranks as [3, 4] and [12].
        let out = run_local(2, Duration::from_secs(10), |g| {
            let mut p = if g.rank() == 0 {
                vec![param("w", &[3.0, 4.0])]
            } else {
                vec![param("w", &[12.0])]
            };
            let norm = clip_grad_norm_distributed(&mut p, 6.5, &[g.as_ref()]).unwrap();
            (norm, p[0].grad().unwrap().to_vec1::<f32>().unwrap())
        })
        .unwrap();
        let (n0, g0) = out[0]
            .as_ref()
            .unwrap_or_else(|_| panic!("rank 0 panicked"));
        let (n1, g1) = out[1]
            .as_ref()
            .unwrap_or_else(|_| panic!("rank 1 panicked"));
        assert_eq!((*n0, *n1), (13.0, 13.0));
        let coef = 6.5f32 / (13.0f32 + 1e-6);
        assert_eq!(g0, &vec![3.0 * coef, 4.0 * coef]);
        assert_eq!(g1, &vec![12.0 * coef]);
    }

    #[test]
    fn below_max_norm_and_bad_max_norm() {
        let mut p = vec![param("w", &[0.3, 0.4])];
        let n = clip_grad_norm_distributed(&mut p, 1.0, &[]).unwrap();
        assert!((n - 0.5).abs() < 1e-7);
        assert_eq!(
            p[0].grad().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.3, 0.4]
        );
        let e = clip_grad_norm_distributed(&mut p, 0.0, &[]).unwrap_err();
        assert!(e.to_string().contains("max_norm"), "{e}");
    }
}
