//! Fused RMSNorm forward (saving the reciprocal RMS) and backward (dx and an f32 dw).

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{
    alloc, cubin, cuda_device, expect, function, launch, ptr, set_dynamic_smem, Cubin,
};

pub(crate) const CUBIN: Cubin = cubin!("norm");
const KERNEL: &str = "rmsnorm";

fn rows_dim(x: &Tensor, w: &Tensor) -> Result<(usize, usize)> {
    let dim = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [dim] {
        return unsupported(
            KERNEL,
            format!("weight {:?} does not match dim {dim}", w.dims()),
        );
    }
    if dim == 0 || dim * 4 > 200 * 1024 {
        return unsupported(KERNEL, format!("dim {dim} outside 1..=51200"));
    }
    Ok((x.elem_count() / dim, dim))
}

/// 16-byte vector access is safe when rows are whole vectors and every base is aligned.
fn vectorizable(dim: usize, ptrs: &[u64]) -> i32 {
    i32::from(dim % 8 == 0 && ptrs.iter().all(|p| p % 16 == 0))
}

/// `x (..., dim)` bf16 contiguous, `w (dim)` bf16: returns `y` like `x` and `rstd (..., 1)` f32.
pub fn rmsnorm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, x)?;
    expect(KERNEL, "x", x, DType::BF16, true)?;
    expect(KERNEL, "weight", w, DType::BF16, true)?;
    let (rows, dim) = rows_dim(x, w)?;
    let y = alloc(&dev, x.shape(), DType::BF16, false)?;
    let mut rshape = x.dims().to_vec();
    *rshape.last_mut().unwrap() = 1;
    let rstd = alloc(&dev, rshape, DType::F32, false)?;
    if rows == 0 {
        return Ok((y, rstd));
    }
    let f = function(&dev, &CUBIN, "rmsnorm_fwd_bf16")?;
    let (px, pw, py, pr) = (ptr(x)?, ptr(w)?, ptr(&y)?, ptr(&rstd)?);
    let (nrows, ndim, feps) = (rows as i32, dim as i32, eps as f32);
    let threads = if dim >= 2048 { 256 } else { 128 };
    let vec = vectorizable(dim, &[px, pw, py]);
    launch!(dev, f, (rows as u32, 1, 1), threads, 0; px, pw, py, pr, nrows, ndim, feps, vec)?;
    Ok((y, rstd))
}

/// Gradient of [`rmsnorm_forward`]: returns `dx` (bf16, like `x`) and `dw (dim)` f32.
pub fn rmsnorm_backward(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, x)?;
    expect(KERNEL, "x", x, DType::BF16, true)?;
    expect(KERNEL, "weight", w, DType::BF16, true)?;
    expect(KERNEL, "rstd", rstd, DType::F32, true)?;
    expect(KERNEL, "d_y", dy, DType::BF16, true)?;
    let (rows, dim) = rows_dim(x, w)?;
    if dy.dims() != x.dims() || rstd.elem_count() != rows {
        return unsupported(KERNEL, "d_y / rstd shapes do not match x");
    }
    let dx = alloc(&dev, x.shape(), DType::BF16, false)?;
    let dw = alloc(&dev, dim, DType::F32, true)?;
    if rows == 0 {
        return Ok((dx, dw));
    }
    let f = function(&dev, &CUBIN, "rmsnorm_bwd_bf16")?;
    let smem = (dim * 4) as u32;
    if smem > 48 * 1024 {
        set_dynamic_smem(&f, smem)?;
    }
    // ~4 blocks per SM keeps atomics on dw few (one per column per block).
    let rows_per_block = rows.div_ceil(132 * 4).max(1);
    let blocks = rows.div_ceil(rows_per_block) as u32;
    let (px, pw, pr, pdy, pdx, pdw) =
        (ptr(x)?, ptr(w)?, ptr(rstd)?, ptr(dy)?, ptr(&dx)?, ptr(&dw)?);
    let (nrows, ndim, rpb) = (rows as i32, dim as i32, rows_per_block as i32);
    let threads = if dim >= 2048 { 256 } else { 128 };
    let vec = vectorizable(dim, &[px, pw, pdy, pdx]);
    launch!(dev, f, (blocks, 1, 1), threads, smem; px, pw, pr, pdy, pdx, pdw, nrows, ndim, rpb, vec)?;
    Ok((dx, dw))
}
