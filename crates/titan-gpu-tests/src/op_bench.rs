//! Where a Llama training step spends its time, op by op.
//!
//! [`run`] builds a Llama at the given shapes, then calls every op of one training step through
//! titan-core's public API, in the order and with the inputs the Llama model and block use
//! (embedding, RMSNorm, each Linear's forward / input gradient / weight gradient, RoPE, the
//! head-major layout copies where the kernel needs them, attention through the model's [`AttentionKernel`], SwiGLU,
//! residual and gradient adds, cross-entropy, the clip norm and the AdamW step over a parameter set
//! of the model's size). Each op runs `warmup` times, then `iters` times between two CUDA events
//! (on the CPU: the host clock around the calls and a synchronize). One block is measured and
//! counted `n_layers` times (plus recomputation under activation checkpointing); the table is
//! sorted by milliseconds per step = calls per step x milliseconds per call.
//!
//! Ops run back to back on one stream, so a call's time includes its host-side launch cost
//! whenever the GPU would otherwise wait for the host, as in the real step. Weight values are
//! drawn on the device (their values do not change the time of any op), so the table is ready
//! in seconds, not after the minute-long host init of a 1B model.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use titan_core::ops::{
    apply_rope, apply_rope_backward, cross_entropy_backward, cross_entropy_forward,
    swiglu_backward, swiglu_forward, AttentionKernel,
};
use titan_core::rng::CounterRng;
use titan_core::{ActivationCheckpoint, Init, LayeredModel, Module, Param};
use titan_models::llama3::{Llama3, LlamaArgs};
use titan_optim::{clip_scale, AdamWConfig, Optimizer};

use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct OpBenchConfig {
    pub batch: usize,
    pub seq: usize,
    /// Compute dtype (bf16 on the GPU).
    pub dtype: DType,
    /// The step's activation checkpointing: decides how often block forward ops run per step.
    pub ac: ActivationCheckpoint,
    /// Untimed calls before timing each op.
    pub warmup: usize,
    /// Timed calls per op (the optimizer rows use at most 5).
    pub iters: usize,
    /// Seed of the synthetic tokens.
    pub seed: u64,
}

impl OpBenchConfig {
    /// bf16, no activation checkpointing, 2 warm-up and 10 timed calls per op.
    pub fn new(batch: usize, seq: usize) -> Self {
        Self {
            batch,
            seq,
            dtype: DType::BF16,
            ac: ActivationCheckpoint::None,
            warmup: 2,
            iters: 10,
            seed: 7,
        }
    }
}

/// Which part of the step an op belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Per-microbatch setup (RoPE tables, attention mask).
    Setup,
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Forward => "fwd",
            Phase::Backward => "bwd",
            Phase::Optimizer => "optim",
        }
    }
}

/// The useful work of one call: matmul FLOPs, or the bytes an ideal kernel must move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
    Unknown,
}

/// One measured op.
#[derive(Debug, Clone)]
pub struct OpRow {
    pub name: String,
    pub phase: Phase,
    /// Calls of this op in one training step.
    pub per_step: usize,
    pub ms_per_call: f64,
    pub work: Work,
}

impl OpRow {
    pub fn ms_per_step(&self) -> f64 {
        self.per_step as f64 * self.ms_per_call
    }

    /// "612.3 TFLOP/s", "45.2 GFLOP/s", "1843 GB/s" or "12.5 GB/s".
    pub fn achieved(&self) -> String {
        let secs = self.ms_per_call * 1e-3;
        match self.work {
            // Also catches NaN.
            _ if secs.is_nan() || secs <= 0.0 => "-".into(),
            Work::Flops(f) if f / secs >= 1e12 => format!("{:.1} TFLOP/s", f / secs / 1e12),
            Work::Flops(f) => format!("{:.1} GFLOP/s", f / secs / 1e9),
            Work::Bytes(b) if b / secs >= 1e11 => format!("{:.0} GB/s", b / secs / 1e9),
            Work::Bytes(b) => format!("{:.1} GB/s", b / secs / 1e9),
            Work::Unknown => "-".into(),
        }
    }
}

