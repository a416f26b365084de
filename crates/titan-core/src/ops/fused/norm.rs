//! Fused RMSNorm (titan-kernels `norm.cu`).

use candle_core::Tensor;

use crate::Result;

/// `(y, rstd)` from the fused kernel, or `None` to use the composite.
pub fn rmsnorm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<Option<(Tensor, Tensor)>> {
    if !super::applies(x) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::norm::rmsnorm_forward(x, w, eps))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, eps);
        Ok(None)
    }
}

/// `(dx, dw_f32)` from the fused kernel, or `None` to use the composite.
pub fn rmsnorm_backward(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    if !super::applies(x) || !super::applies(dy) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::norm::rmsnorm_backward(x, w, rstd, dy))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, rstd);
        Ok(None)
    }
}
