//! A training-step benchmark with per-phase times (not a test: nothing is asserted).
//!
//! `bench --flavor 1B --batch 4 --seq 2048 --steps 30 [--n-layers N] [--ac none|full]
//!        [--dtype bf16|f32] [--device cuda|cpu] [--lr 3e-4] [--warmup 5] [--fwd-probe 3]`
//!
//! Each step mirrors the trainer (synthetic tokens, one microbatch, forward + backward through
//! the engine's Executor, global-norm clipping at 1.0, AdamW with f32 masters, compute copies
//! refreshed) with a device synchronization between phases so that each phase's time is its
//! own. Forward alone is timed afterwards on the last batch (`--fwd-probe` passes of
//! `forward_loss`); backward = forward+backward - forward. Throughput, TFLOP/s and MFU use
//! torchtitan's FLOPs per token and the second half of the steps, like the anchor figures.

use std::time::Instant;

use candle_core::DType;
use titan_core::rng::CounterRng;
use titan_core::{ActivationCheckpoint, Executor, MicrobatchInfo, Module, NoHooks};
use titan_gpu_tests::{gib, memory, open, parse_dtype, reset_peak, Error, Result};
use titan_models::llama3::{Llama3, LlamaArgs};
use titan_optim::{clip_grad_norm, AdamWConfig, LrScheduler, LrSchedulerConfig, Optimizer};

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
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
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
            _ => {
                return Err(Error::Arg {
                    arg: a.clone(),
                    why: "unknown (see the doc comment of crates/titan-gpu-tests/src/bin/bench.rs)"
                        .into(),
                })
            }
        }
    }
    if o.steps < 2 {
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
    optim: f64,
    total: f64,
}

fn run() -> Result<()> {
    let launch = Instant::now();
    let o = parse()?;
    let opened = open(&o.device)?;
    let dev = opened.device.clone();
    let mut args = LlamaArgs::flavor(&o.flavor)?;
    if let Some(n) = o.n_layers {
        args.n_layers = n;
    }
    args.max_seq_len = args.max_seq_len.max(o.seq);
    let mut model = Llama3::new(&args)?;
    model.set_device(&dev, o.dtype, o.seq)?;
    model.init_weights(42)?;
    let desc = model.describe();
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
        "bench: flavor {} ({} layers, {} params), batch {} x seq {}, {:?}, ac {}, {} steps, device {}",
        o.flavor,
        args.n_layers,
        desc.num_params(),
        o.batch,
        o.seq,
        o.dtype,
        o.ac,
        o.steps,
        opened.name
    );
    let tokens_per_step = (o.batch * o.seq) as f64;
    let mut phases: Vec<Phases> = Vec::new();
    let mut first_step_at = None;
    let mut last_batch = None;
    for step in 1..=o.steps {
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
        let loss = report.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        dev.synchronize()?;
        let t2 = Instant::now();
        let lr = scheduler.lr_at(step);
        let grad_norm = {
            let mut params = model.params_mut();
            let norm = clip_grad_norm(&mut params, 1.0)?;
            optimizer.step_and_refresh(&mut params, lr, o.dtype)?;
            for p in params.iter_mut() {
                p.zero_grad();
            }
            norm
        };
        scheduler.step();
        dev.synchronize()?;
        let t3 = Instant::now();
        let p = Phases {
            data: (t1 - t0).as_secs_f64(),
            fwd_bwd: (t2 - t1).as_secs_f64(),
            optim: (t3 - t2).as_secs_f64(),
            total: (t3 - t0).as_secs_f64(),
        };
        if step == 1 {
            first_step_at = Some(launch.elapsed().as_secs_f64());
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
            "step {step:>3}  loss {loss:8.4}  grad_norm {grad_norm:7.4}  lr {lr:.2e}  {:7.1} ms (data {:.1}, fwd+bwd {:.1}, optim {:.1})  tps {:>8.0}{mem}",
            p.total * 1e3,
            p.data * 1e3,
            p.fwd_bwd * 1e3,
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
    }
    reset_peak(&dev);
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
