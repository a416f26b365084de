//! Every engine op, and a tiny Llama forward + backward, on a device (CUDA in bf16 and f32)
//! against f64 references on the CPU; prints a table and exits non-zero on any failure.
//!
//! `gpu_check [--device cuda|cpu] [--seed N]`. Inputs are drawn fresh from the seed (the
//! time by default, printed so a failure can be replayed). Tolerances on `||ours - ref|| /
//! ||ref||`: 1e-5 for f32, 2e-2 for bf16 compute.

use std::collections::HashMap;
use std::process::ExitCode;

use candle_core::{DType, Device, Tensor, Var, D};
use titan_core::ops::*;
use titan_core::testing::oracle::{attention_with_grads, rope_oracle};
use titan_core::testing::{randint, randn};
use titan_core::{ActivationCheckpoint, Executor, Init, MicrobatchInfo, Module, NoHooks, Param};
use titan_gpu_tests::{open, Result};
use titan_models::llama3::{AttnMaskType, Llama3, LlamaArgs};

const CPU: Device = Device::Cpu;

struct Row {
    what: String,
    /// "f32", "bf16 plain" (composite candle ops) or "bf16 fused" (titan-kernels).
    path: String,
    err: f64,
    tol: f64,
}

/// One group of checks.
type CheckFn = fn(&mut Checker) -> Result<()>;
/// A fused-kernel suite from titan_gpu_tests.
type SuiteFn = fn(&Device, u64) -> Result<Vec<titan_gpu_tests::Check>>;

struct Checker {
    device: Device,
    dtype: DType,
    seed: u64,
    rows: Vec<Row>,
}

impl Checker {
    fn path(&self) -> String {
        match (self.dtype, titan_core::ops::fused::enabled()) {
            (DType::F32, _) => "f32".into(),
            (_, true) => "bf16 fused".into(),
            (_, false) => "bf16 plain".into(),
        }
    }

    fn tol(&self) -> f64 {
        if self.dtype == DType::F32 {
            1e-5
        } else {
            2e-2
        }
    }

    fn check(&mut self, what: &str, ours: &Tensor, reference: &Tensor) -> Result<()> {
        let err = titan_gpu_tests::rel_err_or_inf(ours, reference)?;
        self.rows.push(Row {
            what: what.to_string(),
            path: self.path(),
            err,
            tol: self.tol(),
        });
        Ok(())
    }

