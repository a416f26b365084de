//! A training-step benchmark with per-phase times (not a test: nothing is asserted).
//!
//! `bench --flavor 1B --batch 4 --seq 2048 --steps 30 [--n-layers N] [--ac none|full|selective]
//!        [--dtype bf16|f32] [--device cuda|cpu] [--lr 3e-4] [--warmup 5] [--fwd-probe 3]
//!        [--fused on|off] [--ops] [--ops-iters 10] [--ops-warmup 2] [--init-only]
//!        [--profile-steps A-B]`
//!
//! Each step mirrors the trainer (synthetic tokens, one microbatch, forward + backward through
//! the engine's Executor, global-norm clipping at 1.0 folded into AdamW with f32 masters,
//! compute copies refreshed) with a device synchronization between phases so that each phase's time is its
//! own. Forward alone is timed afterwards on the last batch (`--fwd-probe` passes of
//! `forward_loss`); backward = forward+backward - forward. Throughput, TFLOP/s and MFU use
//! torchtitan's FLOPs per token and the second half of the steps, like the anchor figures.
//!
//! - `--fused on|off`: titan-core's fused CUDA kernels (default: on unless
//!   `TITAN_FUSED_KERNELS=0`), for A/B runs of one binary.
//! - `--ops`: after the summary, free the model and print the per-op table of
//!   [`titan_gpu_tests::op_bench`] at the same shapes (CUDA events), `--ops-iters` timed calls
//!   per op after `--ops-warmup`.
//! - `--init-only`: build and initialize the model, print where launch time went (device open,
//!   host draw of the initial weights alone, the whole init with upload) and stop.
//! - `--profile-steps A-B`: call `cuProfilerStart` before step A and `cuProfilerStop` after
//!   step B, so `ncu --profile-from-start off` or `nsys --capture-range=cudaProfilerApi`
//!   records only those steps (scripts/top-kernels.sh).

use std::time::Instant;

use candle_core::DType;
use titan_core::rng::CounterRng;
use titan_core::{ActivationCheckpoint, Executor, MicrobatchInfo, Module, NoHooks};
use titan_gpu_tests::op_bench::{self, OpBenchConfig};
use titan_gpu_tests::{gib, memory, open, parse_dtype, reset_peak, Error, Result};
use titan_models::llama3::{Llama3, LlamaArgs};
use titan_optim::{clip_scale, AdamWConfig, LrScheduler, LrSchedulerConfig, Optimizer};

/// H100 SXM dense bf16 peak, the anchors' MFU denominator.
const PEAK_FLOPS: f64 = 989e12;

struct Opts {
    flavor: String,
    n_layers: Option<usize>,
    batch: usize,
    seq: usize,
    steps: u64,
    ac: String,
    dtype: DType,
    device: String,
    lr: f64,
    warmup: u64,
    fwd_probe: usize,
    fused: Option<bool>,
    ops: bool,
    ops_iters: usize,
    ops_warmup: usize,
    init_only: bool,
    profile_steps: Option<(u64, u64)>,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        flavor: "debugmodel".into(),
        n_layers: None,
        batch: 8,
        seq: 2048,
        steps: 30,
        ac: "none".into(),
        dtype: DType::BF16,
        device: "cuda".into(),
        lr: 3e-4,
        warmup: 5,
        fwd_probe: 3,
        fused: None,
        ops: false,
        ops_iters: 10,
        ops_warmup: 2,
        init_only: false,
        profile_steps: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // Switches without a value.
        match a.as_str() {
            "--ops" => {
                o.ops = true;
                continue;
            }
            "--init-only" => {
                o.init_only = true;
                continue;
            }
            _ => {}
        }
        let v = args.next().ok_or_else(|| Error::Arg {
            arg: a.clone(),
            why: "needs a value".into(),
        })?;
        let bad = |why: &str| Error::Arg {
            arg: a.clone(),
            why: format!("`{v}`: {why}"),
        };
        let int = |v: &str| v.parse::<u64>().map_err(|_| bad("not an integer"));
        match a.as_str() {
            "--flavor" => o.flavor = v.clone(),
            "--n-layers" => o.n_layers = Some(int(&v)? as usize),
            "--batch" => o.batch = int(&v)? as usize,
            "--seq" => o.seq = int(&v)? as usize,
            "--steps" => o.steps = int(&v)?,
            "--ac" => o.ac = v.clone(),
            "--dtype" => o.dtype = parse_dtype(&v)?,
            "--device" => o.device = v.clone(),
            "--lr" => o.lr = v.parse().map_err(|_| bad("not a number"))?,
            "--warmup" => o.warmup = int(&v)?,
            "--fwd-probe" => o.fwd_probe = int(&v)? as usize,
            "--fused" => {
                o.fused = Some(match v.as_str() {
                    "on" | "1" | "true" => true,
                    "off" | "0" | "false" => false,
                    _ => return Err(bad("expected on or off")),
                })
            }
            "--ops-iters" => o.ops_iters = int(&v)? as usize,
            "--ops-warmup" => o.ops_warmup = int(&v)? as usize,
            "--profile-steps" => {
                let range = v
                    .split_once('-')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .unwrap_or((v.clone(), v.clone()));
                let (a, b) = (int(&range.0)?, int(&range.1)?);
                if a == 0 || b < a {
                    return Err(bad("expected A-B with 1 <= A <= B"));
                }
                o.profile_steps = Some((a, b));
            }
            _ => {
                return Err(Error::Arg {
                    arg: a.clone(),
                    why: "unknown (see the doc comment of crates/titan-gpu-tests/src/bin/bench.rs)"
                        .into(),
                })
            }
        }
    }
    if o.steps < 2 && !o.init_only {
        return Err(Error::Arg {
            arg: "--steps".into(),
            why: "at least 2 (the first step is warm-up)".into(),
        });
    }
    Ok(o)
}