/// The measured ops of one step.
#[derive(Debug, Clone)]
pub struct OpTable {
    /// What was measured (shape, dtype, attention kernel).
    pub label: String,
    /// How calls were timed.
    pub timer: &'static str,
    pub rows: Vec<OpRow>,
    /// A measured training step to compare against (ms), if the caller has one.
    pub step_ms: Option<f64>,
}

impl OpTable {
    /// Sum over rows of ms per step.
    pub fn total_ms(&self) -> f64 {
        self.rows.iter().map(OpRow::ms_per_step).sum()
    }

    pub fn phase_ms(&self, phase: Phase) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.phase == phase)
            .map(OpRow::ms_per_step)
            .sum()
    }

    /// Rows by decreasing ms per step.
    pub fn sorted(&self) -> Vec<&OpRow> {
        let mut rows: Vec<&OpRow> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.ms_per_step().total_cmp(&a.ms_per_step()));
        rows
    }

    /// A markdown table with a summary below it.
    pub fn markdown(&self) -> String {
        let total = self.total_ms();
        let base = self.step_ms.unwrap_or(total);
        let base_name = if self.step_ms.is_some() {
            "% of step"
        } else {
            "% of ops"
        };
        let mut s = format!("op breakdown: {} ({})\n\n", self.label, self.timer);
        s.push_str(&format!(
            "| op | phase | calls/step | ms/call | ms/step | {base_name} | work/call | achieved |\n|---|---|---|---|---|---|---|---|\n"
        ));
        for r in self.sorted() {
            s.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.1} | {:.1}% | {} | {} |\n",
                r.name,
                r.phase.label(),
                r.per_step,
                r.ms_per_call,
                r.ms_per_step(),
                100.0 * r.ms_per_step() / base,
                fmt_work(r.work),
                r.achieved()
            ));
        }
        s.push_str(&format!(
            "\nsum of ops {total:.1} ms per step: setup {:.1}, forward {:.1}, backward {:.1}, optimizer {:.1}",
            self.phase_ms(Phase::Setup),
            self.phase_ms(Phase::Forward),
            self.phase_ms(Phase::Backward),
            self.phase_ms(Phase::Optimizer),
        ));
        if let Some(step) = self.step_ms {
            let rest = if total < step {
                " (the rest: host gaps between ops, allocation, synchronization)"
            } else {
                " (timed alone, ops add up to more than the step: noise or warmer caches)"
            };
            s.push_str(&format!(
                "\nmeasured step {step:.1} ms: the ops account for {:.1}%{rest}",
                100.0 * total / step
            ));
        }
        s.push_str("\nmatmul FLOPs are 2*m*n*k; attention FLOPs count the full seq x seq products (fwd 4*b*h*s^2*hd, bwd 8*b*h*s^2*hd, no causal halving); bytes are what an ideal kernel reads and writes\n");
        s
    }
}

fn fmt_work(w: Work) -> String {
    match w {
        Work::Flops(f) if f >= 1e12 => format!("{:.2} TFLOP", f / 1e12),
        Work::Flops(f) => format!("{:.2} GFLOP", f / 1e9),
        Work::Bytes(b) if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        Work::Bytes(b) => format!("{:.2} MB", b / 1e6),
        Work::Unknown => "-".into(),
    }
}

/// Times calls: CUDA events on a CUDA device, the host clock around a synchronize elsewhere.
struct Timer {
    device: Device,
    warmup: usize,
    iters: usize,
}

impl Timer {
    fn name(&self) -> &'static str {
        if cfg!(feature = "cuda") && self.device.is_cuda() {
            "CUDA events around back-to-back calls"
        } else {
            "host clock around back-to-back calls, then synchronize"
        }
    }

    /// Milliseconds per call of `f` and the output of one more call.
    fn time<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
        let ms = self.ms(self.warmup, self.iters, &mut f)?;
        Ok((ms, f()?))
    }

    /// Milliseconds per call over `iters` calls after `warmup` calls. Each output is dropped
    /// before the next call, so at most one is alive (naive attention's are gigabytes).
    fn ms<T>(&self, warmup: usize, iters: usize, f: &mut impl FnMut() -> Result<T>) -> Result<f64> {
        let iters = iters.max(1);
        for _ in 0..warmup {
            drop(f()?);
        }
        self.device.synchronize()?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = &self.device {
            use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
            let stream = cuda.cuda_stream();
            // Default flags: timing on (cudarc's default event disables it).
            let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let start = stream.record_event(flags).map_err(driver)?;
            for _ in 0..iters {
                drop(f()?);
            }
            let end = stream.record_event(flags).map_err(driver)?;
            let ms = start.elapsed_ms(&end).map_err(driver)? as f64;
            return Ok(ms / iters as f64);
        }
        let t = Instant::now();
        for _ in 0..iters {
            drop(f()?);
        }
        self.device.synchronize()?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / iters as f64)
    }
}

