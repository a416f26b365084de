//! Scaled dot-product attention behind a kernel interface.
//!
//! The model calls an [`AttentionKernel`]; which one (the naive kernel here, a fused
//! flash-attention kernel on GPU, ring attention for context parallelism) is chosen when the
//! model is built, without touching the model's code. Every kernel supports grouped-query
//! attention (`heads_q` a multiple of `heads_kv`) and the causal and block-causal masks.

use candle_core::{DType, Device, Tensor, D};

use crate::layered::{tensor_bytes, SavedState};
use crate::Result;

/// Which positions a query may attend to.
#[derive(Debug, Clone)]
pub enum MaskKind {
    /// Query `i` sees keys `0..=i`.
    Causal,
    /// Causal, and only within the same document: `doc_ids (batch, seq)` (u32) numbers the
    /// documents packed into each row (torchtitan's `block_causal`).
    BlockCausal { doc_ids: Tensor },
}

impl MaskKind {
    /// Check that the mask fits a `(batch, seq)` microbatch (block-causal `doc_ids` shape).
    pub fn check_shape(&self, batch: usize, seq: usize) -> Result<()> {
        if let MaskKind::BlockCausal { doc_ids } = self {
            let (b, s) = doc_ids.dims2()?;
            if b != batch || s != seq {
                crate::bail!("block-causal doc_ids are ({b}, {s}), the batch is ({batch}, {seq})");
            }
        }
        Ok(())
    }
}

/// A mask prepared once per microbatch by the kernel that will use it.
#[derive(Debug, Clone)]
pub struct AttnMask {
    pub kind: MaskKind,
    /// An additive bias `(batch or 1, 1, seq, seq)` (0 or -inf), for kernels that want one.
    pub bias: Option<Tensor>,
}

/// What attention keeps for its backward: inputs, output and kernel-specific extras (the
/// probabilities for the naive kernel, the log-sum-exp for a flash kernel).
#[derive(Debug)]
pub struct AttnSaved {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub out: Tensor,
    pub aux: Vec<Tensor>,
}

impl SavedState for AttnSaved {
    fn bytes(&self) -> usize {
        tensor_bytes(&self.q)
            + tensor_bytes(&self.k)
            + tensor_bytes(&self.v)
            + tensor_bytes(&self.out)
            + self.aux.iter().map(tensor_bytes).sum::<usize>()
    }
}

/// An attention implementation with forward and backward.
///
/// Shapes: `q (batch, heads_q, seq, head_dim)`, `k, v (batch, heads_kv, seq, head_dim)`,
/// output like `q`. Query head `h` reads key/value head `h / (heads_q / heads_kv)`.
pub trait AttentionKernel: Send + Sync + std::fmt::Debug {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Build the mask this kernel wants for a microbatch.
    fn prepare_mask(
        &self,
        kind: &MaskKind,
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> Result<AttnMask>;
    /// Attention output and saved state.
    fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        scale: f64,
    ) -> Result<(Tensor, AttnSaved)>;
    /// Gradients `(d_q, d_k, d_v)` given the output gradient.
    fn backward(
        &self,
        saved: &AttnSaved,
        d_out: &Tensor,
        mask: &AttnMask,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Tensor)>;
    /// Whether `forward` and `backward` take non-contiguous `q, k, v, d_out` (e.g.
    /// `(b, s, h, hd).transpose(1, 2)` views), so the caller can skip copying them.
    fn accepts_strided(&self) -> bool {
        false
    }
}

/// Attention that materializes the `seq x seq` probabilities (f32). Fine on CPU and for short
/// sequences; the reference the fused kernels are tested against.
#[derive(Debug, Default, Clone, Copy)]
pub struct NaiveAttention;

/// Repeat each kv head `rep` times: `(b, hkv, s, d) -> (b, hkv * rep, s, d)`.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, h, rep, s, d))?
        .contiguous()?
        .reshape((b, h * rep, s, d))?)
}

/// Sum groups of `rep` heads: `(b, hkv * rep, s, d) -> (b, hkv, s, d)`.
fn reduce_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    Ok(x.reshape((b, h / rep, rep, s, d))?.sum(2)?)
}

