//! Elementwise bf16 kernels in 16-byte vectors: `add_bf16` (`a + b`, rounded once, bit for
//! bit candle's bf16 add).

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{
    alloc, cubin, cuda_device, expect, function, launch, ptr, resident_blocks, Cubin,
};

pub(crate) const CUBIN: Cubin = cubin!("elementwise");
const ADD: &str = "add_bf16";
/// Threads per block (`__launch_bounds__(256)` in elementwise.cu).
const THREADS: usize = 256;
/// `a + b` for contiguous bf16 CUDA tensors of one shape: f32 sum, one rounding (the same
/// bits as candle's bf16 add). `Unsupported` unless the element count is a multiple of 8 and
/// both inputs start 16-byte aligned (the caller then uses candle's add).
pub fn add_bf16(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dev = cuda_device(ADD, a)?;
    expect(ADD, "a", a, DType::BF16, true)?;
    expect(ADD, "b", b, DType::BF16, true)?;
    if a.dims() != b.dims() {
        return unsupported(
            ADD,
            format!("shapes {:?} and {:?} differ", a.dims(), b.dims()),
        );
    }
    if !b.device().same_device(a.device()) {
        return unsupported(ADD, "a and b are on different devices");
    }
    let n = a.elem_count();
    if n % 8 != 0 {
        return unsupported(ADD, format!("{n} elements is not a multiple of 8"));
    }
    let out = alloc(&dev, a.shape(), DType::BF16, false)?;
    if n == 0 {
        return Ok(out);
    }
    let (pa, pb, po) = (ptr(a)?, ptr(b)?, ptr(&out)?);
    if (pa | pb | po) % 16 != 0 {
        return unsupported(ADD, "inputs are not 16-byte aligned");
    }
    let n8 = (n / 8) as i64;
    // Grid-stride: one resident wave of blocks (or fewer for small tensors), each thread
    // taking two vectors per iteration.
    let f = function(&dev, &CUBIN, ADD)?;
    let wave = resident_blocks(&dev, &f, ADD, THREADS, 0)?;
    let blocks = (n / 8).div_ceil(2 * THREADS).clamp(1, wave) as u32;
    launch!(dev, f, (blocks, 1, 1), THREADS, 0; pa, pb, po, n8)?;
    Ok(out)
}