    /// A f64 CPU tensor in the compute dtype on the device.
    fn put(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// A parameter on the device whose f32 master is `value`.
    fn param(&self, name: &str, value: &Tensor) -> Result<Param> {
        let master = value.to_dtype(DType::F32)?.to_device(&self.device)?;
        let mut p = Param::from_tensor(name, master, Init::Zeros)?;
        p.refresh_compute(self.dtype)?;
        Ok(p)
    }

    fn randn(&self, name: &str, shape: impl Into<candle_core::Shape>, std: f64) -> Result<Tensor> {
        Ok(randn(self.seed, name, shape, std, DType::F64, &CPU)?)
    }

    fn grad<'a>(grads: &'a candle_core::backprop::GradStore, v: &Var) -> Result<&'a Tensor> {
        grads.get(v.as_tensor()).ok_or_else(|| {
            titan_core::Error::Msg("the f64 oracle produced no gradient".into()).into()
        })
    }

    fn linear(&mut self) -> Result<()> {
        let x = self.randn("lin.x", (2, 64, 96), 1.0)?;
        let w = self.randn("lin.w", (80, 96), 0.1)?;
        let r = self.randn("lin.r", (2, 64, 80), 1.0)?;
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let y_ref = xv.as_tensor().broadcast_matmul(&wv.as_tensor().t()?)?;
        let grads = (&y_ref * &r)?.sum_all()?.backward()?;
        let mut lin = Linear {
            weight: self.param("w", &w)?,
        };
        let xd = self.put(&x)?;
        self.check("linear forward", &lin.forward(&xd)?, &y_ref)?;
        let dx = lin.backward(&xd, &self.put(&r)?)?;
        self.check("linear dx", &dx, Self::grad(&grads, &xv)?)?;
        let dw = lin.weight.grad().cloned();
        self.check("linear dw", &dw.unwrap_or(dx), Self::grad(&grads, &wv)?)?;
        // backward_acc: d_x added into a gradient the caller holds (in place when fused),
        // dW accumulated a second time.
        let acc = self.randn("lin.acc", (2, 64, 96), 1.0)?;
        let summed = lin.backward_acc(&xd, &self.put(&r)?, self.put(&acc)?)?;
        self.check(
            "linear backward_acc (acc + dx)",
            &summed,
            &(Self::grad(&grads, &xv)? + &acc)?,
        )?;
        let dw2 = lin.weight.grad().cloned().unwrap_or(summed);
        self.check(
            "linear dw accumulated twice",
            &dw2,
            &(Self::grad(&grads, &wv)? * 2.0)?,
        )
    }

    fn embedding(&mut self) -> Result<()> {
        let (vocab, dim) = (1000, 64);
        let w = self.randn("emb.w", (vocab, dim), 1.0)?;
        // 256 ids from a range of 50: many repeats, so the backward must accumulate.
        let ids = randint(self.seed, "emb.ids", 256, 50, &CPU)?.reshape((2, 128))?;
        let r = self.randn("emb.r", (2, 128, dim), 1.0)?;
        let wv = Var::from_tensor(&w)?;
        let y_ref = wv
            .as_tensor()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((2, 128, dim))?;
        let grads = (&y_ref * &r)?.sum_all()?.backward()?;
        let mut emb = Embedding {
            weight: self.param("w", &w)?,
        };
        let ids_d = ids.to_device(&self.device)?;
        self.check("embedding forward", &emb.forward(&ids_d)?, &y_ref)?;
        emb.backward(&ids_d, &self.put(&r)?)?;
        let dw = emb.weight.grad().cloned().unwrap_or(w.zeros_like()?);
        self.check("embedding dw", &dw, Self::grad(&grads, &wv)?)
    }

    fn rmsnorm(&mut self) -> Result<()> {
        let x = self.randn("rms.x", (2, 64, 256), 2.0)?;
        let w = (self.randn("rms.w", 256, 0.1)? + 1.0)?;
        let r = self.randn("rms.r", (2, 64, 256), 1.0)?;
        let eps = 1e-5;
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let xt = xv.as_tensor();
        let denom = (xt.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
        let y_ref = xt.broadcast_div(&denom)?.broadcast_mul(wv.as_tensor())?;
        let grads = (&y_ref * &r)?.sum_all()?.backward()?;
        let mut norm = RmsNorm {
            weight: self.param("w", &w)?,
            eps,
        };
        let xd = self.put(&x)?;
        let (y, rstd) = norm.forward(&xd)?;
        self.check("rmsnorm forward", &y, &y_ref)?;
        let dx = norm.backward(&xd, &rstd, &self.put(&r)?)?;
        self.check("rmsnorm dx", &dx, Self::grad(&grads, &xv)?)?;
        let dw = norm.weight.grad().cloned().unwrap_or(dx);
        self.check("rmsnorm dw", &dw, Self::grad(&grads, &wv)?)
    }

    fn rope(&mut self) -> Result<()> {
        let (b, s, h, d) = (2, 64, 4, 64);
        let x = self.randn("rope.x", (b, s, h, d), 1.0)?;
        let r = self.randn("rope.r", (b, s, h, d), 1.0)?;
        let tables = RopeTables::new(d, 128, 500000.0, Some(RopeScaling::default()), &self.device)?;
        let freqs = rope::rope_frequencies(d, 500000.0, Some(RopeScaling::default()));
        let plain: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
        // Positions restarting in each document (as with block-causal packing).
        let docs: Vec<u32> = (0..b * s).map(|i| ((i % s) % 23) as u32).collect();
        for (label, positions, tensor) in [
            ("rope", &plain, None),
            (
                "rope (doc positions)",
                &docs,
                Some(Tensor::from_slice(&docs, (b, s), &self.device)?),
            ),
        ] {
            let xv = Var::from_tensor(&x)?;
            let y_ref = rope_oracle(xv.as_tensor(), &freqs, positions)?;
            let grads = (&y_ref * &r)?.sum_all()?.backward()?;
            let (cos, sin) = tables.select(s, tensor.as_ref())?;
            let y = apply_rope(&self.put(&x)?, &cos, &sin)?;
            self.check(&format!("{label} forward"), &y, &y_ref)?;
            let dx = apply_rope_backward(&self.put(&r)?, &cos, &sin)?;
            self.check(&format!("{label} dx"), &dx, Self::grad(&grads, &xv)?)?;
        }
        Ok(())
    }

    fn swiglu(&mut self) -> Result<()> {
        let a = self.randn("sw.a", (128, 96), 2.0)?;
        let b = self.randn("sw.b", (128, 96), 1.0)?;
        let r = self.randn("sw.r", (128, 96), 1.0)?;
        let (av, bv) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        let y_ref = (av.as_tensor().silu()? * bv.as_tensor())?;
        let grads = (&y_ref * &r)?.sum_all()?.backward()?;
        let (ad, bd) = (self.put(&a)?, self.put(&b)?);
        self.check("swiglu forward", &swiglu_forward(&ad, &bd)?, &y_ref)?;
        let (da, db) = swiglu_backward(&ad, &bd, &self.put(&r)?)?;
        self.check("swiglu da", &da, Self::grad(&grads, &av)?)?;
        self.check("swiglu db", &db, Self::grad(&grads, &bv)?)
    }

    fn cross_entropy(&mut self) -> Result<()> {
        let (n, v) = (96, 1000);
        let logits = self.randn("ce.l", (n, v), 3.0)?;
        let mut labels_v: Vec<i64> = randint(self.seed, "ce.labels", n, v as u32, &CPU)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(i64::from)
            .collect();
        for i in (0..n).step_by(7) {
            labels_v[i] = IGNORE_INDEX;
        }
        let valid = labels_v.iter().filter(|&&l| l >= 0).count();
        let scale = 1.0 / valid as f64;
        let lv = Var::from_tensor(&logits)?;
        let lse = lv.as_tensor().exp()?.sum_keepdim(1)?.log()?;
        let logp = lv.as_tensor().broadcast_sub(&lse)?;
        let mut onehot = vec![0f64; n * v];
        for (i, &l) in labels_v.iter().enumerate() {
            if l >= 0 {
                onehot[i * v + l as usize] = 1.0;
            }
        }
        let onehot = Tensor::from_vec(onehot, (n, v), &CPU)?;
        let loss_ref = ((logp * onehot)?.sum_all()? * -scale)?;
        let grads = loss_ref.backward()?;
        let labels = Tensor::from_slice(&labels_v, n, &self.device)?;
        let (loss, saved) = cross_entropy_forward(&self.put(&logits)?, &labels, scale)?;
        self.check("cross-entropy loss", &loss, &loss_ref)?;
        self.check(
            "cross-entropy dlogits",
            &cross_entropy_backward(&saved)?,
            Self::grad(&grads, &lv)?,
        )
    }

    fn attention(&mut self, block_causal: bool) -> Result<()> {
        let (b, hq, hkv, s, d) = (2, 8, 2, 64, 32);
        let q = self.randn("at.q", (b, hq, s, d), 1.0)?;
        let k = self.randn("at.k", (b, hkv, s, d), 1.0)?;
        let v = self.randn("at.v", (b, hkv, s, d), 1.0)?;
        let r = self.randn("at.r", (b, hq, s, d), 1.0)?;
        let scale = 1.0 / (d as f64).sqrt();
        // Documents of lengths 5, 17, 30, ... (row 0) and 11, 40, ... (row 1).
        let doc_ids: Vec<u32> = (0..b * s)
            .map(|i| {
                let (row, t) = (i / s, i % s);
                let cuts: &[usize] = if row == 0 { &[5, 22, 52] } else { &[11, 51] };
                cuts.iter().filter(|&&c| t >= c).count() as u32
            })
            .collect();
        let [y_ref, dq_ref, dk_ref, dv_ref] = attention_with_grads(
            &q,
            &k,
            &v,
            &r,
            block_causal.then_some(doc_ids.as_slice()),
            scale,
        )?;
        let kind = if block_causal {
            MaskKind::BlockCausal {
                doc_ids: Tensor::from_slice(&doc_ids, (b, s), &self.device)?,
            }
        } else {
            MaskKind::Causal
        };
        let label = if block_causal {
            "attention block-causal GQA"
        } else {
            "attention causal GQA"
        };
        let kernel = NaiveAttention;
        let mask = kernel.prepare_mask(&kind, b, s, &self.device)?;
        let (y, saved) =
            kernel.forward(&self.put(&q)?, &self.put(&k)?, &self.put(&v)?, &mask, scale)?;
        self.check(&format!("{label} forward"), &y, &y_ref)?;
        let (dq, dk, dv) = kernel.backward(&saved, &self.put(&r)?, &mask, scale)?;
        self.check(&format!("{label} dq"), &dq, &dq_ref)?;
        self.check(&format!("{label} dk"), &dk, &dk_ref)?;
        self.check(&format!("{label} dv"), &dv, &dv_ref)
    }

    /// A 2-layer Llama (block-causal, GQA) on the device against the same model on the CPU
    /// computing in f64 (parameters, activations and grads; norms, RoPE and softmax in f32).
    fn tiny_llama(&mut self) -> Result<()> {
        // head_dim 64, so the bf16 fused pass runs the flash kernel inside a whole model;
        // seq 40 is not a multiple of its tiles.
        let (b, s) = (2, 40);
        let args = LlamaArgs {
            dim: 256,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: Some(2),
            vocab_size: 256,
            multiple_of: 32,
            attn_mask_type: AttnMaskType::BlockCausal,
            eos_id: 5,
            ..LlamaArgs::flavor("debugmodel")?
        };
        let tokens: Vec<u32> = randint(self.seed, "llama.tokens", b * s, 256, &CPU)?
            .to_vec1::<u32>()?
            .into_iter()
            .enumerate()
            .map(|(i, t)| if i % 13 == 12 { 5 } else { t })
            .collect();
        let mut labels: Vec<i64> = tokens.iter().skip(1).map(|&t| t as i64).collect();
        labels.push(IGNORE_INDEX);
        labels[7] = IGNORE_INDEX;
        let valid = labels.iter().filter(|&&l| l >= 0).count();
        let run =
            |device: &Device, dtype: DType| -> Result<(f64, Tensor, HashMap<String, Tensor>)> {
                let mut m = Llama3::new(&args)?;
                m.set_device(device, dtype, s)?;
                m.init_weights(self.seed)?;
                let batch = m.make_batch(&tokens, b, s, None)?;
                let logits = m.logits(&batch)?.to_device(&CPU)?.to_dtype(DType::F64)?;
                let target = m.make_labels(&labels)?;
                let report = Executor::new(ActivationCheckpoint::None).forward_backward(
                    &mut m,
                    &batch,
                    &target,
                    1.0 / valid as f64,
                    &mut NoHooks,
                    MicrobatchInfo::single(),
                )?;
                let loss = report.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let mut grads = HashMap::new();
                for p in m.params() {
                    if let Some(g) = p.grad() {
                        grads.insert(p.name().to_string(), g.to_device(&CPU)?);
                    }
                }
                Ok((loss, logits, grads))
            };
        let (ref_loss, ref_logits, ref_grads) = run(&CPU, DType::F64)?;
        let (loss, logits, grads) = run(&self.device, self.dtype)?;
        self.check(
            "tiny llama loss",
            &Tensor::new(loss, &CPU)?,
            &Tensor::new(ref_loss, &CPU)?,
        )?;
        self.check("tiny llama logits", &logits, &ref_logits)?;
        let mut names: Vec<&String> = ref_grads.keys().collect();
        names.sort();
        let mut worst: Option<(String, f64)> = None;
        for name in names {
            let ours = grads
                .get(name)
                .cloned()
                .unwrap_or(ref_grads[name].zeros_like()?);
            let before = self.rows.len();
            self.check(&format!("tiny llama d[{name}]"), &ours, &ref_grads[name])?;
            let e = self.rows[before].err;
            if worst.as_ref().is_none_or(|(_, w)| e > *w) {
                worst = Some((name.clone(), e));
            }
        }
        if let Some((name, e)) = worst {
            tracing::info!("tiny llama: worst gradient {name} at {e:.2e}");
        }
        Ok(())
    }
}

