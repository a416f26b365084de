//! Softmax cross-entropy summed over valid tokens and scaled, with its logits gradient.
//!
//! torchtitan divides the summed token loss by the number of valid tokens in the *global*
//! batch, so the caller passes `scale = 1 / global_valid_tokens`; the sum of microbatch losses
//! is then the global mean, whatever the gradient accumulation and data parallel degree.

use candle_core::{DType, Tensor, D};

use crate::layered::{tensor_bytes, SavedState};
use crate::Result;

/// Labels equal to this are ignored (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// What the loss backward needs (the same on the composite and the fused path).
#[derive(Debug)]
pub struct CrossEntropySaved {
    /// `(rows, vocab)` in the compute dtype.
    pub logits: Tensor,
    /// Log-sum-exp per row `(rows, 1)`, f32.
    pub lse: Tensor,
    /// The labels as given `(rows,)`, i64, [`IGNORE_INDEX`] (any negative) for ignored rows.
    pub labels: Tensor,
    pub scale: f64,
}

impl SavedState for CrossEntropySaved {
    fn bytes(&self) -> usize {
        tensor_bytes(&self.logits) + tensor_bytes(&self.lse) + tensor_bytes(&self.labels)
    }
}

/// `(safe_labels (rows,) u32, valid (rows, 1) f32)`: ignored rows get label 0 and weight 0.
fn safe_labels_and_valid(labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let valid_mask = labels.ge(0i64)?;
    let valid = valid_mask.to_dtype(DType::F32)?.unsqueeze(1)?;
    let zeros = labels.zeros_like()?;
    let safe_labels = valid_mask
        .where_cond(labels, &zeros)?
        .to_dtype(DType::U32)?;
    Ok((safe_labels, valid))
}

/// `scale * sum_i [lse_i - logit_i(label_i)]` over rows whose label is not [`IGNORE_INDEX`].
/// `logits (rows, vocab)`, `labels (rows,)` as i64. Returns a scalar f32 tensor.
pub fn cross_entropy_forward(
    logits: &Tensor,
    labels: &Tensor,
    scale: f64,
) -> Result<(Tensor, CrossEntropySaved)> {
    if let Some((loss, lse)) = super::fused::xent::cross_entropy_forward(logits, labels, scale)? {
        let saved = CrossEntropySaved {
            logits: logits.clone(),
            lse,
            labels: labels.clone(),
            scale,
        };
        return Ok((loss, saved));
    }
    let l32 = logits.to_dtype(DType::F32)?;
    let max = l32.max_keepdim(D::Minus1)?;
    let lse = (l32
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let (safe_labels, valid) = safe_labels_and_valid(labels)?;
    let picked = l32.gather(&safe_labels.unsqueeze(1)?, 1)?;
    let per_row = ((&lse - picked)? * &valid)?;
    let loss = (per_row.sum_all()? * scale)?;
    Ok((
        loss,
        CrossEntropySaved {
            logits: logits.clone(),
            lse,
            labels: labels.clone(),
            scale,
        },
    ))
}

/// `d logits = scale * valid * (softmax(logits) - onehot(label))`, in the logits' dtype.
pub fn cross_entropy_backward(saved: &CrossEntropySaved) -> Result<Tensor> {
    if let Some(d) = super::fused::xent::cross_entropy_backward(
        &saved.logits,
        &saved.labels,
        &saved.lse,
        saved.scale,
    )? {
        return Ok(d);
    }
    let (safe_labels, valid) = safe_labels_and_valid(&saved.labels)?;
    let l32 = saved.logits.to_dtype(DType::F32)?;
    let probs = l32.broadcast_sub(&saved.lse)?.exp()?;
    let onehot = probs
        .zeros_like()?
        .scatter_add(&safe_labels.unsqueeze(1)?, &valid, 1)?;
    let d = (probs.broadcast_mul(&valid)? - onehot)?;
    Ok((d * saved.scale)?.to_dtype(saved.logits.dtype())?)
}

/// The loss and its logits gradient at once, for a pass whose backward follows: the same
/// values as [`cross_entropy_forward`] then [`cross_entropy_backward`]. `logits` is consumed:
/// on the fused path its buffer becomes the gradient (the kernel writes `d_logits` in place),
/// so the `(rows, vocab)` logits and their gradient never coexist.
pub fn cross_entropy_forward_backward(
    logits: Tensor,
    labels: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let (loss, saved) = cross_entropy_forward(&logits, labels, scale)?;
    // The kernel refuses (false) anything but contiguous bf16 CUDA logits.
    if super::fused::xent::cross_entropy_backward_in_place(
        &saved.logits,
        &saved.labels,
        &saved.lse,
        saved.scale,
    )? {
        drop(saved);
        return Ok((loss, logits));
    }
    drop(logits);
    let d_logits = cross_entropy_backward(&saved)?;
    Ok((loss, d_logits))
}