#[cfg(feature = "cuda")]
fn driver(e: candle_core::cuda_backend::cudarc::driver::DriverError) -> Error {
    Error::Candle(candle_core::Error::Msg(format!("CUDA event: {e}")))
}

/// Device-drawn values for a parameter (ones/zeros for constant inits), master and compute copy.
fn fill_on_device(p: &mut Param, device: &Device, dtype: DType) -> Result<()> {
    let shape = p.shape().clone();
    let value = match p.init() {
        Init::Zeros => Tensor::zeros(shape, DType::F32, device)?,
        Init::Ones => Tensor::ones(shape, DType::F32, device)?,
        init => Tensor::randn(0f32, init.std() as f32, shape, device)?,
    };
    p.set_master(value)?;
    p.refresh_compute(dtype)?;
    Ok(())
}

/// Synthetic token ids and next-token labels, as the bench program draws them.
fn synthetic(seed: u64, batch: usize, seq: usize, vocab: usize) -> (Vec<u32>, Vec<i64>) {
    let rng = CounterRng::for_param(seed, "op_bench.tokens");
    let id = |i: u64| ((rng.uniform(i, 0) * vocab as f64) as u32).min(vocab as u32 - 1);
    let mut tokens = Vec::with_capacity(batch * seq);
    let mut labels = Vec::with_capacity(batch * seq);
    for b in 0..batch {
        let row = (b * (seq + 1)) as u64;
        for i in 0..seq as u64 {
            tokens.push(id(row + i));
            labels.push(id(row + i + 1) as i64);
        }
    }
    (tokens, labels)
}

/// How many times per step the block's forward ops run: once per layer, again for each
/// recomputed block; `selective` is true for the ops that per-op checkpointing recomputes.
fn forward_calls(ac: ActivationCheckpoint, n_layers: usize, selective: bool) -> usize {
    let recomputed = match ac {
        ActivationCheckpoint::None => 0,
        ActivationCheckpoint::Full => n_layers,
        ActivationCheckpoint::EveryNth(n) => n_layers / n.max(1),
        ActivationCheckpoint::Op => {
            if selective {
                n_layers
            } else {
                0
            }
        }
    };
    n_layers + recomputed
}

/// Measure every op of one training step of the Llama `args` at `cfg`'s shapes, attention
/// through `attention`. `step_ms` (a measured training step) only sets the percentage base.
pub fn run(
    args: &LlamaArgs,
    attention: Arc<dyn AttentionKernel>,
    device: &Device,
    cfg: &OpBenchConfig,
    step_ms: Option<f64>,
) -> Result<OpTable> {
    if cfg.batch == 0 || cfg.seq == 0 {
        return Err(Error::Arg {
            arg: "op bench".into(),
            why: format!("batch {} x seq {} is empty", cfg.batch, cfg.seq),
        });
    }
    let mut args = args.clone();
    args.max_seq_len = args.max_seq_len.max(cfg.seq);
    let mut model = Llama3::with_attention(&args, attention.clone())?;
    model.set_device(device, cfg.dtype, cfg.seq)?;
    let timer = Timer {
        device: device.clone(),
        warmup: cfg.warmup,
        iters: cfg.iters,
    };
    // The ops need the stem, one block and the head; the other blocks only exist for the
    // optimizer rows and are filled after the per-op rows, to keep the peak low.
    fill_on_device(&mut model.tok_embeddings.weight, device, cfg.dtype)?;
    for p in model.layers[0].params_mut() {
        fill_on_device(p, device, cfg.dtype)?;
    }
    fill_on_device(&mut model.norm.weight, device, cfg.dtype)?;
    fill_on_device(&mut model.output.weight, device, cfg.dtype)?;

    let mut rows = time_ops(&mut model, attention.as_ref(), &timer, cfg)?;
    rows.extend(time_optimizer(&mut model, &timer, cfg)?);
    Ok(OpTable {
        label: format!(
            "{} layers, dim {}, {} q / {} kv heads, ffn {}, vocab {}, batch {} x seq {}, {:?}, attention {}, ac {:?}, {} timed calls per op",
            args.n_layers,
            args.dim,
            args.n_heads,
            args.n_kv_heads(),
            args.ffn_hidden_dim(),
            args.vocab_size,
            cfg.batch,
            cfg.seq,
            cfg.dtype,
            attention.name(),
            cfg.ac,
            cfg.iters.max(1)
        ),
        timer: timer.name(),
        rows,
        step_ms,
    })
}

