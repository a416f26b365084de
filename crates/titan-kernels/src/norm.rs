//! Fused RMSNorm forward (saving the reciprocal RMS) and backward (dx and an f32 dw), with
//! residual forms: forward from `x + r` (writing the bf16 sum `h` too) and backward adding a
//! residual gradient into `dx` before its single rounding.
//!
//! Rows whose vectors fit in registers (dim % 8 == 0, 16-byte aligned, dim <= 16384) run
//! kernels that read every input once: `*_rows1` (dim <= 4096: 4 rows per block at once,
//! one barrier round for all four) or `*_reg2` (wider rows, one at a time); any other shape
//! runs the generic kernels.

use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{
    alloc, cubin, cuda_device, expect, function, launch, ptr, resident_blocks, set_dynamic_smem,
    Cubin,
};

pub(crate) const CUBIN: Cubin = cubin!("norm");
const KERNEL: &str = "rmsnorm";
/// The register kernels' block limit (`__launch_bounds__(1024)` in norm.cu).
const REG_MAX_THREADS: usize = 1024;

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

/// Rows per block of the row-group kernels (`NORM_ROWS_KERNELS(1, 4)` in norm.cu).
const ROWS_R: usize = 4;
/// The row-group kernels' block limit (`__launch_bounds__(512)`).
const ROWS_MAX_THREADS: usize = 512;

/// Which register-resident kernel runs `dim`, with its block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegPlan {
    /// `*_rows1`: one vector per thread, [`ROWS_R`] rows per block at once.
    Rows(usize),
    /// `*_reg2`: two vectors per thread, one row at a time (rows too wide for `Rows`).
    Reg2(usize),
}

impl RegPlan {
    /// Threads per block.
    fn threads(self) -> usize {
        match self {
            RegPlan::Rows(t) | RegPlan::Reg2(t) => t,
        }
    }
}

fn reg_plan(dim: usize, vec: i32) -> Option<RegPlan> {
    if vec == 0 {
        return None;
    }
    let nvec = dim / 8;
    if nvec <= ROWS_MAX_THREADS {
        Some(RegPlan::Rows(nvec.next_multiple_of(32)))
    } else if nvec.div_ceil(2) <= REG_MAX_THREADS {
        Some(RegPlan::Reg2(nvec.div_ceil(2).next_multiple_of(32)))
    } else {
        None
    }
}

fn reg_name(fwd: bool, plan: RegPlan) -> &'static str {
    match (fwd, plan) {
        (true, RegPlan::Rows(_)) => "rmsnorm_fwd_rows1_bf16",
        (true, RegPlan::Reg2(_)) => "rmsnorm_fwd_reg2_bf16",
        (false, RegPlan::Rows(_)) => "rmsnorm_bwd_rows1_bf16",
        (false, RegPlan::Reg2(_)) => "rmsnorm_bwd_reg2_bf16",
    }
}

/// Shape of the per-row `rstd`: like `x` with a last dimension of 1.
fn rstd_shape(x: &Tensor) -> Vec<usize> {
    let mut s = x.dims().to_vec();
    if let Some(last) = s.last_mut() {
        *last = 1;
    }
    s
}

/// Launch the forward; `pr`/`ph` are 0 without a residual.
#[allow(clippy::too_many_arguments)]
fn forward_launch(
    dev: &CudaDevice,
    rows: usize,
    dim: usize,
    eps: f64,
    px: u64,
    pr: u64,
    pw: u64,
    ph: u64,
    py: u64,
    prs: u64,
) -> Result<()> {
    let (nrows, ndim, feps) = (rows as i32, dim as i32, eps as f32);
    let mut ptrs = vec![px, pw, py];
    if pr != 0 {
        ptrs.extend([pr, ph]);
    }
    let vec = vectorizable(dim, &ptrs);
    let grid = (rows as u32, 1, 1);
    if let Some(plan) = reg_plan(dim, vec) {
        let f = function(dev, &CUBIN, reg_name(true, plan))?;
        let grid = match plan {
            RegPlan::Rows(_) => (rows.div_ceil(ROWS_R) as u32, 1, 1),
            RegPlan::Reg2(_) => grid,
        };
        let threads = plan.threads();
        launch!(dev, f, grid, threads, 0; px, pr, pw, ph, py, prs, nrows, ndim, feps)
    } else {
        let f = function(dev, &CUBIN, "rmsnorm_fwd_bf16")?;
        let threads = if dim >= 2048 { 256 } else { 128 };
        launch!(dev, f, grid, threads, 0; px, pr, pw, ph, py, prs, nrows, ndim, feps, vec)
    }
}

/// `x (..., dim)` bf16 contiguous, `w (dim)` bf16: returns `y` like `x` and `rstd (..., 1)` f32.
pub fn rmsnorm_forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, x)?;
    expect(KERNEL, "x", x, DType::BF16, true)?;
    expect(KERNEL, "weight", w, DType::BF16, true)?;
    let (rows, dim) = rows_dim(x, w)?;
    let y = alloc(&dev, x.shape(), DType::BF16, false)?;
    let rstd = alloc(&dev, rstd_shape(x), DType::F32, false)?;
    if rows == 0 {
        return Ok((y, rstd));
    }
    let (px, pw, py, prs) = (ptr(x)?, ptr(w)?, ptr(&y)?, ptr(&rstd)?);
    forward_launch(&dev, rows, dim, eps, px, 0, pw, 0, py, prs)?;
    Ok((y, rstd))
}

