//! Flash attention: the fused titan-kernels kernel (`attention.cu`) on bf16 CUDA tensors, which
//! never materializes the `seq x seq` matrix and saves only the log-sum-exp for its backward;
//! [`NaiveAttention`] everywhere else (CPU, f32, unsupported head sizes, fused kernels off).
//!
//! Masks: on a device the fused kernel may serve, [`FlashAttention::prepare_mask`] builds no
//! bias (the kernel masks from `mask.kind` itself, and a `(b, 1, s, s)` bias is what this
//! kernel exists to avoid); a fallback on such a device builds the naive bias on the fly from
//! `mask.kind`. Elsewhere the bias is prepared once, as the naive kernel wants.
//!
//! Layouts: the kernel takes strided `q, k, v, d_out` (e.g. `(b, s, h, hd).transpose(1, 2)`
//! views, see [`AttentionKernel::accepts_strided`]) and returns transposed views of contiguous
//! `(b, s, h, hd)` tensors, so the caller's move back to `(b, s, h * hd)` is free.

use candle_core::{Device, Tensor};

use super::attention::{AttentionKernel, AttnMask, AttnSaved, MaskKind, NaiveAttention};
use crate::Result;

/// Causal / block-causal attention through the fused flash kernel where it applies.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlashAttention;

/// Whether the fused kernel may serve tensors on `device` (then no bias is prepared).
fn fused_device(device: &Device) -> bool {
    super::fused::AVAILABLE && device.is_cuda()
}

/// The naive kernel's mask: `mask` itself when it carries a bias, else one built from its kind.
fn naive_mask(mask: &AttnMask, q: &Tensor) -> Result<AttnMask> {
    if mask.bias.is_some() {
        return Ok(mask.clone());
    }
    let (b, _, s, _) = q.dims4()?;
    NaiveAttention.prepare_mask(&mask.kind, b, s, q.device())
}

/// The naive forward on contiguous copies (it matmuls its inputs directly).
fn naive_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<(Tensor, AttnSaved)> {
    let m = naive_mask(mask, q)?;
    NaiveAttention.forward(
        &q.contiguous()?,
        &k.contiguous()?,
        &v.contiguous()?,
        &m,
        scale,
    )
}

#[cfg(feature = "cuda")]
fn doc_ids(mask: &AttnMask, device: &Device) -> Result<Option<Tensor>> {
    match &mask.kind {
        MaskKind::Causal => Ok(None),
        MaskKind::BlockCausal { doc_ids } => Ok(Some(doc_ids.to_device(device)?)),
    }
}

/// `(out, lse)` from the fused kernel, or `None` to fall back.
fn fused_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    use super::fused::applies;
    if !(applies(q) && applies(k) && applies(v)) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        let doc = doc_ids(mask, q.device())?;
        super::fused::lift(titan_kernels::attention::flash_attn_forward(
            q,
            k,
            v,
            doc.as_ref(),
            scale,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (mask, scale);
        Ok(None)
    }
}

