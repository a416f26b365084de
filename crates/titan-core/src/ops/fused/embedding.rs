//! Fused embedding backward (titan-kernels `embedding.cu`).

use candle_core::Tensor;

use crate::Result;

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
