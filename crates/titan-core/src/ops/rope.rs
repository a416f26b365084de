//! Rotary position embeddings in torchtitan's pairwise (interleaved complex) layout, with
//! Llama 3.1 frequency scaling. Math in f32, as torchtitan's `precompute_freqs_cis` and
//! `apply_rotary_emb`.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Llama 3.1 "llama" RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RopeScaling {
    pub scaling_factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

impl Default for RopeScaling {
    fn default() -> Self {
        Self {
            scaling_factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }
    }
}

/// Per-position `cos` and `sin` tables, `(max_seq_len, head_dim / 2)` in f32.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// The rotation frequencies, f32 arithmetic in the same order as torchtitan.
pub fn rope_frequencies(head_dim: usize, theta: f64, scaling: Option<RopeScaling>) -> Vec<f32> {
    let half = head_dim / 2;
    let theta = theta as f32;
    let mut freqs: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    if let Some(s) = scaling {
        let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        for f in freqs.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            if wavelen > low_freq_wavelen {
                *f /= s.scaling_factor;
            } else if wavelen >= high_freq_wavelen {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                *f = (1.0 - smooth) * *f / s.scaling_factor + smooth * *f;
            }
        }
    }
    freqs
}

impl RopeTables {
    /// Tables for positions `0..max_seq_len`.
    pub fn new(
        head_dim: usize,
        max_seq_len: usize,
        theta: f64,
        scaling: Option<RopeScaling>,
        device: &Device,
    ) -> Result<Self> {
        if head_dim % 2 != 0 {
            crate::bail!("RoPE needs an even head_dim, got {head_dim}");
        }
        let freqs = rope_frequencies(head_dim, theta, scaling);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_seq_len * half);
        let mut sin = Vec::with_capacity(max_seq_len * half);
        for t in 0..max_seq_len {
            for f in &freqs {
                let angle = t as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_seq_len, half), device)?,
            sin: Tensor::from_vec(sin, (max_seq_len, half), device)?,
        })
    }

    pub fn max_seq_len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// `(cos, sin)` shaped `(b, seq, 1, half, 1)` for broadcasting over `(b, seq, heads, half, 2)`:
    /// rows `0..seq` (`b = 1`) or gathered at per-token `positions (batch, seq)`.
    pub fn select(&self, seq_len: usize, positions: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let half = self.cos.dims()[1];
        if seq_len > self.max_seq_len() {
            crate::bail!(
                "sequence length {seq_len} exceeds the RoPE table's max_seq_len {}",
                self.max_seq_len()
            );
        }
        match positions {
            None => {
                let c = self
                    .cos
                    .narrow(0, 0, seq_len)?
                    .reshape((1, seq_len, 1, half, 1))?;
                let s = self
                    .sin
                    .narrow(0, 0, seq_len)?
                    .reshape((1, seq_len, 1, half, 1))?;
                Ok((c, s))
            }
            Some(pos) => {
                let (b, s_len) = pos.dims2()?;
                let flat = pos.flatten_all()?;
                let c = self
                    .cos
                    .index_select(&flat, 0)?
                    .reshape((b, s_len, 1, half, 1))?;
                let s = self
                    .sin
                    .index_select(&flat, 0)?
                    .reshape((b, s_len, 1, half, 1))?;
                Ok((c, s))
            }
        }
    }
}

fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool) -> Result<Tensor> {
    let (b, s, h, d) = x.dims4()?;
    let x32 = x.to_dtype(DType::F32)?.reshape((b, s, h, d / 2, 2))?;
    let x0 = x32.narrow(4, 0, 1)?;
    let x1 = x32.narrow(4, 1, 1)?;
    let (y0, y1) = if inverse {
        // The transpose of the rotation: rotate by -angle.
        (
            (x0.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?,
            (x1.broadcast_mul(cos)? - x0.broadcast_mul(sin)?)?,
        )
    } else {
        (
            (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?,
            (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?,
        )
    };
    Ok(Tensor::cat(&[y0, y1], 4)?
        .reshape((b, s, h, d))?
        .to_dtype(x.dtype())?)
}

/// Rotate `x (batch, seq, heads, head_dim)` by the selected tables.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(y) = super::fused::rope::apply_rope(x, cos, sin, false)? {
        return Ok(y);
    }
    rotate(x, cos, sin, false)
}

/// Backward of [`apply_rope`]: the rotation is orthogonal, so the gradient rotates back.
pub fn apply_rope_backward(d_y: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(dx) = super::fused::rope::apply_rope(d_y, cos, sin, true)? {
        return Ok(dx);
    }
    rotate(d_y, cos, sin, true)
}
