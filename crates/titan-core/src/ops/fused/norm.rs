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

/// `(h = x + r, y, rstd)` from the fused add + norm kernel, or `None` to use the composite.
pub fn rmsnorm_forward_residual(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if !super::applies(x) || !super::applies(r) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::norm::rmsnorm_forward_residual(x, r, w, eps))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, eps);
        Ok(None)
    }
}

/// `(d_res + dx, dw_f32)` from the fused kernel (one bf16 rounding of the f32 sum), or `None`
/// to use the composite.
pub fn rmsnorm_backward_residual(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    d_res: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    if !super::applies(x) || !super::applies(dy) || !super::applies(d_res) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::norm::rmsnorm_backward_residual(
            x, w, rstd, dy, d_res,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, rstd);
        Ok(None)
    }
}
