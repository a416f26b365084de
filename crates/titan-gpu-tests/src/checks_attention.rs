//! Checks of the fused flash attention (titan-core [`FlashAttention`] over titan-kernels
//! `attention.cu`) against the f64 oracle and against [`NaiveAttention`] on the same bf16
//! inputs, and a speed probe.
//!
//! Cases: head_dim 64 and 128; causal, packed block-causal and scattered (non-monotonic)
//! document ids; GQA 4 q heads per kv head, 8/2 and MHA; sequence lengths 1, 17, 64, 129, 300
//! (none a multiple of every tile); batch 1 and 2; inputs contiguous `(b, h, s, hd)` or
//! `(b, s, h, hd).transpose(1, 2)` views, as the model passes them.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use titan_core::ops::{AttentionKernel, AttnMask, FlashAttention, MaskKind, NaiveAttention};
use titan_core::testing::oracle::attention_with_grads;
use titan_core::testing::randn;

use crate::{rel_err_or_inf, Check, Result};

const CPU: Device = Device::Cpu;
const TOL: f64 = 2e-2;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Docs {
    /// Plain causal.
    None,
    /// Documents packed in order (nondecreasing ids, as the data loader makes them).
    Packed,
    /// Ids that go up and down: tile skipping must not assume order.
    Scattered,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    s: usize,
    hd: usize,
    docs: Docs,
    strided: bool,
}

impl Case {
    fn label(&self) -> String {
        let mask = match self.docs {
            Docs::None => "causal",
            Docs::Packed => "block-causal",
            Docs::Scattered => "block-causal scattered",
        };
        let layout = if self.strided { "strided" } else { "contig" };
        format!(
            "flash hd{} {mask} {}q/{}kv s={} b={} {layout}",
            self.hd, self.hq, self.hkv, self.s, self.b
        )
    }

    fn doc_ids(&self) -> Option<Vec<u32>> {
        let s = self.s;
        match self.docs {
            Docs::None => None,
            // Documents of 23 tokens, shifted per row, so boundaries fall inside tiles.
            Docs::Packed => Some(
                (0..self.b * s)
                    .map(|i| ((i % s + 7 * (i / s)) / 23) as u32)
                    .collect(),
            ),
            Docs::Scattered => Some(
                (0..self.b * s)
                    .map(|i| ((i % s / 5 + i / s) % 3) as u32)
                    .collect(),
            ),
        }
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut i = 0usize;
    for hd in [64, 128] {
        for docs in [Docs::None, Docs::Packed] {
            for (hq, hkv) in [(4, 1), (8, 2), (2, 2)] {
                for s in [1, 17, 64, 129, 300] {
                    // Batch and layout alternate so each (hd, mask, seq) sees both of each.
                    out.push(Case {
                        b: 1 + i % 2,
                        hq,
                        hkv,
                        s,
                        hd,
                        docs,
                        strided: (i / 2) % 2 == 0,
                    });
                    i += 1;
                }
            }
        }
        for strided in [false, true] {
            out.push(Case {
                b: 2,
                hq: 4,
                hkv: 2,
                s: 300,
                hd,
                docs: Docs::Scattered,
                strided,
            });
        }
    }
    out
}

/// A `(b, h, s, hd)` f64 tensor already rounded to bf16 (the oracle sees what the kernel sees).
fn input(seed: u64, name: &str, b: usize, h: usize, s: usize, hd: usize) -> Result<Tensor> {
    Ok(randn(seed, name, (b, h, s, hd), 1.0, DType::F64, &CPU)?
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F64)?)
}

/// `x (b, h, s, hd)` as bf16 on `device`, contiguous or as a transposed `(b, s, h, hd)` view.
fn put(x: &Tensor, device: &Device, strided: bool) -> Result<Tensor> {
    let x = x.to_dtype(DType::BF16)?;
    Ok(if strided {
        x.transpose(1, 2)?
            .contiguous()?
            .to_device(device)?
            .transpose(1, 2)?
    } else {
        x.to_device(device)?
    })
}

