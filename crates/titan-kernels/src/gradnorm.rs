//! Multi-tensor global gradient norm (sum of squares over many f32 tensors, deterministic)
//! with the clip coefficient computed on the device, and multi-tensor in-place scaling.
//!
//! Also the pieces `adamw.rs` shares: the per-tensor block table and the check that tensors a
//! kernel writes in place do not overlap.

use candle_core::{DType, Device, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{cubin, cuda_device, expect, function, launch, ptr, Cubin};

pub(crate) const CUBIN: Cubin = cubin!("gradnorm");
const KERNEL: &str = "gradnorm";

/// Elements per block in the multi-tensor kernels (a multiple of 4 for the 16-byte vectors).
pub(crate) const CHUNK: usize = 65536;
/// Threads per block of the multi-tensor kernels (their `__launch_bounds__`).
pub(crate) const THREADS: u32 = 512;

/// A factor the kernels multiply every element by.
#[derive(Debug, Clone, Copy)]
pub enum Scale<'a> {
    /// A host scalar (e.g. a clip coefficient computed from an all-reduced norm).
    Host(f32),
    /// A one-element f32 tensor on the tensors' device, read by the kernel (e.g.
    /// [`SqNorm::coef`]): no host synchronization between computing it and using it.
    Device(&'a Tensor),
}

impl Scale<'_> {
    /// `(device pointer or 0, host value)` as the kernels take them.
    pub(crate) fn args(&self, kernel: &'static str, device: &Device) -> Result<(u64, f32)> {
        match self {
            Scale::Host(s) => Ok((0, *s)),
            Scale::Device(t) => {
                expect(kernel, "scale", t, DType::F32, true)?;
                if t.elem_count() != 1 || !t.device().same_device(device) {
                    return unsupported(
                        kernel,
                        "scale must be one f32 element on the tensors' device",
                    );
                }
                Ok((ptr(t)?, 1.0))
            }
        }
    }
}

/// Block `b` of a multi-tensor launch belongs to the tensor with the largest `first_block <=
/// b`: returns each tensor's first block and the total number of blocks. Tensors must be
/// non-empty (the kernels' binary search relies on strictly increasing first blocks).
pub(crate) fn block_table(kernel: &'static str, sizes: &[usize]) -> Result<(Vec<i64>, u32)> {
    let mut first = Vec::with_capacity(sizes.len());
    let mut blocks = 0usize;
    for &n in sizes {
        first.push(blocks as i64);
        blocks += n.div_ceil(CHUNK);
    }
    if blocks > i32::MAX as usize {
        return unsupported(kernel, format!("{blocks} blocks exceed the grid limit"));
    }
    Ok((first, blocks as u32))
}

/// A device byte range `[start, end)` and whether the kernel writes it.
pub(crate) struct Range {
    pub start: u64,
    pub end: u64,
    pub written: bool,
}

impl Range {
    pub fn of(t: &Tensor, written: bool) -> Result<Self> {
        let start = ptr(t)?;
        Ok(Self {
            start,
            end: start + (t.elem_count() * t.dtype().size_in_bytes()) as u64,
            written,
        })
    }
}

/// `Unsupported` if a written range overlaps any other range: an in-place multi-tensor
/// kernel would then update shared memory twice (e.g. one gradient tensor handed in for two
/// parameters) or read what another block writes.
pub(crate) fn check_disjoint(kernel: &'static str, mut ranges: Vec<Range>) -> Result<()> {
    ranges.sort_by_key(|r| r.start);
    let (mut end_any, mut end_written) = (0u64, 0u64);
    for r in &ranges {
        if r.start < end_written || (r.written && r.start < end_any) {
            return unsupported(kernel, "tensors written in place share memory");
        }
        end_any = end_any.max(r.end);
        if r.written {
            end_written = end_written.max(r.end);
        }
    }
    Ok(())
}

/// The tensors' common CUDA device, after checking each is f32 and contiguous.
fn common_device(kernel: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let Some(first) = tensors.first() else {
        return unsupported(kernel, "no tensors");
    };
    cuda_device(kernel, first)?;
    for t in tensors {
        expect(kernel, "tensor", t, DType::F32, true)?;
        if !t.device().same_device(first.device()) {
            return unsupported(kernel, "tensors on different devices");
        }
    }
    Ok(first.device().clone())
}

/// Upload the `NormTensor` table of `gradnorm.cu` (4 words per tensor) for the non-empty
/// tensors; returns it with the number of tensors and blocks.
fn norm_table(
    kernel: &'static str,
    device: &Device,
    tensors: &[&Tensor],
) -> Result<(Tensor, i32, u32)> {
    let live: Vec<&Tensor> = tensors
        .iter()
        .copied()
        .filter(|t| t.elem_count() > 0)
        .collect();
    let sizes: Vec<usize> = live.iter().map(|t| t.elem_count()).collect();
    let (first, blocks) = block_table(kernel, &sizes)?;
    let mut words = Vec::with_capacity(4 * live.len().max(1));
    for (t, f) in live.iter().zip(&first) {
        words.extend_from_slice(&[ptr(t)? as i64, t.elem_count() as i64, *f, 0]);
    }
    if words.is_empty() {
        words.resize(4, 0); // never read: no blocks are launched
    }
    let n = words.len();
    Ok((
        Tensor::from_vec(words, n, device)?,
        live.len() as i32,
        blocks,
    ))
}

