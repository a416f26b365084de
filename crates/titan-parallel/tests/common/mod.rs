//! A tiny Llama 3 trained single-process (the reference) or under any data-parallel layout,
//! shared by the thread-backend tests and the multi-process test.
#![allow(dead_code)]

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use titan_core::rng::CounterRng;
use titan_core::{ActivationCheckpoint, Executor, MicrobatchInfo, Module, NoHooks, Param};
use titan_models::llama3::{Llama3, LlamaArgs};
use titan_parallel::{
    clip_grad_norm_distributed, run_local, sum_f64, sum_u64, DataParallel, DataParallelConfig,
    DeviceMesh, Group, ParallelDims, ReshardAfterForward, ShardInit,
};

pub const SEQ: usize = 16;
/// Sequences per step: divisible by every data-parallel degree tested (1, 2, 3, 4).
pub const GLOBAL_BATCH: usize = 12;
pub const VOCAB: usize = 64;
pub const SEED: u64 = 7;
pub const LR: f64 = 0.5;
pub const STEPS: usize = 6;
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn args() -> LlamaArgs {
    LlamaArgs {
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(2),
        vocab_size: VOCAB,
        multiple_of: 16,
        ..LlamaArgs::flavor("debugmodel").unwrap()
    }
}

pub fn new_model(dtype: DType) -> Llama3 {
    let mut m = Llama3::new(&args()).unwrap();
    m.set_device(&Device::Cpu, dtype, SEQ).unwrap();
    m
}

/// Tokens and labels of sequence `i` at `step`; some labels are ignored (-100), unevenly
/// across sequences, so ranks see different valid-token counts.
pub fn sequence(step: usize, i: usize) -> (Vec<u32>, Vec<i64>) {
    let rng = CounterRng::for_param(step as u64, "data");
    let toks: Vec<u32> = (0..=SEQ)
        .map(|p| {
            ((rng.uniform((i * 100 + p) as u64, 0) * VOCAB as f64) as u32).min(VOCAB as u32 - 1)
        })
        .collect();
    let mut labels: Vec<i64> = toks[1..].iter().map(|&t| t as i64).collect();
    for l in labels.iter_mut().take(i % 4) {
        *l = -100;
    }
    (toks[..SEQ].to_vec(), labels)
}

/// The batch of sequences `rows` at `step`.
pub fn batch(step: usize, rows: std::ops::Range<usize>) -> (Vec<u32>, Vec<i64>) {
    let (mut t, mut l) = (Vec::new(), Vec::new());
    for i in rows {
        let (a, b) = sequence(step, i);
        t.extend(a);
        l.extend(b);
    }
    (t, l)
}

pub fn valid(labels: &[i64]) -> u64 {
    labels.iter().filter(|&&l| l >= 0).count() as u64
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Plain SGD: what any optimizer does with the view it is given.
pub fn sgd(params: &mut [&mut Param]) {
    for p in params.iter_mut() {
        let Some(g) = p.grad().cloned() else { continue };
        let w = (p.master().unwrap() - (g * LR).unwrap()).unwrap();
        p.set_master(w).unwrap();
    }
}

/// Which optimizer a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    Sgd,
    /// titan-optim's AdamW (torchtitan defaults, lr 1e-2), unchanged.
    AdamW,
    /// The same AdamW through `step_and_refresh`, which writes the compute copies of what it
    /// steps (FSDP then gathers those instead of casting the masters), followed by
    /// `DataParallel::after_refreshing_step`: the trainer's path.
    AdamWRefresh,
    /// `AdamWRefresh` on even steps, plain `AdamW` on odd ones: a copy left from an even step
    /// must never be gathered after an odd step changed the masters.
    AdamWAlternate,
}

/// An optimizer of either kind.
pub enum Stepper {
    Sgd,
    AdamW(titan_optim::Optimizer),
}

impl Stepper {
    pub fn new(opt: Opt) -> Self {
        match opt {
            Opt::Sgd => Stepper::Sgd,
            Opt::AdamW | Opt::AdamWRefresh | Opt::AdamWAlternate => Stepper::AdamW(
                titan_optim::Optimizer::new(titan_optim::AdamWConfig::adamw()).unwrap(),
            ),
        }
    }
    pub fn step(&mut self, params: &mut [&mut Param]) {
        match self {
            Stepper::Sgd => sgd(params),
            Stepper::AdamW(o) => o.step(params, 1e-2).unwrap(),
        }
    }
    /// A step that also rebuilds the compute copies in `dtype` (AdamW only).
    pub fn step_and_refresh(&mut self, params: &mut [&mut Param], dtype: DType) {
        match self {
            Stepper::Sgd => panic!("step_and_refresh is an AdamW path"),
            Stepper::AdamW(o) => o.step_and_refresh(params, 1e-2, dtype).unwrap(),
        }
    }
}