/// Add + norm in one pass: `h = x + r` (bf16, rounded once exactly as candle's bf16 add),
/// `y = norm(h) * w` computed from the rounded `h`, and `rstd (..., 1)` f32. `x` and `r` are
/// bf16 contiguous of the same shape.
pub fn rmsnorm_forward_residual(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, x)?;
    expect(KERNEL, "x", x, DType::BF16, true)?;
    expect(KERNEL, "residual", r, DType::BF16, true)?;
    expect(KERNEL, "weight", w, DType::BF16, true)?;
    if r.dims() != x.dims() {
        return unsupported(
            KERNEL,
            format!("residual {:?} does not match x {:?}", r.dims(), x.dims()),
        );
    }
    let (rows, dim) = rows_dim(x, w)?;
    let h = alloc(&dev, x.shape(), DType::BF16, false)?;
    let y = alloc(&dev, x.shape(), DType::BF16, false)?;
    let rstd = alloc(&dev, rstd_shape(x), DType::F32, false)?;
    if rows == 0 {
        return Ok((h, y, rstd));
    }
    let (px, pr, pw) = (ptr(x)?, ptr(r)?, ptr(w)?);
    let (ph, py, prs) = (ptr(&h)?, ptr(&y)?, ptr(&rstd)?);
    forward_launch(&dev, rows, dim, eps, px, pr, pw, ph, py, prs)?;
    Ok((h, y, rstd))
}

/// Gradient of [`rmsnorm_forward`]: returns `dx` (bf16, like `x`) and `dw (dim)` f32.
pub fn rmsnorm_backward(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    backward(x, w, rstd, dy, None)
}

/// [`rmsnorm_backward`] with a residual gradient: returns `d_res + dx` (bf16, added in f32
/// before one rounding) and `dw (dim)` f32. `d_res` is bf16 contiguous like `x`.
pub fn rmsnorm_backward_residual(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    d_res: &Tensor,
) -> Result<(Tensor, Tensor)> {
    backward(x, w, rstd, dy, Some(d_res))
}

fn backward(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    d_res: Option<&Tensor>,
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
    if let Some(d) = d_res {
        expect(KERNEL, "d_res", d, DType::BF16, true)?;
        if d.dims() != x.dims() {
            return unsupported(KERNEL, "d_res shape does not match x");
        }
    }
    let dx = alloc(&dev, x.shape(), DType::BF16, false)?;
    let dw = alloc(&dev, dim, DType::F32, true)?;
    if rows == 0 {
        return Ok((dx, dw));
    }
    let (px, pw, pr, pdy, pdx, pdw) =
        (ptr(x)?, ptr(w)?, ptr(rstd)?, ptr(dy)?, ptr(&dx)?, ptr(&dw)?);
    let pres = match d_res {
        Some(d) => ptr(d)?,
        None => 0,
    };
    let mut ptrs = vec![px, pw, pdy, pdx];
    if pres != 0 {
        ptrs.push(pres);
    }
    let vec = vectorizable(dim, &ptrs);
    let (nrows, ndim) = (rows as i32, dim as i32);
    if let Some(plan) = reg_plan(dim, vec) {
        let name = reg_name(false, plan);
        let f = function(&dev, &CUBIN, name)?;
        let threads = plan.threads();
        let wave = resident_blocks(&dev, &f, name, threads, 0)?;
        let rows_per_block = match plan {
            // One wave of blocks, each walking several groups of ROWS_R rows: every block
            // ends with one atomicAdd per column into dw, and those serialize in the few L2
            // lines dw spans. Measured on an H200 at 8192 x 2048: 2048 blocks of one group
            // each (4M atomics on 64 lines) took 134 us, the atomics rather than the 134 MB
            // of traffic setting the pace.
            RegPlan::Rows(_) => ROWS_R * rows.div_ceil(ROWS_R).div_ceil(wave).max(1),
            // One wave of blocks: each keeps w and its dw partials in registers over
            // `rows_per_block` rows, walking them one after another (two barriers each), so
            // at most 8 rows per block (measured on an H200 at 8192 x 2048: ~12 rows per
            // block ran at 0.66 TB/s).
            RegPlan::Reg2(_) => rows.div_ceil(wave).clamp(1, 8),
        };
        let blocks = rows.div_ceil(rows_per_block) as u32;
        let rpb = rows_per_block as i32;
        launch!(dev, f, (blocks, 1, 1), threads, 0;
            px, pw, pr, pdy, pres, pdx, pdw, nrows, ndim, rpb)?;
    } else {
        let f = function(&dev, &CUBIN, "rmsnorm_bwd_bf16")?;
        let smem = (dim * 4) as u32;
        if smem > 48 * 1024 {
            set_dynamic_smem(&f, smem)?;
        }
        // ~4 blocks per SM keeps atomics on dw few (one per column per block).
        let rows_per_block = rows.div_ceil(132 * 4).max(1);
        let blocks = rows.div_ceil(rows_per_block) as u32;
        let rpb = rows_per_block as i32;
        let threads = if dim >= 2048 { 256 } else { 128 };
        launch!(dev, f, (blocks, 1, 1), threads, smem;
            px, pw, pr, pdy, pres, pdx, pdw, nrows, ndim, rpb, vec)?;
    }
    Ok((dx, dw))
}
