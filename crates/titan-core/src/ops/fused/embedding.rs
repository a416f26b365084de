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

/// Rows `[lo, lo + rows)` of the f32 weight gradient of an embedding lookup (the whole
/// `(vocab, dim)` table with `lo = 0, rows = vocab`) from the fused kernel, or `None` to use
/// the composite. Ids outside the range are skipped.
pub fn embedding_backward_rows(
    ids: &Tensor,
    d_out: &Tensor,
    lo: usize,
    rows: usize,
    dim: usize,
) -> Result<Option<Tensor>> {
    if !super::applies(d_out) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::embedding::embedding_backward_rows(
            ids, d_out, lo, rows, dim,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ids, lo, rows, dim);
        Ok(None)
    }
}