/// Synthetic tokens for one step: `batch * (seq + 1)` ids below `vocab`, inputs and labels.
fn synthetic(seed: u64, step: u64, batch: usize, seq: usize, vocab: usize) -> (Vec<u32>, Vec<i64>) {
    let rng = CounterRng::for_param(seed, &format!("bench.step{step}"));
    let mut tokens = Vec::with_capacity(batch * seq);
    let mut labels = Vec::with_capacity(batch * seq);
    for b in 0..batch {
        let row: Vec<u32> = (0..=seq as u64)
            .map(|i| {
                let u = rng.uniform((b * (seq + 1)) as u64 + i, 0);
                ((u * vocab as f64) as u32).min(vocab as u32 - 1)
            })
            .collect();
        tokens.extend_from_slice(&row[..seq]);
        labels.extend(row[1..].iter().map(|&t| t as i64));
    }
    (tokens, labels)
}

#[derive(Default, Clone, Copy)]
struct Phases {
    data: f64,
    fwd_bwd: f64,
    /// Host time to queue forward + backward: close to `fwd_bwd` means the GPU waited on
    /// the host (launch-bound), far below it means the GPU was the bottleneck.
    enqueue: f64,
    optim: f64,
    total: f64,
}

/// Seconds since `t`.
fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Where the time before step 1 went.
#[derive(Default)]
struct Launch {
    open: f64,
    init: f64,
}

/// Draw every initial weight on the host only (no upload), as `Param::materialize` does, to
/// split the init time into host drawing and upload + cast.
fn host_draw_secs(model: &Llama3, seed: u64) -> f64 {
    let t = Instant::now();
    let mut buf: Vec<f32> = Vec::new();
    for p in model.params() {
        let spec = p.spec();
        buf.resize(spec.numel(), 0.0);
        spec.init.fill(seed, &spec.name, 0, &mut buf);
    }
    secs(t)
}

/// Start or stop the CUDA profiler's capture range (no-op without CUDA).
fn profiler(on: bool) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{profiler_start, profiler_stop};
        let r = if on {
            profiler_start()
        } else {
            profiler_stop()
        };
        r.map_err(|e| Error::Candle(candle_core::Error::Msg(format!("CUDA profiler: {e}"))))?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = on;
    Ok(())
}

