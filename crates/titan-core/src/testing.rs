//! Helpers for numerical tests of modules: deterministic random tensors and error measures.
//! Public so that model crates test their modules the same way.

use candle_core::{DType, Device, Shape, Tensor};

use crate::rng::CounterRng;
use crate::Result;

/// A deterministic standard-normal tensor times `std`, in `dtype`.
pub fn randn(
    seed: u64,
    name: &str,
    shape: impl Into<Shape>,
    std: f64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let rng = CounterRng::for_param(seed, name);
    let v: Vec<f64> = (0..shape.elem_count() as u64)
        .map(|i| std * rng.normal(i, 0))
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
}

/// Deterministic integers in `0..high` as u32.
pub fn randint(seed: u64, name: &str, n: usize, high: u32, device: &Device) -> Result<Tensor> {
    let rng = CounterRng::for_param(seed, name);
    let v: Vec<u32> = (0..n as u64)
        .map(|i| ((rng.uniform(i, 0) * high as f64) as u32).min(high - 1))
        .collect();
    Ok(Tensor::from_vec(v, n, device)?)
}

/// `||a - b||_2 / ||b||_2`, computed in f64 on the host.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if a.len() != b.len() {
        crate::bail!("rel_err: {} elements vs {}", a.len(), b.len());
    }
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    Ok(if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    })
}

/// Whether two tensors hold bitwise identical values (same dtype and shape).
pub fn bitwise_eq(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return Ok(false);
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()))
}

/// f64 reference compositions of the engine's fused math, differentiable by candle's autograd.
/// They are written differently from the engine's ops on purpose (complex-product RoPE, heads
/// picked by index, masks as 0/1 products) so that agreement means something.
pub mod oracle {
    use candle_core::{Device, Tensor, Var, D};

    use crate::Result;

    /// RoPE as the complex product torchtitan writes: pairs (x0, x1) times (cos + i sin).
    pub fn rope_oracle(x: &Tensor, freqs: &[f32], positions: &[u32]) -> Result<Tensor> {
        let (b, s, h, d) = x.dims4()?;
        let half = d / 2;
        let mut cos = vec![0f64; b * s * half];
        let mut sin = vec![0f64; b * s * half];
        for bi in 0..b {
            for si in 0..s {
                for (j, f) in freqs.iter().enumerate() {
                    let angle = (positions[bi * s + si] as f32 * f) as f64;
                    cos[(bi * s + si) * half + j] = angle.cos();
                    sin[(bi * s + si) * half + j] = angle.sin();
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, s, 1, half), &Device::Cpu)?;
        let sin = Tensor::from_vec(sin, (b, s, 1, half), &Device::Cpu)?;
        let pairs = x.reshape((b, s, h, half, 2))?;
        let re = pairs.narrow(4, 0, 1)?.squeeze(4)?;
        let im = pairs.narrow(4, 1, 1)?.squeeze(4)?;
        let out_re = (re.broadcast_mul(&cos)? - im.broadcast_mul(&sin)?)?;
        let out_im = (re.broadcast_mul(&sin)? + im.broadcast_mul(&cos)?)?;
        Ok(Tensor::stack(&[out_re, out_im], 4)?.reshape((b, s, h, d))?)
    }

    /// Attention composed independently: kv heads picked by `index_select`, mask applied as an
    /// explicit 0/1 product after exp (no -inf bias), softmax from exp/sum.
    pub fn attention_oracle(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        allowed: &Tensor,
        scale: f64,
    ) -> Result<Tensor> {
        let (_, hq, _, _) = q.dims4()?;
        let hkv = k.dim(1)?;
        let idx: Vec<u32> = (0..hq).map(|h| (h / (hq / hkv)) as u32).collect();
        let idx = Tensor::from_vec(idx, hq, &Device::Cpu)?;
        let k = k.index_select(&idx, 1)?;
        let v = v.index_select(&idx, 1)?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let e = scores.exp()?.broadcast_mul(allowed)?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        Ok(p.matmul(&v)?)
    }

    /// [`attention_oracle`]'s output for `(b, hq, s, d)` f64 `q` and `(b, hkv, s, d)` `k, v`,
    /// with its gradients for the output gradient `d_out`, from candle's autograd:
    /// `[out, d_q, d_k, d_v]`. Causal, and within documents when `doc_ids` is given.
    pub fn attention_with_grads(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_out: &Tensor,
        doc_ids: Option<&[u32]>,
        scale: f64,
    ) -> Result<[Tensor; 4]> {
        let (b, _, s, _) = q.dims4()?;
        let allowed = allowed_mask(b, s, doc_ids)?;
        let (qv, kv, vv) = (
            Var::from_tensor(q)?,
            Var::from_tensor(k)?,
            Var::from_tensor(v)?,
        );
        let out = attention_oracle(
            qv.as_tensor(),
            kv.as_tensor(),
            vv.as_tensor(),
            &allowed,
            scale,
        )?;
        let grads = (&out * d_out)?.sum_all()?.backward()?;
        let grad = |var: &Var| -> Result<Tensor> {
            grads.get(var.as_tensor()).cloned().ok_or_else(|| {
                crate::Error::Msg("the attention oracle produced no gradient".into())
            })
        };
        Ok([out.clone(), grad(&qv)?, grad(&kv)?, grad(&vv)?])
    }

    /// The 0/1 attention mask `(batch, 1, seq, seq)` that [`attention_oracle`] multiplies in:
    /// causal, and within one document when `doc_ids` (row-major `(batch, seq)`) is given.
    pub fn allowed_mask(batch: usize, seq: usize, doc_ids: Option<&[u32]>) -> Result<Tensor> {
        let mut allowed = vec![0f64; batch * seq * seq];
        for b in 0..batch {
            for i in 0..seq {
                for j in 0..=i {
                    let same = doc_ids.is_none_or(|ids| ids[b * seq + i] == ids[b * seq + j]);
                    allowed[(b * seq + i) * seq + j] = if same { 1.0 } else { 0.0 };
                }
            }
        }
        Ok(Tensor::from_vec(
            allowed,
            (batch, 1, seq, seq),
            &Device::Cpu,
        )?)
    }
}
