//! Linear weight gradients straight into the f32 gradient (titan-kernels `gemm.rs`, cuBLAS).

use candle_core::{DType, Tensor};

use crate::{Param, Result};

/// `w.grad += d_y^T x` in f32 with one cuBLAS GEMM (bf16 inputs, f32 accumulation), for
/// `x (rows, in)` and `d_y (rows, out)` bf16 CUDA tensors and `w (out, in)`. Accumulates in
/// place into an existing f32 contiguous gradient, or installs a new one when `w` has none.
/// Returns `false` (nothing done) when the kernel does not apply, so the caller falls back.
pub fn accumulate_weight_grad(x: &Tensor, d_y: &Tensor, w: &mut Param) -> Result<bool> {
    if !super::applies(x) || !super::applies(d_y) {
        return Ok(false);
    }
    #[cfg(feature = "cuda")]
    {
        let acc = match w.grad() {
            None => None,
            Some(g)
                if g.dtype() == DType::F32
                    && g.is_contiguous()
                    && g.device().same_device(x.device()) =>
            {
                Some(g)
            }
            // A gradient in another dtype, layout or device: the composite adds into it.
            Some(_) => return Ok(false),
        };
        let had_grad = acc.is_some();
        match super::lift(titan_kernels::gemm::weight_grad_bf16(d_y, x, acc))? {
            None => Ok(false),
            Some(_) if had_grad => Ok(true),
            Some(dw) => {
                w.set_grad(Some(dw))?;
                Ok(true)
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, DType::F32);
        Ok(false)
    }
}

/// `acc += d_y w` in place with one cuBLAS GEMM (bf16, f32 accumulation, one rounding), for
/// `d_y (rows, out)`, `w (out, in)` and `acc (rows, in)` bf16 CUDA tensors; `None` when the
/// kernel does not apply (the caller adds a separately computed product).
pub fn accumulate_input_grad(d_y: &Tensor, w: &Tensor, acc: &Tensor) -> Result<Option<Tensor>> {
    if !(super::applies(d_y) && super::applies(w) && super::applies(acc)) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::gemm::input_grad_acc_bf16(d_y, w, acc))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(None)
    }
}
