//! Fused SwiGLU (titan-kernels `swiglu.cu`).

use candle_core::Tensor;

use crate::Result;

/// `silu(a) * b` from the fused kernel, or `None` to use the composite.
pub fn swiglu_forward(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if !super::applies(a) || !super::applies(b) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::swiglu::swiglu_forward(a, b))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(None)
    }
}

/// `(d_a, d_b)` from the fused kernel, or `None` to use the composite.
pub fn swiglu_backward(a: &Tensor, b: &Tensor, d_g: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    if !super::applies(a) || !super::applies(b) || !super::applies(d_g) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::swiglu::swiglu_backward(a, b, d_g))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(None)
    }
}
