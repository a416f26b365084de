//! Fused embedding forward and backward (titan-kernels `embedding.cu`).

use candle_core::Tensor;

use crate::Result;

/// The rows `w[ids]` (`ids.dims() + [dim]`, bf16) from the gather kernel, or `None` to use
/// the composite. Ids must be below the vocabulary (an id at or above it gives a zero row,
/// never a read outside `w`; callers check ids on the host).
pub fn embedding_forward(ids: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !super::applies(w) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::embedding::embedding_forward(ids, w))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ids;
        Ok(None)
    }
}

/// The f32 weight gradient `(vocab, dim)` of an embedding lookup from the fused kernel, or
/// `None` to use the composite.
pub fn embedding_backward(
    ids: &Tensor,
    d_out: &Tensor,
    vocab: usize,
    dim: usize,
) -> Result<Option<Tensor>> {
    if !super::applies(d_out) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::embedding::embedding_backward(
            ids, d_out, vocab, dim,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ids, vocab, dim);
        Ok(None)
    }
}