/// The squared global norm of some f32 tensors, on their device.
#[derive(Debug, Clone)]
pub struct SqNorm {
    /// Sum of squares of every element (f64, shape `()`).
    pub sum_sq: Tensor,
    /// With `max_norm`: the clip coefficient (f32, shape `()`): `max_norm / (norm + 1e-6)`
    /// with `norm = f32(sqrt(sum_sq))` when that is below 1, else 1 (also 1 when the norm is
    /// not finite, leaving gradients unclipped).
    pub coef: Option<Tensor>,
}

/// Sum of squares of all elements of `tensors` (f32, contiguous, one CUDA device), per
/// element in f32 within a thread, in f64 above that; deterministic. With `max_norm`, also
/// the clip coefficient. Two launches, no host synchronization.
pub fn sq_norm(tensors: &[&Tensor], max_norm: Option<f32>) -> Result<SqNorm> {
    let device = common_device(KERNEL, tensors)?;
    let dev = cuda_device(KERNEL, tensors[0])?;
    let (table, num_tensors, blocks) = norm_table(KERNEL, &device, tensors)?;
    let partials = Tensor::zeros(blocks.max(1) as usize, DType::F64, &device)?;
    let ppart = ptr(&partials)?;
    if blocks > 0 {
        let f = function(&dev, &CUBIN, "sq_norm_partials_f32")?;
        let (ptable, chunk) = (ptr(&table)?, CHUNK as i64);
        launch!(dev, f, (blocks, 1, 1), THREADS, 0; ptable, num_tensors, chunk, ppart)?;
    }
    let sum_sq = Tensor::zeros((), DType::F64, &device)?;
    let coef = match max_norm {
        Some(_) => Some(Tensor::zeros((), DType::F32, &device)?),
        None => None,
    };
    let f = function(&dev, &CUBIN, "sq_norm_finalize")?;
    let (psum, num_partials) = (ptr(&sum_sq)?, blocks as i32);
    let pcoef = match &coef {
        Some(c) => ptr(c)?,
        None => 0u64,
    };
    let fmax = max_norm.unwrap_or(0.0);
    launch!(dev, f, (1, 1, 1), 1024, 0; ppart, num_partials, psum, fmax, pcoef)?;
    Ok(SqNorm { sum_sq, coef })
}

/// Multiply every element of `tensors` (f32, contiguous, one CUDA device, pairwise disjoint)
/// by `scale`, in place, in one launch.
///
/// In place: every handle on these tensors sees the new values.
pub fn scale_in_place(tensors: &[&Tensor], scale: Scale) -> Result<()> {
    let device = common_device(KERNEL, tensors)?;
    let dev = cuda_device(KERNEL, tensors[0])?;
    let (pscale, fscale) = scale.args(KERNEL, &device)?;
    let ranges = tensors
        .iter()
        .filter(|t| t.elem_count() > 0)
        .map(|t| Range::of(t, true))
        .collect::<Result<Vec<_>>>()?;
    check_disjoint(KERNEL, ranges)?;
    let (table, num_tensors, blocks) = norm_table(KERNEL, &device, tensors)?;
    if blocks == 0 {
        return Ok(());
    }
    let f = function(&dev, &CUBIN, "scale_multi_f32")?;
    let (ptable, chunk) = (ptr(&table)?, CHUNK as i64);
    launch!(dev, f, (blocks, 1, 1), THREADS, 0; ptable, num_tensors, chunk, pscale, fscale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, written: bool) -> Range {
        Range {
            start,
            end,
            written,
        }
    }

    #[test]
    fn overlaps_of_written_ranges_are_refused() {
        assert!(check_disjoint("t", vec![r(0, 10, true), r(10, 20, true)]).is_ok());
        assert!(check_disjoint("t", vec![r(0, 100, false), r(10, 20, false)]).is_ok());
        // A read range spanning a later written one (not adjacent after sorting).
        assert!(check_disjoint(
            "t",
            vec![r(0, 100, false), r(10, 20, false), r(50, 60, true)]
        )
        .is_err());
        assert!(check_disjoint("t", vec![r(5, 15, true), r(0, 10, false)]).is_err());
    }

    #[test]
    fn block_table_skips_nothing_and_counts_chunks() {
        let (first, blocks) = block_table("t", &[1, CHUNK, CHUNK + 1, 7]).unwrap();
        assert_eq!(first, vec![0, 1, 2, 4]);
        assert_eq!(blocks, 5);
    }
}