/// The forward and backward ops of the stem, one block (counted per layer) and the head.
fn time_ops(
    model: &mut Llama3,
    attention: &dyn AttentionKernel,
    timer: &Timer,
    cfg: &OpBenchConfig,
) -> Result<Vec<OpRow>> {
    let a = model.args.clone();
    let (b, s) = (cfg.batch, cfg.seq);
    let t = (b * s) as f64;
    let (d, f, v) = (a.dim, a.ffn_hidden_dim(), a.vocab_size);
    let (hq, hkv, hd) = (a.n_heads, a.n_kv_heads(), a.head_dim());
    let es = cfg.dtype.size_in_bytes() as f64;
    let (df, ff, vf) = (d as f64, f as f64, v as f64);
    let (qf, kvf) = ((hq * hd) as f64, (hkv * hd) as f64);
    let l = a.n_layers;
    let fwd = forward_calls(cfg.ac, l, false);
    let fwd_sel = forward_calls(cfg.ac, l, true);
    let scale = 1.0 / (hd as f64).sqrt();
    let mm = |m: f64, n: f64, k: f64| Work::Flops(2.0 * m * n * k);
    let bytes = Work::Bytes;
    let mut rows = Vec::new();
    let mut row = |name: &str, phase: Phase, per_step: usize, ms: f64, work: Work| {
        rows.push(OpRow {
            name: name.to_string(),
            phase,
            per_step,
            ms_per_call: ms,
            work,
        })
    };

    let (tokens, labels) = synthetic(cfg.seed, b, s, v);
    let batch = model.make_batch(&tokens, b, s, None)?;
    let labels = model.make_labels(&labels)?;

    let (ms, ctx) = timer.time(|| Ok(model.context(&batch)?))?;
    row(
        "rope tables + attention mask",
        Phase::Setup,
        1,
        ms,
        Work::Unknown,
    );
    let (cos, sin, mask) = (&ctx.cos, &ctx.sin, &ctx.mask);

    // ---- forward ----
    let (ms, x) = timer.time(|| Ok(model.tok_embeddings.forward(&batch.tokens)?))?;
    row(
        "embedding fwd",
        Phase::Forward,
        1,
        ms,
        bytes(2.0 * t * df * es + 4.0 * t),
    );
    let norm_fwd = bytes(2.0 * t * df * es + 4.0 * t);
    let add = bytes(3.0 * t * df * es);
    let blk = &model.layers[0];
    let (ms, (n1, rstd1)) = timer.time(|| Ok(blk.attention_norm.forward(&x)?))?;
    row("attention_norm fwd", Phase::Forward, fwd_sel, ms, norm_fwd);
    let (ms, q_lin) = timer.time(|| Ok(blk.wq.forward(&n1)?))?;
    row("wq fwd", Phase::Forward, fwd, ms, mm(t, qf, df));
    let (ms, k_lin) = timer.time(|| Ok(blk.wk.forward(&n1)?))?;
    row("wk fwd", Phase::Forward, fwd, ms, mm(t, kvf, df));
    let (ms, v_lin) = timer.time(|| Ok(blk.wv.forward(&n1)?))?;
    row("wv fwd", Phase::Forward, fwd, ms, mm(t, kvf, df));
    let q4 = q_lin.reshape((b, s, hq, hd))?;
    let (ms, q_rot) = timer.time(|| Ok(apply_rope(&q4, cos, sin)?))?;
    row(
        "rope fwd q",
        Phase::Forward,
        fwd,
        ms,
        bytes(2.0 * t * qf * es),
    );
    let k4 = k_lin.reshape((b, s, hkv, hd))?;
    let (ms, k_rot) = timer.time(|| Ok(apply_rope(&k4, cos, sin)?))?;
    row(
        "rope fwd k",
        Phase::Forward,
        fwd,
        ms,
        bytes(2.0 * t * kvf * es),
    );
    // Head-major q, k, v (and d_o) are views for kernels that read strided inputs, copies
    // otherwise (as the block's `to_heads`); outputs come back through a copy that is free
    // when the kernel wrote a transposed view (the block's `from_heads`).
    let strided = attention.accepts_strided();
    macro_rules! to_heads {
        ($name:expr, $phase:expr, $calls:expr, $x:expr, $width:expr) => {{
            if strided {
                $x.transpose(1, 2)?
            } else {
                let (ms, y) = timer.time(|| Ok($x.transpose(1, 2)?.contiguous()?))?;
                row($name, $phase, $calls, ms, bytes(2.0 * t * $width * es));
                y
            }
        }};
    }
    let heads = |x: &Tensor| -> Result<Tensor> { Ok(x.transpose(1, 2)?.contiguous()?) };
    let q = to_heads!("to head-major copy q", Phase::Forward, fwd, q_rot, qf);
    let k = to_heads!("to head-major copy k", Phase::Forward, fwd, k_rot, kvf);
    let v4 = v_lin.reshape((b, s, hkv, hd))?;
    let vh = to_heads!("to head-major copy v", Phase::Forward, fwd, v4, kvf);
    drop((q4, k4, v4, q_rot, k_rot, q_lin, k_lin, v_lin));
    let attn_flops = 4.0 * (b * hq) as f64 * (s as f64) * (s as f64) * hd as f64;
    let (ms, (o_heads, attn_saved)) =
        timer.time(|| Ok(attention.forward(&q, &k, &vh, mask, scale)?))?;
    row(
        &format!("attention fwd ({})", attention.name()),
        Phase::Forward,
        fwd,
        ms,
        Work::Flops(attn_flops),
    );
    drop((q, k, vh));
    let (ms, o) = timer.time(|| Ok(heads(&o_heads)?.reshape((b, s, hq * hd))?))?;
    row(
        "from head-major copy o",
        Phase::Forward,
        fwd_sel,
        ms,
        bytes(2.0 * t * qf * es),
    );
    drop(o_heads);
    let (ms, attn_out) = timer.time(|| Ok(blk.wo.forward(&o)?))?;
    row("wo fwd", Phase::Forward, fwd, ms, mm(t, df, qf));
    // The block fuses the attention residual add into ffn_norm's forward.
    let (ms, (h, n2, rstd2)) =
        timer.time(|| Ok(blk.ffn_norm.forward_residual(&x, &attn_out)?))?;
    row(
        "ffn_norm fwd + residual add",
        Phase::Forward,
        fwd_sel,
        ms,
        bytes(4.0 * t * df * es),
    );
    drop(attn_out);
    let (ms, a1) = timer.time(|| Ok(blk.w1.forward(&n2)?))?;
    row("w1 fwd", Phase::Forward, fwd, ms, mm(t, ff, df));
    let (ms, a3) = timer.time(|| Ok(blk.w3.forward(&n2)?))?;
    row("w3 fwd", Phase::Forward, fwd, ms, mm(t, ff, df));
    let (ms, g) = timer.time(|| Ok(swiglu_forward(&a1, &a3)?))?;
    row(
        "swiglu fwd",
        Phase::Forward,
        fwd_sel,
        ms,
        bytes(3.0 * t * ff * es),
    );
    let (ms, w2_out) = timer.time(|| Ok(blk.w2.forward(&g)?))?;
    row("w2 fwd", Phase::Forward, fwd, ms, mm(t, df, ff));
    let (ms, out) = timer.time(|| Ok((&h + &w2_out)?))?;
    row("residual add (ffn)", Phase::Forward, fwd, ms, add);
    drop(w2_out);

    // The head reads the block's output as the last hidden state.
    let (ms, (normed, rstd_f)) = timer.time(|| Ok(model.norm.forward(&out)?))?;
    row("final norm fwd", Phase::Forward, 1, ms, norm_fwd);
    let (ms, logits) = timer.time(|| Ok(model.output.forward(&normed)?))?;
    row("output fwd", Phase::Forward, 1, ms, mm(t, vf, df));
    let logits = logits.reshape(((b * s), v))?;
    let loss_scale = 1.0 / t;
    let (ms, (_loss, ce)) =
        timer.time(|| Ok(cross_entropy_forward(&logits, &labels, loss_scale)?))?;
    row(
        "cross-entropy fwd",
        Phase::Forward,
        1,
        ms,
        bytes(t * vf * es + 12.0 * t),
    );
    drop(logits);

    // ---- backward ----
    let (ms, d_logits) = timer.time(|| Ok(cross_entropy_backward(&ce)?))?;
    row(
        "cross-entropy bwd",
        Phase::Backward,
        1,
        ms,
        bytes(2.0 * t * vf * es + 12.0 * t),
    );
    drop(ce);
    let d_logits = d_logits.reshape((b, s, v))?;
    let (ms, d_normed) = timer.time(|| Ok(model.output.backward_input(&d_logits)?))?;
    row("output bwd input", Phase::Backward, 1, ms, mm(t, df, vf));
    let out_w = &mut model.output;
    let (ms, ()) = timer.time(|| {
        out_w.weight.zero_grad();
        Ok(out_w.backward_weight(&normed, &d_logits)?)
    })?;
    row("output bwd weight", Phase::Backward, 1, ms, mm(vf, df, t));
    drop((d_logits, normed));
    let norm_bwd = bytes(3.0 * t * df * es + 4.0 * t + 4.0 * df);
    let fnorm = &mut model.norm;
    let (ms, d_out) = timer.time(|| {
        fnorm.weight.zero_grad();
        Ok(fnorm.backward(&out, &rstd_f, &d_normed)?)
    })?;
    row("final norm bwd", Phase::Backward, 1, ms, norm_bwd);
    drop((d_normed, out, rstd_f));

    let blk = &mut model.layers[0];
    // Linear backward in two rows (input gradient, weight gradient into an empty f32 grad,
    // as the first microbatch of a step finds it).
    macro_rules! linear_bwd {
        (@weight $lin:ident, $x:expr, $dy:expr, $m:expr, $n:expr) => {{
            let (ms, ()) = timer.time(|| {
                blk.$lin.weight.zero_grad();
                Ok(blk.$lin.backward_weight($x, $dy)?)
            })?;
            row(
                concat!(stringify!($lin), " bwd weight"),
                Phase::Backward,
                l,
                ms,
                mm($m, $n, t),
            );
        }};
        ($lin:ident, $x:expr, $dy:expr, $m:expr, $n:expr) => {{
            let (ms, dx) = timer.time(|| Ok(blk.$lin.backward_input($dy)?))?;
            row(
                concat!(stringify!($lin), " bwd input"),
                Phase::Backward,
                l,
                ms,
                mm(t, $n, $m),
            );
            linear_bwd!(@weight $lin, $x, $dy, $m, $n);
            dx
        }};
        // Projections sharing an input: this input gradient accumulates into `acc` inside
        // the GEMM (Linear::backward_acc), as the block does.
        ($lin:ident, $x:expr, $dy:expr, $m:expr, $n:expr, acc = $acc:expr) => {{
            let acc = $acc;
            let (ms, sum) = timer.time(|| Ok(blk.$lin.backward_input_acc($dy, acc.clone())?))?;
            row(
                concat!(stringify!($lin), " bwd input (accumulating)"),
                Phase::Backward,
                l,
                ms,
                mm(t, $n, $m),
            );
            linear_bwd!(@weight $lin, $x, $dy, $m, $n);
            sum
        }};
    }
    let d_g = linear_bwd!(w2, &g, &d_out, df, ff);
    let (ms, (d_a1, d_a3)) = timer.time(|| Ok(swiglu_backward(&a1, &a3, &d_g)?))?;
    row(
        "swiglu bwd",
        Phase::Backward,
        l,
        ms,
        bytes(5.0 * t * ff * es),
    );
    drop((d_g, g, a1, a3));
    let d1 = linear_bwd!(w1, &n2, &d_a1, ff, df);
    let d_n2 = linear_bwd!(w3, &n2, &d_a3, ff, df, acc = d1);
    drop((d_a1, d_a3, n2));
    // The residual gradient is folded into the norm's backward.
    let (ms, d_h) = timer.time(|| {
        blk.ffn_norm.weight.zero_grad();
        Ok(blk.ffn_norm.backward_residual(&h, &rstd2, &d_n2, &d_out)?)
    })?;
    row(
        "ffn_norm bwd + residual grad",
        Phase::Backward,
        l,
        ms,
        norm_bwd,
    );
    drop((d_n2, h, rstd2, d_out));
    let d_o = linear_bwd!(wo, &o, &d_h, df, qf);
    drop(o);
    let d_o4 = d_o.reshape((b, s, hq, hd))?;
    let d_o_heads = to_heads!("to head-major copy d_o", Phase::Backward, l, d_o4, qf);
    drop((d_o4, d_o));
    let (ms, (d_q, d_k, d_v)) =
        timer.time(|| Ok(attention.backward(&attn_saved, &d_o_heads, mask, scale)?))?;
    row(
        &format!("attention bwd ({})", attention.name()),
        Phase::Backward,
        l,
        ms,
        Work::Flops(2.0 * attn_flops),
    );
    drop((attn_saved, d_o_heads));
    let (ms, d_q_t) = timer.time(|| heads(&d_q))?;
    row(
        "from head-major copy d_q",
        Phase::Backward,
        l,
        ms,
        bytes(2.0 * t * qf * es),
    );
    let (ms, d_k_t) = timer.time(|| heads(&d_k))?;
    row(
        "from head-major copy d_k",
        Phase::Backward,
        l,
        ms,
        bytes(2.0 * t * kvf * es),
    );
    let (ms, d_v2) = timer.time(|| Ok(heads(&d_v)?.reshape((b, s, hkv * hd))?))?;
    row(
        "from head-major copy d_v",
        Phase::Backward,
        l,
        ms,
        bytes(2.0 * t * kvf * es),
    );
    drop((d_q, d_k, d_v));
    let (ms, d_q2) =
        timer.time(|| Ok(apply_rope_backward(&d_q_t, cos, sin)?.reshape((b, s, hq * hd))?))?;
    row(
        "rope bwd q",
        Phase::Backward,
        l,
        ms,
        bytes(2.0 * t * qf * es),
    );
    let (ms, d_k2) =
        timer.time(|| Ok(apply_rope_backward(&d_k_t, cos, sin)?.reshape((b, s, hkv * hd))?))?;
    row(
        "rope bwd k",
        Phase::Backward,
        l,
        ms,
        bytes(2.0 * t * kvf * es),
    );
    drop((d_q_t, d_k_t));
    let dq = linear_bwd!(wq, &n1, &d_q2, qf, df);
    let dqk = linear_bwd!(wk, &n1, &d_k2, kvf, df, acc = dq);
    let d_n1 = linear_bwd!(wv, &n1, &d_v2, kvf, df, acc = dqk);
    drop((d_q2, d_k2, d_v2, n1));
    let (ms, d_x) = timer.time(|| {
        blk.attention_norm.weight.zero_grad();
        Ok(blk
            .attention_norm
            .backward_residual(&x, &rstd1, &d_n1, &d_h)?)
    })?;
    row(
        "attention_norm bwd + residual grad",
        Phase::Backward,
        l,
        ms,
        norm_bwd,
    );
    drop((d_n1, rstd1, d_h, x));
    let emb = &mut model.tok_embeddings;
    let (ms, ()) = timer.time(|| {
        emb.weight.zero_grad();
        Ok(emb.backward(&batch.tokens, &d_x)?)
    })?;
    row(
        "embedding bwd",
        Phase::Backward,
        1,
        ms,
        bytes(4.0 * vf * df + t * df * es + 4.0 * t),
    );
    Ok(rows)
}