/// `(d_q, d_k, d_v)` from the fused kernel, or `None` to fall back.
fn fused_backward(
    saved: &AttnSaved,
    lse: &Tensor,
    d_out: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    use super::fused::applies;
    let all = [&saved.q, &saved.k, &saved.v, &saved.out, d_out];
    if !all.iter().all(|t| applies(t)) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        let doc = doc_ids(mask, saved.q.device())?;
        super::fused::lift(titan_kernels::attention::flash_attn_backward(
            &saved.q,
            &saved.k,
            &saved.v,
            &saved.out,
            lse,
            d_out,
            doc.as_ref(),
            scale,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (lse, mask, scale);
        Ok(None)
    }
}

impl AttentionKernel for FlashAttention {
    fn name(&self) -> &'static str {
        "flash"
    }

    fn prepare_mask(
        &self,
        kind: &MaskKind,
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> Result<AttnMask> {
        if !fused_device(device) {
            return NaiveAttention.prepare_mask(kind, batch, seq, device);
        }
        kind.check_shape(batch, seq)?;
        Ok(AttnMask {
            kind: kind.clone(),
            bias: None,
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
        if let Some((out, lse)) = fused_forward(q, k, v, mask, scale)? {
            let saved = AttnSaved {
                q: q.clone(),
                k: k.clone(),
                v: v.clone(),
                out: out.clone(),
                aux: vec![lse],
            };
            return Ok((out, saved));
        }
        naive_forward(q, k, v, mask, scale)
    }

    fn backward(
        &self,
        saved: &AttnSaved,
        d_out: &Tensor,
        mask: &AttnMask,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        // The flash forward saves the log-sum-exp `(b, hq, s)`; the naive one the
        // probabilities `(b, hq, s, s)`.
        match saved.aux.first() {
            Some(lse) if lse.rank() == 3 => {
                if let Some(grads) = fused_backward(saved, lse, d_out, mask, scale)? {
                    return Ok(grads);
                }
                // Fused kernels turned off since the forward (or refused): recompute the
                // probabilities naively.
                let (_, naive) = naive_forward(&saved.q, &saved.k, &saved.v, mask, scale)?;
                NaiveAttention.backward(&naive, &d_out.contiguous()?, mask, scale)
            }
            _ => NaiveAttention.backward(saved, &d_out.contiguous()?, mask, scale),
        }
    }

    fn accepts_strided(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::testing::{randn, rel_err};

    const B: usize = 2;
    const HQ: usize = 4;
    const HKV: usize = 2;
    const S: usize = 9;
    const D: usize = 8;

    /// `(b, h, s, d)` as a transposed view of a `(b, s, h, d)` tensor.
    fn strided(name: &str, h: usize) -> Result<Tensor> {
        Ok(randn(7, name, (B, S, h, D), 1.0, DType::F32, &Device::Cpu)?.transpose(1, 2)?)
    }

    fn block_causal() -> Result<MaskKind> {
        let ids: Vec<u32> = (0..B * S).map(|i| ((i % S) / 4) as u32).collect();
        Ok(MaskKind::BlockCausal {
            doc_ids: Tensor::from_vec(ids, (B, S), &Device::Cpu)?,
        })
    }

    fn assert_close(a: &Tensor, b: &Tensor) -> Result<()> {
        assert_eq!(a.dims(), b.dims());
        let e = rel_err(a, b)?;
        assert!(e < 1e-6, "rel err {e}");
        Ok(())
    }

    /// On the CPU the flash kernel is the naive one, whatever the input layout.
    #[test]
    fn cpu_matches_naive_on_strided_inputs() -> Result<()> {
        let flash = FlashAttention;
        assert!(flash.accepts_strided());
        assert!(!NaiveAttention.accepts_strided());
        let (q, k, v, d_o) = (
            strided("q", HQ)?,
            strided("k", HKV)?,
            strided("v", HKV)?,
            strided("do", HQ)?,
        );
        let scale = 1.0 / (D as f64).sqrt();
        for kind in [MaskKind::Causal, block_causal()?] {
            let m_flash = flash.prepare_mask(&kind, B, S, &Device::Cpu)?;
            assert!(m_flash.bias.is_some());
            let m_naive = NaiveAttention.prepare_mask(&kind, B, S, &Device::Cpu)?;
            let (y, saved) = flash.forward(&q, &k, &v, &m_flash, scale)?;
            let (qc, kc, vc) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
            let (y_ref, saved_ref) = NaiveAttention.forward(&qc, &kc, &vc, &m_naive, scale)?;
            assert_close(&y, &y_ref)?;
            let g = flash.backward(&saved, &d_o, &m_flash, scale)?;
            let g_ref = NaiveAttention.backward(&saved_ref, &d_o.contiguous()?, &m_naive, scale)?;
            assert_close(&g.0, &g_ref.0)?;
            assert_close(&g.1, &g_ref.1)?;
            assert_close(&g.2, &g_ref.2)?;
        }
        Ok(())
    }

    /// A mask without a bias (as prepared for CUDA) and saved state holding a log-sum-exp
    /// (as the fused forward leaves it) still work where the fused kernel does not apply.
    #[test]
    fn fallbacks_build_bias_and_recompute() -> Result<()> {
        let flash = FlashAttention;
        let (q, k, v, d_o) = (
            strided("q", HQ)?,
            strided("k", HKV)?,
            strided("v", HKV)?,
            strided("do", HQ)?,
        );
        let scale = 0.3;
        let kind = block_causal()?;
        let bare = AttnMask {
            kind: kind.clone(),
            bias: None,
        };
        let m_naive = NaiveAttention.prepare_mask(&kind, B, S, &Device::Cpu)?;
        let (y, _) = flash.forward(&q, &k, &v, &bare, scale)?;
        let (qc, kc, vc) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (y_ref, saved_ref) = NaiveAttention.forward(&qc, &kc, &vc, &m_naive, scale)?;
        assert_close(&y, &y_ref)?;
        let lse_saved = AttnSaved {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            out: y.clone(),
            aux: vec![Tensor::zeros((B, HQ, S), DType::F32, &Device::Cpu)?],
        };
        let g = flash.backward(&lse_saved, &d_o, &bare, scale)?;
        let g_ref = NaiveAttention.backward(&saved_ref, &d_o.contiguous()?, &m_naive, scale)?;
        assert_close(&g.0, &g_ref.0)?;
        assert_close(&g.1, &g_ref.1)?;
        assert_close(&g.2, &g_ref.2)?;
        Ok(())
    }
}
