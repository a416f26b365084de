//! Fused elementwise bf16 ops (titan-kernels `elementwise.cu`).

use candle_core::Tensor;

use crate::Result;

/// `a + b` from the vectorized kernel (bit for bit candle's bf16 add), or `None` to use
/// candle's add (other dtypes or devices, broadcasting, strided or unaligned inputs).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if !super::applies(a) || !super::applies(b) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        super::lift(titan_kernels::elementwise::add_bf16(a, b))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(None)
    }
}

/// `a + b`: the fused kernel where it applies, else candle's add.
pub fn add_or_candle(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match add(a, b)? {
        Some(out) => Ok(out),
        None => Ok((a + b)?),
    }
}