pub struct Run {
    pub losses: Vec<f64>,
    pub norms: Vec<f64>,
    /// Full f32 parameters at the end, in state-dict order.
    pub params: Vec<(String, Tensor)>,
}

/// The single-process reference: the whole global batch in one microbatch, no hooks.
pub fn reference(max_norm: f64) -> Run {
    reference_with(max_norm, Opt::Sgd)
}

/// The single-process reference with optimizer `opt`.
pub fn reference_with(max_norm: f64, opt: Opt) -> Run {
    let mut stepper = Stepper::new(opt);
    let mut model = new_model(DType::F32);
    model.init_weights(SEED).unwrap();
    let exec = Executor::new(ActivationCheckpoint::None);
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..STEPS {
        let (t, l) = batch(step, 0..GLOBAL_BATCH);
        let input = model.make_batch(&t, GLOBAL_BATCH, SEQ, None).unwrap();
        let labels = model.make_labels(&l).unwrap();
        let r = exec
            .forward_backward(
                &mut model,
                &input,
                &labels,
                1.0 / valid(&l) as f64,
                &mut NoHooks,
                MicrobatchInfo::single(),
            )
            .unwrap();
        losses.push(scalar(&r.loss));
        norms.push(clip_grad_norm_distributed(&mut model.params_mut(), max_norm, &[]).unwrap());
        stepper.step(&mut model.params_mut());
        model.refresh_compute().unwrap();
        for p in model.params_mut() {
            p.zero_grad();
        }
    }
    let params = model
        .params()
        .iter()
        .map(|p| (p.name().to_string(), p.master().unwrap().clone()))
        .collect();
    Run {
        losses,
        norms,
        params,
    }
}

#[derive(Clone, Copy)]
pub struct Layout {
    pub dp_replicate: usize,
    pub dp_shard: i64,
    pub world: usize,
    /// Microbatches per rank per step (gradient accumulation).
    pub accum: usize,
    pub max_norm: f64,
    pub opt: Opt,
    pub param_dtype: DType,
    pub reshard: ReshardAfterForward,
    pub ac: ActivationCheckpoint,
    /// FSDP prefetch / deferred reduce-scatter.
    pub overlap: bool,
}

impl Layout {
    pub fn new(dp_replicate: usize, dp_shard: i64, world: usize) -> Self {
        Self {
            dp_replicate,
            dp_shard,
            world,
            accum: 1,
            max_norm: 1.0,
            opt: Opt::Sgd,
            param_dtype: DType::F32,
            reshard: ReshardAfterForward::Default,
            ac: ActivationCheckpoint::None,
            overlap: true,
        }
    }
}

