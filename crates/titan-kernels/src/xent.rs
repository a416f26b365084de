//! Fused softmax cross-entropy: one pass over bf16 logits for the log-sum-exp and the loss,
//! one pass for the logits gradient; no f32 `(rows, vocab)` tensor is ever built.

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{alloc, cubin, cuda_device, expect, function, launch, ptr, Cubin};

pub(crate) const CUBIN: Cubin = cubin!("xent");
const KERNEL: &str = "cross_entropy";

fn rows_vocab(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    expect(KERNEL, "logits", logits, DType::BF16, true)?;
    expect(KERNEL, "labels", labels, DType::I64, true)?;
    let (rows, vocab) = logits.dims2()?;
    if labels.dims() != [rows] {
        return unsupported(KERNEL, format!("labels {:?} vs {rows} rows", labels.dims()));
    }
    if rows > i32::MAX as usize || vocab == 0 || vocab > i32::MAX as usize {
        return unsupported(KERNEL, format!("rows {rows} / vocab {vocab} out of range"));
    }
    Ok((rows, vocab))
}

/// Threads per row: enough 16-byte vectors per thread to keep loads in flight.
fn threads(vocab: usize) -> usize {
    match vocab / 8 {
        v if v >= 8192 => 1024,
        v if v >= 2048 => 512,
        v if v >= 512 => 256,
        _ => 128,
    }
}

/// `logits (rows, vocab)` bf16 contiguous, `labels (rows,)` i64 (negative = ignored):
/// returns the scalar f32 loss `scale * sum over valid rows of (lse - logit[label])` and
/// `lse (rows, 1)` f32. A label `>= vocab` makes the loss NaN.
pub fn cross_entropy_forward(
    logits: &Tensor,
    labels: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, logits)?;
    let (rows, vocab) = rows_vocab(logits, labels)?;
    let lse = alloc(&dev, (rows, 1), DType::F32, false)?;
    let row_loss = alloc(&dev, rows, DType::F32, false)?;
    let loss = alloc(&dev, (), DType::F32, false)?;
    let (pl, plab, plse, prow, ploss) = (
        ptr(logits)?,
        ptr(labels)?,
        ptr(&lse)?,
        ptr(&row_loss)?,
        ptr(&loss)?,
    );
    let (nrows, nvocab) = (rows as i32, vocab as i32);
    if rows > 0 {
        let f = function(&dev, &CUBIN, "xent_fwd_bf16")?;
        let vec = (pl % 16 == 0) as i32;
        launch!(dev, f, (rows as u32, 1, 1), threads(vocab), 0;
            pl, plab, plse, prow, nrows, nvocab, vec)?;
    }
    // The sum runs even for 0 rows, so the loss is always written (0).
    let f = function(&dev, &CUBIN, "xent_sum_f32")?;
    let fscale = scale as f32;
    launch!(dev, f, (1, 1, 1), 1024, 0; prow, ploss, nrows, fscale)?;
    Ok((loss, lse))
}

/// Gradient of [`cross_entropy_forward`]: `d_logits = scale * (softmax - onehot(label))`
/// on valid rows, 0 on ignored ones, bf16 like `logits`. `lse` is the forward's.
pub fn cross_entropy_backward(
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let dev = cuda_device(KERNEL, logits)?;
    let (rows, vocab) = rows_vocab(logits, labels)?;
    expect(KERNEL, "lse", lse, DType::F32, true)?;
    if lse.elem_count() != rows {
        return unsupported(KERNEL, format!("lse {:?} vs {rows} rows", lse.dims()));
    }
    let d = alloc(&dev, (rows, vocab), DType::BF16, false)?;
    launch_backward(&dev, logits, labels, lse, &d, rows, vocab, scale)?;
    Ok(d)
}

/// [`cross_entropy_backward`] written over `logits` itself: the logits become their gradient
/// (no second `(rows, vocab)` buffer: 2.1 GB at 8192 rows of a 128256 vocabulary). Any other
/// handle on `logits`' storage sees the gradient afterwards.
pub fn cross_entropy_backward_in_place(
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    scale: f64,
) -> Result<()> {
    let dev = cuda_device(KERNEL, logits)?;
    let (rows, vocab) = rows_vocab(logits, labels)?;
    expect(KERNEL, "lse", lse, DType::F32, true)?;
    if lse.elem_count() != rows {
        return unsupported(KERNEL, format!("lse {:?} vs {rows} rows", lse.dims()));
    }
    launch_backward(&dev, logits, labels, lse, logits, rows, vocab, scale)
}

#[allow(clippy::too_many_arguments)]
fn launch_backward(
    dev: &candle_core::CudaDevice,
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    d: &Tensor,
    rows: usize,
    vocab: usize,
    scale: f64,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let f = function(dev, &CUBIN, "xent_bwd_bf16")?;
    let (pl, plab, plse, pd) = (ptr(logits)?, ptr(labels)?, ptr(lse)?, ptr(d)?);
    // Rows split into head/vectors/tail at the same offsets in logits and d_logits, so both
    // bases must be 16-byte aligned.
    let vec = ((pl | pd) % 16 == 0) as i32;
    let (nrows, nvocab, fscale) = (rows as i32, vocab as i32, scale as f32);
    launch!(dev, f, (rows as u32, 1, 1), threads(vocab), 0;
        pl, plab, plse, pd, nrows, nvocab, fscale, vec)?;
    Ok(())
}