fn run() -> Result<()> {
    let launch = Instant::now();
    let o = parse()?;
    if let Some(on) = o.fused {
        titan_core::ops::fused::set_enabled(on);
    }
    let mut times = Launch::default();
    let t = Instant::now();
    let opened = open(&o.device)?;
    let dev = opened.device.clone();
    times.open = secs(t);
    let mut args = LlamaArgs::flavor(&o.flavor)?;
    if let Some(n) = o.n_layers {
        args.n_layers = n;
    }
    args.max_seq_len = args.max_seq_len.max(o.seq);
    let mut model = Llama3::new(&args)?;
    model.set_device(&dev, o.dtype, o.seq)?;
    let t = Instant::now();
    model.init_weights(42)?;
    dev.synchronize()?;
    times.init = secs(t);
    let desc = model.describe();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if o.init_only {
        let draw = host_draw_secs(&model, 42);
        let n = desc.num_params() as f64;
        println!(
            "init-only: flavor {} ({} layers, {} params), {:?} on {}, {threads} host threads",
            o.flavor,
            args.n_layers,
            desc.num_params(),
            o.dtype,
            opened.name
        );
        println!("open device      {:.2} s", times.open);
        println!(
            "init_weights     {:.2} s (host draw + upload + compute copy; {:.1} ns per parameter)",
            times.init,
            times.init * 1e9 / n
        );
        println!(
            "  host draw only {:.2} s ({:.1} ns per parameter, all {threads} threads)",
            draw,
            draw * 1e9 / n
        );
        println!("launch-to-here   {:.2} s", secs(launch));
        return Ok(());
    }
    let flops_per_token = desc.flops_per_token(o.seq) as f64;
    let ac = ActivationCheckpoint::from_options(&o.ac, "op")?;
    let executor = Executor::new(ac);
    let mut optimizer = Optimizer::new(AdamWConfig {
        lr: o.lr,
        ..AdamWConfig::adamw()
    })?;
    let mut scheduler = LrScheduler::new(LrSchedulerConfig {
        lr: o.lr,
        warmup_steps: o.warmup,
        total_steps: o.steps,
        ..LrSchedulerConfig::default()
    })?;
    println!(
        "bench: flavor {} ({} layers, {} params), batch {} x seq {}, {:?}, ac {}, {} steps, device {}, fused kernels {}, {threads} host threads",
        o.flavor,
        args.n_layers,
        desc.num_params(),
        o.batch,
        o.seq,
        o.dtype,
        o.ac,
        o.steps,
        opened.name,
        if titan_core::ops::fused::AVAILABLE && titan_core::ops::fused::enabled() {
            if titan_core::ops::fused::hopper_attention() {
                "on (hd-64 attention: wgmma)"
            } else {
                "on (hd-64 attention: mma.sync)"
            }
        } else {
            "off"
        }
    );
    let tokens_per_step = (o.batch * o.seq) as f64;
    let mut phases: Vec<Phases> = Vec::new();
    let mut first_step_at = None;
    let mut first_step = 0.0;
    let mut last_batch = None;
    for step in 1..=o.steps {
        if o.profile_steps.is_some_and(|(a, _)| a == step) {
            dev.synchronize()?;
            profiler(true)?;
        }
        let t0 = Instant::now();
        let (tokens, labels) = synthetic(7, step, o.batch, o.seq, args.vocab_size);
        let batch = model.make_batch(&tokens, o.batch, o.seq, None)?;
        let target = model.make_labels(&labels)?;
        dev.synchronize()?;
        let t1 = Instant::now();
        let report = executor.forward_backward(
            &mut model,
            &batch,
            &target,
            1.0 / (o.batch * o.seq) as f64,
            &mut NoHooks,
            MicrobatchInfo::single(),
        )?;
        let t_enqueued = Instant::now();
        let loss = report.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        dev.synchronize()?;
        let t2 = Instant::now();
        let lr = scheduler.lr_at(step);
        let grad_norm = {
            // As the trainer: the clip coefficient is folded into the AdamW step (one pass
            // over the gradients); the norm is read back after the step is queued.
            let mut params = model.params_mut();
            let clip = clip_scale(&params, 1.0)?;
            optimizer.step_and_refresh_with_scale(&mut params, lr, o.dtype, clip.scale())?;
            for p in params.iter_mut() {
                p.zero_grad();
            }
            clip.total_norm()?
        };
        scheduler.step();
        dev.synchronize()?;
        let t3 = Instant::now();
        let p = Phases {
            data: (t1 - t0).as_secs_f64(),
            fwd_bwd: (t2 - t1).as_secs_f64(),
            enqueue: (t_enqueued - t1).as_secs_f64(),
            optim: (t3 - t2).as_secs_f64(),
            total: (t3 - t0).as_secs_f64(),
        };
        if o.profile_steps.is_some_and(|(_, b)| b == step) {
            profiler(false)?;
        }
        if step == 1 {
            first_step_at = Some(launch.elapsed().as_secs_f64());
            first_step = p.total;
        }
        let mem = memory(&dev)
            .map(|(_, peak, reserved)| {
                format!(
                    "  peak used {:.2} GiB reserved {:.2} GiB",
                    gib(peak),
                    gib(reserved)
                )
            })
            .unwrap_or_default();
        println!(
            "step {step:>3}  loss {loss:8.4}  grad_norm {grad_norm:7.4}  lr {lr:.2e}  {:7.1} ms (data {:.1}, fwd+bwd {:.1} queued in {:.1}, optim {:.1})  tps {:>8.0}{mem}",
            p.total * 1e3,
            p.data * 1e3,
            p.fwd_bwd * 1e3,
            p.enqueue * 1e3,
            p.optim * 1e3,
            tokens_per_step / p.total
        );
        phases.push(p);
        last_batch = Some((batch, target));
    }
    // Forward alone on the last batch.
    let mut fwd = f64::NAN;
    if let (Some((batch, target)), true) = (last_batch, o.fwd_probe > 0) {
        let mut times = Vec::new();
        for _ in 0..o.fwd_probe {
            let t = Instant::now();
            let loss = executor.forward_loss(&mut model, &batch, &target, 1.0, &mut NoHooks)?;
            let _ = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            dev.synchronize()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        fwd = times[times.len() / 2];
    }
    let half = &phases[phases.len() / 2..];
    let n = half.len() as f64;
    let mean = |f: fn(&Phases) -> f64| half.iter().map(f).sum::<f64>() / n;
    let (data, fb, optim, total) = (
        mean(|p| p.data),
        mean(|p| p.fwd_bwd),
        mean(|p| p.optim),
        mean(|p| p.total),
    );
    let tps = tokens_per_step / total;
    let tflops = tps * flops_per_token / 1e12;
    println!(
        "--- summary (mean over steps {}..={}) ---",
        o.steps - half.len() as u64 + 1,
        o.steps
    );
    println!("tokens/s        {tps:.0}");
    println!("TFLOP/s         {tflops:.1}");
    println!(
        "MFU             {:.1}% (of {:.0} TFLOP/s)",
        100.0 * tflops * 1e12 / PEAK_FLOPS,
        PEAK_FLOPS / 1e12
    );
    println!("step            {:.1} ms", total * 1e3);
    println!("  data          {:.1} ms", data * 1e3);
    println!(
        "  forward       {:.1} ms (median of {} forward-only passes)",
        fwd * 1e3,
        o.fwd_probe
    );
    println!(
        "  backward      {:.1} ms (forward+backward {:.1} ms - forward)",
        (fb - fwd) * 1e3,
        fb * 1e3
    );
    println!(
        "  optimizer     {:.1} ms (clip + AdamW + compute-copy refresh)",
        optim * 1e3
    );
    if let Some((_, peak, reserved)) = memory(&dev) {
        println!(
            "peak memory     {:.2} GiB used, {:.2} GiB reserved (CUDA default pool)",
            gib(peak),
            gib(reserved)
        );
    }
    if let Some(t) = first_step_at {
        println!("launch-to-step-1 {t:.1} s");
        println!(
            "  open device {:.1} s, init weights {:.1} s (host draw + upload), step 1 {:.1} s, other {:.1} s",
            times.open,
            times.init,
            first_step,
            t - times.open - times.init - first_step
        );
    }
    reset_peak(&dev);
    if o.ops {
        // Free the model and its optimizer state first: the op bench builds its own.
        let attention = model.attention().clone();
        drop((model, optimizer, executor));
        let mut cfg = OpBenchConfig::new(o.batch, o.seq);
        cfg.dtype = o.dtype;
        cfg.ac = ac;
        cfg.iters = o.ops_iters;
        cfg.warmup = o.ops_warmup;
        let table = op_bench::run(&args, attention, &dev, &cfg, Some(total * 1e3))?;
        println!("{}", table.markdown());
        if let Some((_, peak, _)) = memory(&dev) {
            println!("op bench peak memory {:.2} GiB used", gib(peak));
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