/// The flash kernel's speed at the anchor shapes (`TITAN_ATTN_BENCH=1`), causal FLOPs as
/// torchtitan counts them: forward `4 b hq s^2 hd / 2`, backward 2.5x that.
fn attention_speed(device: &Device) -> Result<()> {
    titan_core::ops::fused::set_enabled(true);
    for (b, s, hq, hkv, hd) in [
        (4, 2048, 32, 8, 64),
        (1, 8192, 32, 8, 128),
        (2, 4096, 16, 4, 128),
    ] {
        let (fwd_ms, bwd_ms) =
            titan_gpu_tests::checks_attention::bench(device, b, s, hq, hkv, hd, 20)?;
        let flops = 4.0 * (b * hq * s * s * hd) as f64 / 2.0;
        println!(
            "flash attention b={b} s={s} hq={hq} hkv={hkv} hd={hd}: forward {fwd_ms:.3} ms ({:.0} TFLOP/s), backward {bwd_ms:.3} ms ({:.0} TFLOP/s)",
            flops / fwd_ms * 1e-9,
            2.5 * flops / bwd_ms * 1e-9
        );
    }
    Ok(())
}

fn parse_args() -> Result<(String, u64)> {
    let mut device = "cuda".to_string();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next().ok_or_else(|| titan_gpu_tests::Error::Arg {
                arg: a.clone(),
                why: "needs a value".into(),
            })
        };
        match a.as_str() {
            "--device" => device = value()?,
            "--seed" => {
                let v = value()?;
                seed = v.parse().map_err(|_| titan_gpu_tests::Error::Arg {
                    arg: "--seed".into(),
                    why: format!("`{v}` is not an integer"),
                })?
            }
            other => {
                return Err(titan_gpu_tests::Error::Arg {
                    arg: other.into(),
                    why: "unknown; use --device cuda|cpu and --seed N".into(),
                })
            }
        }
    }
    Ok((device, seed))
}

