//! Fused RoPE: rotate `x (b, s, h, hd)` bf16 by f32 cos/sin tables, forward or inverse.

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{alloc, cubin, cuda_device, expect, function, launch, ptr, Cubin};

pub(crate) const CUBIN: Cubin = cubin!("rope");
const KERNEL: &str = "rope";

/// Element strides `(batch, token, pair)` of a table shaped `(tb, s, 1, half, 1)`, with the
/// batch stride 0 when the table broadcasts over the batch (`tb == 1`).
fn table_strides(t: &Tensor, b: usize, s: usize, half: usize) -> Result<[i64; 3]> {
    let dims = t.dims();
    if dims.len() != 5 || dims[1] != s || dims[2] != 1 || dims[3] != half || dims[4] != 1 {
        return unsupported(
            KERNEL,
            format!("table {dims:?} is not (b or 1, {s}, 1, {half}, 1)"),
        );
    }
    if dims[0] != 1 && dims[0] != b {
        return unsupported(KERNEL, format!("table batch {} vs x batch {b}", dims[0]));
    }
    let st = t.stride();
    let sb = if dims[0] == 1 { 0 } else { st[0] as i64 };
    Ok([sb, st[1] as i64, st[3] as i64])
}

/// Rotate `x (b, s, h, hd)` (bf16, contiguous) by `cos`/`sin` (f32, `(b or 1, s, 1, hd/2, 1)`,
/// any strides): torchtitan's interleaved pairs, `y = x * e^{i angle}`, or `e^{-i angle}`
/// when `inverse` (the backward). Returns a contiguous bf16 tensor like `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool) -> Result<Tensor> {
    let dev = cuda_device(KERNEL, x)?;
    expect(KERNEL, "x", x, DType::BF16, true)?;
    expect(KERNEL, "cos", cos, DType::F32, false)?;
    expect(KERNEL, "sin", sin, DType::F32, false)?;
    let (b, s, h, hd) = x.dims4()?;
    if hd % 2 != 0 {
        return unsupported(KERNEL, format!("odd head_dim {hd}"));
    }
    let half = hd / 2;
    let strides = table_strides(cos, b, s, half)?;
    if table_strides(sin, b, s, half)? != strides {
        return unsupported(KERNEL, "cos and sin have different layouts");
    }
    if b * s > i32::MAX as usize || h * half > i32::MAX as usize {
        return unsupported(KERNEL, "too many tokens or pairs per token");
    }
    let y = alloc(&dev, x.shape(), DType::BF16, false)?;
    if x.elem_count() == 0 {
        return Ok(y);
    }
    let (px, pc, ps, py) = (ptr(x)?, ptr(cos)?, ptr(sin)?, ptr(&y)?);
    if px % 4 != 0 {
        return unsupported(KERNEL, "x is not 4-byte aligned (pairs are read as bf16x2)");
    }
    let f = function(&dev, &CUBIN, "rope_bf16")?;
    // 16-byte vectors hold 4 pairs of one head: half % 4 and aligned bases.
    let vec = half % 4 == 0 && px % 16 == 0 && py % 16 == 0;
    let items = if vec {
        x.elem_count() / 8
    } else {
        x.elem_count() / 2
    };
    let threads = 256usize;
    let blocks = items.div_ceil(threads).min(132 * 32) as u32;
    let (n_tokens, seq, heads, nhalf) = ((b * s) as i64, s as i32, h as i32, half as i32);
    let [tb, ts, tf] = strides;
    let sign: f32 = if inverse { -1.0 } else { 1.0 };
    let vec = vec as i32;
    launch!(dev, f, (blocks, 1, 1), threads, 0;
        px, pc, ps, py, n_tokens, seq, heads, nhalf, tb, ts, tf, sign, vec)?;
    Ok(y)
}
