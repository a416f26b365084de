//! Fused embedding forward (a bf16 row gather) and backward (scatter-add bf16 output
//! gradients into an f32 weight gradient).

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{alloc, cubin, cuda_device, expect, function, launch, ptr, Cubin};

pub(crate) const CUBIN: Cubin = cubin!("embedding");
const KERNEL: &str = "embedding_backward";

/// `ids` (u32, any shape, n elements, contiguous) and `d_out` (bf16 contiguous, n * `dim`
/// elements, last dim `dim`): returns rows `[lo, lo + rows)` of the embedding's weight
/// gradient, `dw (rows, dim)` f32 with `dw[ids[r] - lo] += d_out[r]` for the ids in that range
/// (the whole table with `lo = 0, rows = vocab`; a row shard's from every rank's ids and output
/// gradients). Other ids are skipped. f32 atomics: the order of the additions, hence the last
/// bits, may vary between runs.
pub fn embedding_backward_rows(
    ids: &Tensor,
    d_out: &Tensor,
    lo: usize,
    rows: usize,
    dim: usize,
) -> Result<Tensor> {
    let dev = cuda_device(KERNEL, d_out)?;
    expect(KERNEL, "ids", ids, DType::U32, true)?;
    expect(KERNEL, "d_out", d_out, DType::BF16, true)?;
    let n = ids.elem_count();
    if d_out.dims().last() != Some(&dim) || d_out.elem_count() != n * dim {
        return unsupported(
            KERNEL,
            format!("d_out {:?} vs {n} ids of dim {dim}", d_out.dims()),
        );
    }
    if n > i32::MAX as usize
        || dim == 0
        || dim > i32::MAX as usize
        || rows > i32::MAX as usize
        || lo > u32::MAX as usize
    {
        return unsupported(
            KERNEL,
            format!("{n} ids, rows {lo}..{lo}+{rows}, dim {dim} out of range"),
        );
    }
    let dw = alloc(&dev, (rows, dim), DType::F32, true)?;
    if n == 0 || rows == 0 {
        return Ok(dw);
    }
    let f = function(&dev, &CUBIN, "embedding_bwd_bf16")?;
    let (pids, pd, pdw) = (ptr(ids)?, ptr(d_out)?, ptr(&dw)?);
    let vec = dim % 8 == 0 && (pd | pdw) % 16 == 0;
    let threads = if vec {
        (dim / 8).next_multiple_of(32).min(256)
    } else {
        dim.next_multiple_of(32).min(256)
    };
    let (nn, ndim, nlo, nrows, vec) = (n as i32, dim as i32, lo as u32, rows as i32, vec as i32);
    launch!(dev, f, (n as u32, 1, 1), threads, 0; pids, pd, pdw, nn, ndim, nlo, nrows, vec)?;
    Ok(dw)
}

/// `ids` (u32, any shape, contiguous) and `w (vocab, dim)` bf16 contiguous: returns the rows
/// `w[ids]`, shaped `ids.dims() + [dim]`, gathered in 16-byte vectors when `dim % 8 == 0`
/// and the table is 16-byte aligned. An id `>= vocab` reads nothing and gives a zero row:
/// callers check ids on the host (as the Llama forward does).
pub fn embedding_forward(ids: &Tensor, w: &Tensor) -> Result<Tensor> {
    const FWD: &str = "embedding_forward";
    let dev = cuda_device(FWD, w)?;
    expect(FWD, "ids", ids, DType::U32, true)?;
    expect(FWD, "weight", w, DType::BF16, true)?;
    if !ids.device().same_device(w.device()) {
        return unsupported(FWD, "ids and weight are on different devices");
    }
    let (vocab, dim) = w.dims2()?;
    let n = ids.elem_count();
    if n > i32::MAX as usize || dim == 0 || dim > i32::MAX as usize || vocab > i32::MAX as usize {
        return unsupported(
            FWD,
            format!("{n} ids, vocab {vocab}, dim {dim} out of range"),
        );
    }
    let mut shape = ids.dims().to_vec();
    shape.push(dim);
    let out = alloc(&dev, shape, DType::BF16, false)?;
    if n == 0 {
        return Ok(out);
    }
    let f = function(&dev, &CUBIN, "embedding_fwd_bf16")?;
    let (pids, pw, po) = (ptr(ids)?, ptr(w)?, ptr(&out)?);
    let vec = dim % 8 == 0 && (pw | po) % 16 == 0;
    let threads = if vec {
        (dim / 8).next_multiple_of(32).min(256)
    } else {
        dim.next_multiple_of(32).min(256)
    };
    let (nn, ndim, nvocab, vec) = (n as i32, dim as i32, vocab as i32, vec as i32);
    launch!(dev, f, (n as u32, 1, 1), threads, 0; pids, pw, po, nn, ndim, nvocab, vec)?;
    Ok(out)
}