/// The clip norm and the AdamW step (clip coefficient folded in, compute copies refreshed) over
/// all of the model's parameters, each with an f32 gradient, as the bench's optimizer phase.
fn time_optimizer(model: &mut Llama3, timer: &Timer, cfg: &OpBenchConfig) -> Result<Vec<OpRow>> {
    let device = timer.device.clone();
    for block in model.layers.iter_mut().skip(1) {
        for p in block.params_mut() {
            fill_on_device(p, &device, cfg.dtype)?;
        }
    }
    let mut params = model.params_mut();
    let mut numel = 0usize;
    for p in params.iter_mut() {
        numel += p.numel();
        let g = Tensor::randn(0f32, 1e-3, p.shape().clone(), &device)?;
        p.set_grad(Some(g))?;
    }
    let n = numel as f64;
    let es = cfg.dtype.size_in_bytes() as f64;
    let lr = 3e-4;
    let mut optimizer = Optimizer::new(AdamWConfig {
        lr,
        ..AdamWConfig::adamw()
    })?;
    // Each call costs hundreds of ms at 1B: fewer timed calls; the first call creates the
    // moments, so one warm-up is needed.
    let iters = cfg.iters.clamp(1, 5);
    // As the bench step: the norm and clip coefficient (on the device where fused kernels
    // run), then AdamW reading each gradient times the coefficient, refreshing compute copies.
    let max_norm = 1.0;
    let clip_ms = timer.ms(1, iters, &mut || Ok(clip_scale(&params, max_norm)?))?;
    let clip = clip_scale(&params, max_norm)?;
    let adamw_ms = timer.ms(1, iters, &mut || {
        Ok(optimizer.step_and_refresh_with_scale(&mut params, lr, cfg.dtype, clip.scale())?)
    })?;
    let count = params.len();
    Ok(vec![
        OpRow {
            name: format!("grad norm + clip coefficient ({count} tensors)"),
            phase: Phase::Optimizer,
            per_step: 1,
            ms_per_call: clip_ms,
            work: Work::Bytes(4.0 * n),
        },
        OpRow {
            name: format!(
                "AdamW, clip folded in, + compute-copy refresh ({count} tensors, {numel} params)"
            ),
            phase: Phase::Optimizer,
            per_step: 1,
            ms_per_call: adamw_ms,
            work: Work::Bytes((28.0 + es) * n),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_core::ops::NaiveAttention;

    fn tiny() -> LlamaArgs {
        LlamaArgs {
            dim: 64,
            n_layers: 3,
            n_heads: 4,
            n_kv_heads: Some(2),
            vocab_size: 96,
            multiple_of: 32,
            max_seq_len: 32,
            ..LlamaArgs::default()
        }
    }

    #[test]
    fn every_op_of_a_tiny_llama_step_is_timed() -> Result<()> {
        let mut cfg = OpBenchConfig::new(2, 16);
        cfg.dtype = DType::F32;
        cfg.warmup = 1;
        cfg.iters = 2;
        cfg.ac = ActivationCheckpoint::Full;
        let table = run(&tiny(), Arc::new(NaiveAttention), &Device::Cpu, &cfg, None)?;
        // setup 1 + forward 22 + backward 29 + optimizer 2 (the block's fused residual adds
        // and accumulating input GEMMs have no rows of their own)
        assert_eq!(table.rows.len(), 54, "{}", table.markdown());
        assert!(table.rows.iter().all(|r| r.ms_per_call.is_finite()));
        let count = |name: &str| {
            table
                .rows
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.per_step)
        };
        assert_eq!(count("wq fwd"), Some(6)); // 3 layers, recomputed under full AC
        assert_eq!(count("wq bwd weight"), Some(3));
        assert_eq!(count("output fwd"), Some(1));
        assert_eq!(count("ffn_norm fwd + residual add"), Some(6));
        assert_eq!(count("wk bwd input (accumulating)"), Some(3));
        assert_eq!(count("attention_norm bwd + residual grad"), Some(3));
        let md = table.markdown();
        assert!(md.contains("| wq fwd | fwd | 6 |"), "{md}");
        Ok(())
    }

    #[test]
    fn selective_op_checkpointing_recomputes_only_cheap_ops() {
        assert_eq!(forward_calls(ActivationCheckpoint::Op, 4, true), 8);
        assert_eq!(forward_calls(ActivationCheckpoint::Op, 4, false), 4);
        assert_eq!(
            forward_calls(ActivationCheckpoint::EveryNth(2), 4, false),
            6
        );
        assert_eq!(forward_calls(ActivationCheckpoint::None, 4, true), 4);
    }
}