/// The largest of `(name, err)` pairs, as `(err, name)`.
fn worst(errs: &[(&'static str, f64)]) -> (f64, &'static str) {
    errs.iter().fold((0.0, "-"), |acc, &(n, e)| {
        if e.is_nan() || e > acc.0 {
            (if e.is_nan() { f64::INFINITY } else { e }, n)
        } else {
            acc
        }
    })
}

fn run_case(device: &Device, seed: u64, idx: usize, c: Case) -> Result<Vec<Check>> {
    let tag = format!("attn{idx}");
    let q = input(seed, &format!("{tag}.q"), c.b, c.hq, c.s, c.hd)?;
    let k = input(seed, &format!("{tag}.k"), c.b, c.hkv, c.s, c.hd)?;
    let v = input(seed, &format!("{tag}.v"), c.b, c.hkv, c.s, c.hd)?;
    let r = input(seed, &format!("{tag}.r"), c.b, c.hq, c.s, c.hd)?;
    let scale = 1.0 / (c.hd as f64).sqrt();
    let ids = c.doc_ids();

    // f64 oracle with candle autograd.
    let refs = attention_with_grads(&q, &k, &v, &r, ids.as_deref(), scale)?;

    let kind = match &ids {
        None => MaskKind::Causal,
        Some(ids) => MaskKind::BlockCausal {
            doc_ids: Tensor::from_slice(ids, (c.b, c.s), device)?,
        },
    };
    let (qd, kd, vd, rd) = (
        put(&q, device, c.strided)?,
        put(&k, device, c.strided)?,
        put(&v, device, c.strided)?,
        put(&r, device, c.strided)?,
    );
    let flash = FlashAttention;
    let mask = flash.prepare_mask(&kind, c.b, c.s, device)?;
    let (y, saved) = flash.forward(&qd, &kd, &vd, &mask, scale)?;
    let fused = saved.aux.first().is_some_and(|t| t.rank() == 3);
    let (dq, dk, dv) = flash.backward(&saved, &rd, &mask, scale)?;
    let ours = [y, dq, dk, dv];

    // NaiveAttention on the same bf16 inputs (contiguous, with its bias).
    let naive_mask: AttnMask = NaiveAttention.prepare_mask(&kind, c.b, c.s, device)?;
    let (qc, kc, vc) = (qd.contiguous()?, kd.contiguous()?, vd.contiguous()?);
    let (ny, nsaved) = NaiveAttention.forward(&qc, &kc, &vc, &naive_mask, scale)?;
    let (ndq, ndk, ndv) =
        NaiveAttention.backward(&nsaved, &rd.contiguous()?, &naive_mask, scale)?;
    let naive = [ny, ndq, ndk, ndv];

    const NAMES: [&str; 4] = ["out", "dq", "dk", "dv"];
    let mut vs_oracle = Vec::new();
    let mut vs_naive = Vec::new();
    for i in 0..4 {
        let o = ours[i].to_device(&CPU)?;
        let e = if o.dims() == refs[i].dims() && c.s == 1 && (i == 1 || i == 2) {
            // One key: the softmax is constant, so dq and dk are exactly 0 and a relative
            // error is meaningless; measure them against the size of dv instead.
            let diff = (o.to_dtype(DType::F64)? - refs[i].to_dtype(DType::F64)?)?;
            let num = diff.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
            let den = refs[3]
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?
                .sqrt();
            num / den.max(f64::MIN_POSITIVE)
        } else {
            rel_err_or_inf(&o, &refs[i])?
        };
        vs_oracle.push((NAMES[i], e));
        vs_naive.push((NAMES[i], rel_err_or_inf(&o, &naive[i])?));
    }
    let label = c.label();
    let (e_oracle, w_oracle) = worst(&vs_oracle);
    let (e_naive, w_naive) = worst(&vs_naive);
    let mut checks = vec![
        Check {
            what: format!("{label} vs f64 (worst {w_oracle})"),
            err: e_oracle,
            tol: TOL,
        },
        Check {
            what: format!("{label} vs naive bf16 (worst {w_naive})"),
            err: e_naive,
            tol: TOL,
        },
    ];
    if !fused && device.is_cuda() {
        checks.push(Check {
            what: format!("{label}: the fused kernel did not run (fell back to naive)"),
            err: f64::INFINITY,
            tol: TOL,
        });
    }
    Ok(checks)
}

/// Every case above: per case, the worst relative error of `out, dq, dk, dv` against the f64
/// oracle and against the naive kernel, plus a failing row where the fused kernel did not run.
///
/// Head dim 64 runs twice where the build has both implementations: on the warpgroup-MMA
/// kernels (the default) and on the mma.sync ones (labels end in "(mma.sync)").
pub fn checks(device: &Device, seed: u64) -> Result<Vec<Check>> {
    use titan_core::ops::fused;
    let mut out = Vec::new();
    let default = fused::hopper_attention();
    for (i, c) in cases().into_iter().enumerate() {
        out.extend(run_case(device, seed, i, c)?);
    }
    if default && fused::hopper_attention_available() {
        fused::set_hopper_attention(false);
        let r = (|| -> Result<Vec<Check>> {
            let mut more = Vec::new();
            for (i, c) in cases().into_iter().enumerate().filter(|(_, c)| c.hd == 64) {
                for mut check in run_case(device, seed, i, c)? {
                    check.what.push_str(" (mma.sync)");
                    more.push(check);
                }
            }
            Ok(more)
        })();
        fused::set_hopper_attention(true);
        out.extend(r?);
    }
    Ok(out)
}

/// Mean milliseconds of one flash forward and one backward for causal attention on
/// `(b, s, h, hd).transpose(1, 2)` inputs (as the model passes them), timed with device
/// synchronization and `Instant` over `iters` calls after one warm-up. Causal FLOPs:
/// forward `2 * b * hq * s * s * hd` (two matmuls over half the square), backward 2.5x.
pub fn bench(
    device: &Device,
    b: usize,
    s: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
    iters: usize,
) -> Result<(f64, f64)> {
    let view = |h: usize| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1f32, (b, s, h, hd), device)?
            .to_dtype(DType::BF16)?
            .transpose(1, 2)?)
    };
    let (q, k, v, d_o) = (view(hq)?, view(hkv)?, view(hkv)?, view(hq)?);
    let scale = 1.0 / (hd as f64).sqrt();
    let flash = FlashAttention;
    let mask = flash.prepare_mask(&MaskKind::Causal, b, s, device)?;
    let (_, saved) = flash.forward(&q, &k, &v, &mask, scale)?;
    if saved.aux.first().is_none_or(|t| t.rank() != 3) {
        return Err(titan_core::Error::Msg(
            "flash attention bench: the fused kernel did not run".into(),
        )
        .into());
    }
    flash.backward(&saved, &d_o, &mask, scale)?;
    let iters = iters.max(1);
    device.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        flash.forward(&q, &k, &v, &mask, scale)?;
    }
    device.synchronize()?;
    let fwd_ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
    let t = Instant::now();
    for _ in 0..iters {
        flash.backward(&saved, &d_o, &mask, scale)?;
    }
    device.synchronize()?;
    let bwd_ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
    Ok((fwd_ms, bwd_ms))
}