fn heads_ratio(q: &Tensor, k: &Tensor) -> Result<usize> {
    let hq = q.dim(1)?;
    let hkv = k.dim(1)?;
    if hkv == 0 || hq % hkv != 0 {
        crate::bail!("attention: {hq} query heads is not a multiple of {hkv} kv heads");
    }
    Ok(hq / hkv)
}

impl AttentionKernel for NaiveAttention {
    fn name(&self) -> &'static str {
        "naive"
    }

    fn prepare_mask(
        &self,
        kind: &MaskKind,
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> Result<AttnMask> {
        let i = Tensor::arange(0u32, seq as u32, device)?;
        let causal = i.unsqueeze(1)?.broadcast_ge(&i.unsqueeze(0)?)?; // (s, s): key j <= query i
        let allowed = match kind {
            MaskKind::Causal => causal.reshape((1, 1, seq, seq))?,
            MaskKind::BlockCausal { doc_ids } => {
                kind.check_shape(batch, seq)?;
                let same_doc = doc_ids.unsqueeze(2)?.broadcast_eq(&doc_ids.unsqueeze(1)?)?; // (b, s, s)
                (same_doc
                    .to_dtype(DType::U8)?
                    .broadcast_mul(&causal.unsqueeze(0)?)?)
                .reshape((batch, 1, seq, seq))?
            }
        };
        let zeros = Tensor::zeros(allowed.shape(), DType::F32, device)?;
        let neg_inf = Tensor::full(f32::NEG_INFINITY, allowed.shape(), device)?;
        let bias = allowed.ne(0u8)?.where_cond(&zeros, &neg_inf)?;
        Ok(AttnMask {
            kind: kind.clone(),
            bias: Some(bias),
        })
    }

    fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        scale: f64,
    ) -> Result<(Tensor, AttnSaved)> {
        let rep = heads_ratio(q, k)?;
        let bias = mask.bias.as_ref().ok_or_else(|| {
            crate::Error::Msg("naive attention needs a prepared bias mask".into())
        })?;
        let q32 = q.to_dtype(DType::F32)?;
        let k32 = repeat_kv(&k.to_dtype(DType::F32)?, rep)?;
        let v32 = repeat_kv(&v.to_dtype(DType::F32)?, rep)?;
        let scores = (q32.matmul(&k32.t()?)? * scale)?.broadcast_add(bias)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let e = scores.broadcast_sub(&max)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let out = p.matmul(&v32)?.to_dtype(q.dtype())?;
        let saved = AttnSaved {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            out: out.clone(),
            aux: vec![p],
        };
        Ok((out, saved))
    }

    fn backward(
        &self,
        saved: &AttnSaved,
        d_out: &Tensor,
        _mask: &AttnMask,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let rep = heads_ratio(&saved.q, &saved.k)?;
        let p = saved.aux.first().ok_or(crate::Error::MissingSaved {
            module: "naive attention (probabilities)",
        })?;
        let q32 = saved.q.to_dtype(DType::F32)?;
        let k32 = repeat_kv(&saved.k.to_dtype(DType::F32)?, rep)?;
        let v32 = repeat_kv(&saved.v.to_dtype(DType::F32)?, rep)?;
        let d_o = d_out.to_dtype(DType::F32)?;
        let d_v = p.t()?.matmul(&d_o)?;
        let d_p = d_o.matmul(&v32.t()?)?;
        // Softmax backward: dS = P * (dP - rowsum(dP * P)).
        let row = (&d_p * p)?.sum_keepdim(D::Minus1)?;
        let d_s = (p * d_p.broadcast_sub(&row)?)?;
        let d_q = (d_s.matmul(&k32)? * scale)?;
        let d_k = (d_s.t()?.matmul(&q32)? * scale)?;
        Ok((
            d_q.to_dtype(saved.q.dtype())?,
            reduce_kv(&d_k, rep)?.to_dtype(saved.k.dtype())?,
            reduce_kv(&d_v, rep)?.to_dtype(saved.v.dtype())?,
        ))
    }
}
