//! Fused softmax cross-entropy (titan-kernels `xent.cu`).

use candle_core::Tensor;

use crate::Result;

/// `(loss, lse (rows, 1) f32)` from the fused kernel, or `None` to use the composite.
pub fn cross_entropy_forward(
    logits: &Tensor,
    labels: &Tensor,
    scale: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    if !super::applies(logits) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::xent::cross_entropy_forward(
            logits, labels, scale,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (labels, scale);
        Ok(None)
    }
}

/// `d_logits` (bf16) from the fused kernel, or `None` to use the composite.
pub fn cross_entropy_backward(
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !super::applies(logits) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::xent::cross_entropy_backward(
            logits, labels, lse, scale,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (labels, lse, scale);
        Ok(None)
    }
}

/// Writes `d_logits` over `logits` with the fused kernel; `false` (nothing written) when the
/// kernel does not apply.
pub fn cross_entropy_backward_in_place(
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    scale: f64,
) -> Result<bool> {
    if !super::applies(logits) {
        return Ok(false);
    }
    #[cfg(feature = "cuda")]
    {
        Ok(
            super::lift(titan_kernels::xent::cross_entropy_backward_in_place(
                logits, labels, lse, scale,
            ))?
            .is_some(),
        )
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (labels, lse, scale);
        Ok(false)
    }
}