fn run() -> Result<bool> {
    let (spec, seed) = parse_args()?;
    let opened = open(&spec)?;
    println!("gpu_check: device {} ({spec}), seed {seed}", opened.name);
    let mut rows = Vec::new();
    // f32 (composite ops), bf16 through the composite ops, bf16 through the fused kernels:
    // the same inputs and references, so the last two rows of each check compare the paths.
    for (dtype, fused) in [
        (DType::F32, false),
        (DType::BF16, false),
        (DType::BF16, true),
    ] {
        titan_core::ops::fused::set_enabled(fused);
        let mut c = Checker {
            device: opened.device.clone(),
            dtype,
            seed,
            rows: Vec::new(),
        };
        let steps: [(&str, CheckFn); 9] = [
            ("linear", Checker::linear),
            ("embedding", Checker::embedding),
            ("rmsnorm", Checker::rmsnorm),
            ("rope", Checker::rope),
            ("swiglu", Checker::swiglu),
            ("cross-entropy", Checker::cross_entropy),
            ("attention causal", |c| c.attention(false)),
            ("attention block-causal", |c| c.attention(true)),
            ("tiny llama", Checker::tiny_llama),
        ];
        for (name, step) in steps {
            if let Err(e) = step(&mut c) {
                c.rows.push(Row {
                    what: format!("{name}: ERROR {e}"),
                    path: c.path(),
                    err: f64::NAN,
                    tol: c.tol(),
                });
            }
        }
        rows.extend(c.rows);
    }
    // The fused kernels' own checks (odd sizes, every layout and mask they take).
    titan_core::ops::fused::set_enabled(true);
    let suites: [(&str, SuiteFn); 4] = [
        ("norm residual", titan_gpu_tests::checks_norm::checks),
        ("flash attention", titan_gpu_tests::checks_attention::checks),
        ("elementwise", titan_gpu_tests::checks_elementwise::checks),
        ("optimizer", titan_gpu_tests::checks_optim::checks),
    ];
    for (name, suite) in suites {
        match suite(&opened.device, seed) {
            Ok(checks) => rows.extend(checks.into_iter().map(|c| Row {
                what: c.what,
                path: "bf16 fused".into(),
                err: c.err,
                tol: c.tol,
            })),
            Err(e) => rows.push(Row {
                what: format!("{name}: ERROR {e}"),
                path: "bf16 fused".into(),
                err: f64::NAN,
                tol: 0.0,
            }),
        }
    }
    println!(
        "{:<60} {:>10} {:>10} {:>8}  result",
        "check", "path", "rel err", "tol"
    );
    let mut failures = 0;
    for r in &rows {
        let ok = r.err < r.tol; // NaN fails
        failures += usize::from(!ok);
        println!(
            "{:<60} {:>10} {:>10.2e} {:>8.0e}  {}",
            r.what,
            r.path,
            r.err,
            r.tol,
            if ok { "ok" } else { "FAIL" }
        );
    }
    if let Some((used, peak, reserved)) = titan_gpu_tests::memory(&opened.device) {
        println!("memory: {used} B in use, peak {peak} B used, peak {reserved} B reserved");
    }
    println!(
        "gpu_check: {} checks, {failures} failed (seed {seed})",
        rows.len()
    );
    if std::env::var("TITAN_ATTN_BENCH").is_ok_and(|v| v == "1") {
        attention_speed(&opened.device)?;
    }
    Ok(failures == 0)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            ExitCode::from(2)
        }
    }
}
