//! Fused RoPE (titan-kernels `rope.cu`).

use candle_core::Tensor;

use crate::Result;

/// `x` rotated by the tables (by `-angle` when `inverse`) from the fused kernel, or `None` to
/// use the composite.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool) -> Result<Option<Tensor>> {
    if !super::applies(x) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::rope::rope(x, cos, sin, inverse))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (cos, sin, inverse);
        Ok(None)
    }
}