/// One rank of a data-parallel run; returns its view of the run and its strategy's kind.
pub fn train_rank(world: Group, layout: Layout) -> (Run, &'static str, usize) {
    let dims =
        ParallelDims::new(layout.dp_replicate, layout.dp_shard, 1, 1, 1, world.size()).unwrap();
    let mesh = DeviceMesh::new(world, dims).unwrap();
    let mut model = new_model(layout.param_dtype);
    let cfg = DataParallelConfig {
        reshard_after_forward: layout.reshard,
        overlap: layout.overlap,
        ..DataParallelConfig::new(layout.param_dtype)
    };
    let mut dp =
        DataParallel::new(&mut model, &mesh, &cfg, ShardInit::Seed(SEED), &Device::Cpu).unwrap();
    if let DataParallel::Fsdp(_) = &dp {
        // The model itself holds nothing: the shards live in FSDP.
        assert!(model
            .params()
            .iter()
            .all(|p| p.master().is_none() && !p.has_compute()));
    }
    let local_numel = match &dp {
        DataParallel::Fsdp(f) => f.local_numel(),
        _ => model.params().iter().map(|p| p.numel()).sum(),
    };

    let per_rank = GLOBAL_BATCH / dims.dp();
    assert_eq!(
        per_rank % layout.accum,
        0,
        "microbatches must split the rank's batch evenly"
    );
    let per_mb = per_rank / layout.accum;
    let first = mesh.dp_rank() * per_rank;
    let mut stepper = Stepper::new(layout.opt);
    let exec = Executor::new(layout.ac);
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..STEPS {
        let (_, local_labels) = batch(step, first..first + per_rank);
        let global_tokens = sum_u64(mesh.dp().as_ref(), valid(&local_labels)).unwrap();
        let mut local_loss = 0.0;
        for k in 0..layout.accum {
            let (t, l) = batch(step, first + k * per_mb..first + (k + 1) * per_mb);
            let input = model.make_batch(&t, per_mb, SEQ, None).unwrap();
            let labels = model.make_labels(&l).unwrap();
            let mb = MicrobatchInfo {
                index: k,
                count: layout.accum,
                backward: true,
            };
            let r = exec
                .forward_backward(
                    &mut model,
                    &input,
                    &labels,
                    1.0 / global_tokens as f64,
                    &mut dp,
                    mb,
                )
                .unwrap();
            local_loss += scalar(&r.loss);
        }
        if let DataParallel::Fsdp(f) = &dp {
            assert!(
                model
                    .params()
                    .iter()
                    .all(|p| !p.has_compute() && p.grad().is_none()),
                "weights resharded after backward"
            );
            assert_eq!(f.in_flight(), 0, "every collective finished by the pass");
        }
        losses.push(sum_f64(mesh.loss().as_ref(), local_loss).unwrap());
        norms.push(dp.clip_grad_norm(&mut model, layout.max_norm).unwrap());
        let refresh = match layout.opt {
            Opt::AdamWRefresh => true,
            Opt::AdamWAlternate => step % 2 == 0,
            Opt::Sgd | Opt::AdamW => false,
        };
        if refresh {
            // The trainer's path: under FSDP the stem's and first block's shards are stepped
            // first and gathered for the next pass during the rest of the step.
            let next_pass = step + 1 < STEPS;
            dp.optimizer_step(&mut model, next_pass, |ps| -> titan_parallel::Result<()> {
                stepper.step_and_refresh(ps, layout.param_dtype);
                Ok(())
            })
            .unwrap();
            if let DataParallel::Fsdp(f) = &dp {
                let expected = if next_pass && layout.overlap { 2 } else { 0 };
                assert_eq!(f.in_flight(), expected, "next pass's gathers started");
            }
            dp.after_refreshing_step(&mut model);
        } else {
            stepper.step(&mut dp.optimizer_params(&mut model));
            dp.after_optimizer_step(&mut model, layout.param_dtype)
                .unwrap();
        }
    }
    let params = dp.full_state(&model).unwrap();
    (
        Run {
            losses,
            norms,
            params,
        },
        dp.kind(),
        local_numel,
    )
}

pub fn train(layout: Layout) -> Vec<(Run, &'static str, usize)> {
    run_local(layout.world, TIMEOUT, |g| train_rank(g, layout))
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| panic!("a rank panicked")))
        .collect()
}

pub fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

pub fn param_rel_err(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            titan_core::testing::rel_err(ta, tb).unwrap()
        })
        .fold(0.0, f64::max)
}

pub fn bitwise_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.iter()
        .zip(b)
        .all(|((na, ta), (nb, tb))| na == nb && titan_core::testing::bitwise_eq(ta, tb).unwrap())
}

/// Every rank must report the same losses, norms and weights (bitwise).
pub fn check_ranks_agree(runs: &[(Run, &'static str, usize)]) {
    for (r, _, _) in &runs[1..] {
        assert_eq!(r.losses, runs[0].0.losses);
        assert_eq!(r.norms, runs[0].0.norms);
        assert!(bitwise_same(&r.params, &runs[0].0.params));
    }
}

pub fn check_matches_reference(layout: Layout, kind: &str) -> Vec<(Run, &'static str, usize)> {
    let reference = reference_with(layout.max_norm, layout.opt);
    let runs = train(layout);
    assert_eq!(runs[0].1, kind);
    check_ranks_agree(&runs);
    let run = &runs[0].0;
    assert!(
        run.losses[STEPS - 1] < run.losses[0] - 0.05,
        "training must make progress: {:?}",
        run.losses
    );
    let loss_err = max_rel(&run.losses, &reference.losses);
    let norm_err = max_rel(&run.norms, &reference.norms);
    let param_err = param_rel_err(&run.params, &reference.params);
    eprintln!(
        "{kind} {}x{}: loss rel {loss_err:e}, norm rel {norm_err:e}, weights rel {param_err:e}",
        layout.dp_replicate, layout.dp_shard
    );
    assert!(
        loss_err < 2e-6,
        "{kind}: losses {:?} vs {:?} (rel {loss_err:e})",
        run.losses,
        reference.losses
    );
    assert!(
        norm_err < 2e-5,
        "{kind}: norms {:?} vs {:?}",
        run.norms,
        reference.norms
    );
    assert!(param_err < 5e-6, "{kind}: weights differ by {param_err:e}");
    runs
}
