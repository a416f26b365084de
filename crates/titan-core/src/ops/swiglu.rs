//! SwiGLU gate: `g = silu(a) * b`, math in f32.

use candle_core::{DType, Tensor};

use crate::Result;

fn sigmoid(a: &Tensor) -> Result<Tensor> {
    Ok((a.neg()?.exp()? + 1.0)?.recip()?)
}

/// `silu(a) * b` in `a`'s dtype.
pub fn swiglu_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if let Some(g) = super::fused::swiglu::swiglu_forward(a, b)? {
        return Ok(g);
    }
    let a32 = a.to_dtype(DType::F32)?;
    let b32 = b.to_dtype(DType::F32)?;
    let silu = (&a32 * sigmoid(&a32)?)?;
    Ok((silu * b32)?.to_dtype(a.dtype())?)
}

/// Gradients `(d_a, d_b)` of `silu(a) * b` given `d_g`.
pub fn swiglu_backward(a: &Tensor, b: &Tensor, d_g: &Tensor) -> Result<(Tensor, Tensor)> {
    if let Some(out) = super::fused::swiglu::swiglu_backward(a, b, d_g)? {
        return Ok(out);
    }
    let a32 = a.to_dtype(DType::F32)?;
    let b32 = b.to_dtype(DType::F32)?;
    let dg = d_g.to_dtype(DType::F32)?;
    let sig = sigmoid(&a32)?;
    let silu = (&a32 * &sig)?;
    // d silu / da = sig * (1 + a * (1 - sig))
    let dsilu = (&sig * ((&a32 * (1.0 - &sig)?)? + 1.0)?)?;
    let d_a = ((&dg * &b32)? * dsilu)?;
    let d_b = (&dg * silu)?;
    Ok((d_a.to_dtype(a.dtype())?, d_b.to_dtype(b.dtype())?))
}
