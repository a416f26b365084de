//! Fused SwiGLU gate `silu(a) * b` and its gradients, bf16 in and out, f32 math.

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{alloc, cubin, cuda_device, expect, function, launch, ptr, Cubin};

pub(crate) const CUBIN: Cubin = cubin!("swiglu");
const KERNEL: &str = "swiglu";
const THREADS: usize = 256;

fn check(a: &Tensor, others: &[(&str, &Tensor)]) -> Result<()> {
    expect(KERNEL, "a", a, DType::BF16, true)?;
    for (what, t) in others {
        expect(KERNEL, what, t, DType::BF16, true)?;
        if t.shape() != a.shape() {
            return unsupported(KERNEL, format!("{what} {:?} vs a {:?}", t.dims(), a.dims()));
        }
    }
    Ok(())
}

/// Blocks for a grid-stride loop over `n` elements (as vectors when `vec`).
fn blocks(n: usize, vec: bool) -> u32 {
    let items = if vec { n / 8 + 8 } else { n };
    items.div_ceil(THREADS).clamp(1, 132 * 32) as u32
}

/// `silu(a) * b` for bf16 contiguous `a`, `b` of one shape.
pub fn swiglu_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dev = cuda_device(KERNEL, a)?;
    check(a, &[("b", b)])?;
    let g = alloc(&dev, a.shape(), DType::BF16, false)?;
    let n = a.elem_count();
    if n == 0 {
        return Ok(g);
    }
    let f = function(&dev, &CUBIN, "swiglu_fwd_bf16")?;
    let (pa, pb, pg) = (ptr(a)?, ptr(b)?, ptr(&g)?);
    let vec = (pa | pb | pg) % 16 == 0;
    let grid = (blocks(n, vec), 1, 1);
    let (nn, vec) = (n as i64, vec as i32);
    launch!(dev, f, grid, THREADS, 0; pa, pb, pg, nn, vec)?;
    Ok(g)
}

/// `(d_a, d_b)` of `silu(a) * b` given `d_g`, all bf16 contiguous of one shape.
pub fn swiglu_backward(a: &Tensor, b: &Tensor, d_g: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, a)?;
    check(a, &[("b", b), ("d_g", d_g)])?;
    let da = alloc(&dev, a.shape(), DType::BF16, false)?;
    let db = alloc(&dev, a.shape(), DType::BF16, false)?;
    let n = a.elem_count();
    if n == 0 {
        return Ok((da, db));
    }
    let f = function(&dev, &CUBIN, "swiglu_bwd_bf16")?;
    let (pa, pb, pdg, pda, pdb) = (ptr(a)?, ptr(b)?, ptr(d_g)?, ptr(&da)?, ptr(&db)?);
    let vec = (pa | pb | pdg | pda | pdb) % 16 == 0;
    let grid = (blocks(n, vec), 1, 1);
    let (nn, vec) = (n as i64, vec as i32);
    launch!(dev, f, grid, THREADS, 0; pa, pb, pdg, pda, pdb, nn, vec)?;
    Ok((da, db))
}
