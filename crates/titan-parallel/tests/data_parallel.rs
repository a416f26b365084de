//! FSDP, HSDP and DDP train a tiny Llama 3 on the thread backend and match a single-process
//! run of the same global batch: per-step losses and final weights within fp32 rounding, and
//! bitwise where the summation order is the same (see docs/parallelism.md).

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use titan_core::rng::CounterRng;
use titan_core::{
    ActivationCheckpoint, BlockHooks, Executor, MicrobatchInfo, Module, NoHooks, Param,
};
use titan_models::llama3::{Llama3, LlamaArgs};
use titan_parallel::{
    clip_grad_norm_distributed, run_local, sum_f64, sum_u64, DataParallel, DataParallelConfig,
    DeviceMesh, Group, ParallelDims, ReshardAfterForward, ShardInit, ShardMeta,
};

const SEQ: usize = 16;
/// Sequences per step: divisible by every data-parallel degree tested (1, 2, 3, 4).
const GLOBAL_BATCH: usize = 12;
const VOCAB: usize = 64;
const SEED: u64 = 7;
const LR: f64 = 0.5;
const STEPS: usize = 6;
const TIMEOUT: Duration = Duration::from_secs(60);

fn args() -> LlamaArgs {
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

fn new_model(dtype: DType) -> Llama3 {
    let mut m = Llama3::new(&args()).unwrap();
    m.set_device(&Device::Cpu, dtype, SEQ).unwrap();
    m
}

/// Tokens and labels of sequence `i` at `step`; some labels are ignored (-100), unevenly
/// across sequences, so ranks see different valid-token counts.
fn sequence(step: usize, i: usize) -> (Vec<u32>, Vec<i64>) {
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
fn batch(step: usize, rows: std::ops::Range<usize>) -> (Vec<u32>, Vec<i64>) {
    let (mut t, mut l) = (Vec::new(), Vec::new());
    for i in rows {
        let (a, b) = sequence(step, i);
        t.extend(a);
        l.extend(b);
    }
    (t, l)
}

fn valid(labels: &[i64]) -> u64 {
    labels.iter().filter(|&&l| l >= 0).count() as u64
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Plain SGD: what any optimizer does with the view it is given.
fn sgd(params: &mut [&mut Param]) {
    for p in params.iter_mut() {
        let Some(g) = p.grad().cloned() else { continue };
        let w = (p.master().unwrap() - (g * LR).unwrap()).unwrap();
        p.set_master(w).unwrap();
    }
}

struct Run {
    losses: Vec<f64>,
    norms: Vec<f64>,
    /// Full f32 parameters at the end, in state-dict order.
    params: Vec<(String, Tensor)>,
}

/// The single-process reference: the whole global batch in one microbatch, no hooks.
fn reference(max_norm: f64) -> Run {
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
        sgd(&mut model.params_mut());
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
struct Layout {
    dp_replicate: usize,
    dp_shard: i64,
    world: usize,
    /// Microbatches per rank per step (gradient accumulation).
    accum: usize,
    max_norm: f64,
    param_dtype: DType,
    reshard: ReshardAfterForward,
}

impl Layout {
    fn new(dp_replicate: usize, dp_shard: i64, world: usize) -> Self {
        Self {
            dp_replicate,
            dp_shard,
            world,
            accum: 1,
            max_norm: 1.0,
            param_dtype: DType::F32,
            reshard: ReshardAfterForward::Default,
        }
    }
}

/// One rank of a data-parallel run; returns its view of the run and its strategy's kind.
fn train_rank(world: Group, layout: Layout) -> (Run, &'static str, usize) {
    let dims =
        ParallelDims::new(layout.dp_replicate, layout.dp_shard, 1, 1, 1, world.size()).unwrap();
    let mesh = DeviceMesh::new(world, dims).unwrap();
    let mut model = new_model(layout.param_dtype);
    let cfg = DataParallelConfig {
        reshard_after_forward: layout.reshard,
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
    let exec = Executor::new(ActivationCheckpoint::None);
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
        if let DataParallel::Fsdp(_) = &dp {
            assert!(
                model
                    .params()
                    .iter()
                    .all(|p| !p.has_compute() && p.grad().is_none()),
                "weights resharded after backward"
            );
        }
        losses.push(sum_f64(mesh.loss().as_ref(), local_loss).unwrap());
        norms.push(dp.clip_grad_norm(&mut model, layout.max_norm).unwrap());
        sgd(&mut dp.optimizer_params(&mut model));
        dp.after_optimizer_step(&mut model, layout.param_dtype)
            .unwrap();
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

fn train(layout: Layout) -> Vec<(Run, &'static str, usize)> {
    run_local(layout.world, TIMEOUT, |g| train_rank(g, layout))
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| panic!("a rank panicked")))
        .collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

fn param_rel_err(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            titan_core::testing::rel_err(ta, tb).unwrap()
        })
        .fold(0.0, f64::max)
}

fn bitwise_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.iter()
        .zip(b)
        .all(|((na, ta), (nb, tb))| na == nb && titan_core::testing::bitwise_eq(ta, tb).unwrap())
}

/// Every rank must report the same losses, norms and weights (bitwise).
fn check_ranks_agree(runs: &[(Run, &'static str, usize)]) {
    for (r, _, _) in &runs[1..] {
        assert_eq!(r.losses, runs[0].0.losses);
        assert_eq!(r.norms, runs[0].0.norms);
        assert!(bitwise_same(&r.params, &runs[0].0.params));
    }
}

fn check_matches_reference(layout: Layout, kind: &str) -> Vec<(Run, &'static str, usize)> {
    let reference = reference(layout.max_norm);
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

#[test]
fn fsdp_2_and_4_match_one_process_and_shard_memory() {
    let total: usize = new_model(DType::F32)
        .params()
        .iter()
        .map(|p| p.numel())
        .sum();
    for world in [2, 4] {
        let runs = check_matches_reference(Layout::new(1, -1, world), "fsdp");
        let local: Vec<usize> = runs.iter().map(|r| r.2).collect();
        assert_eq!(
            local.iter().sum::<usize>(),
            total,
            "shards cover the model exactly once"
        );
        assert!(
            local.iter().all(|&n| n <= total / world + 64),
            "world {world}: per-rank elements {local:?} of {total}"
        );
    }
}

#[test]
fn fsdp_3_with_uneven_shards_and_accumulation_matches_one_process() {
    // dim 32, vocab 64 and kv 16 rows do not split evenly in 3: every unit carries padding.
    check_matches_reference(
        Layout {
            accum: 2,
            reshard: ReshardAfterForward::Always,
            ..Layout::new(1, 3, 3)
        },
        "fsdp",
    );
}

#[test]
fn hsdp_2x2_matches_one_process() {
    check_matches_reference(
        Layout {
            accum: 3,
            ..Layout::new(2, 2, 4)
        },
        "hsdp",
    );
}

#[test]
fn ddp_2_matches_one_process() {
    check_matches_reference(
        Layout {
            accum: 2,
            ..Layout::new(2, 1, 2)
        },
        "ddp",
    );
}

#[test]
fn bitwise_equal_layouts() {
    // Without clipping (whose norm is summed per shard under FSDP, per tensor under DDP),
    // FSDP and DDP over the same two data shards add the same two gradients in the same order.
    let no_clip = 1e9;
    let fsdp = train(Layout {
        max_norm: no_clip,
        reshard: ReshardAfterForward::Never,
        ..Layout::new(1, 2, 2)
    });
    let ddp = train(Layout {
        max_norm: no_clip,
        ..Layout::new(2, 1, 2)
    });
    assert_eq!(fsdp[0].0.losses, ddp[0].0.losses);
    assert!(
        bitwise_same(&fsdp[0].0.params, &ddp[0].0.params),
        "FSDP-2 and DDP-2 weights must be bitwise equal"
    );
    // One FSDP rank runs exactly the single-process arithmetic.
    let one = train(Layout {
        max_norm: no_clip,
        ..Layout::new(1, -1, 1)
    });
    let reference = reference(no_clip);
    assert_eq!(one[0].1, "single");
    assert_eq!(one[0].0.losses, reference.losses);
    assert!(bitwise_same(&one[0].0.params, &reference.params));
}

#[test]
fn bf16_gather_tracks_the_f32_reference() {
    let reference = reference(1.0);
    let runs = train(Layout {
        param_dtype: DType::BF16,
        ..Layout::new(1, -1, 2)
    });
    check_ranks_agree(&runs);
    let err = max_rel(&runs[0].0.losses, &reference.losses);
    assert!(
        err < 2e-2,
        "bf16 losses {:?} vs f32 {:?}",
        runs[0].0.losses,
        reference.losses
    );
}

/// Rows `[offset, offset + rows)` of a parameter, cut from pieces saved under another layout.
fn cut(saved: &[(ShardMeta, Tensor)], want: &ShardMeta) -> titan_parallel::Result<Tensor> {
    let mut pieces = Vec::new();
    let mut pieces_sorted: Vec<&(ShardMeta, Tensor)> = saved
        .iter()
        .filter(|(m, _)| m.name == want.name && m.writes_checkpoint())
        .collect();
    pieces_sorted.sort_by_key(|(m, _)| m.offset);
    for (m, t) in pieces_sorted {
        let lo = want.offset.max(m.offset);
        let hi = (want.offset + want.rows).min(m.offset + m.rows);
        if lo < hi {
            pieces.push(t.narrow(0, lo - m.offset, hi - lo)?);
        }
    }
    if pieces.is_empty() {
        return Ok(Tensor::zeros(
            want.local_shape().as_slice(),
            DType::F32,
            &Device::Cpu,
        )?);
    }
    Ok(Tensor::cat(&pieces, 0)?)
}

#[test]
fn checkpoint_shards_reshard_from_2_ranks_to_4_and_to_1() {
    // Two FSDP ranks save what they hold after one step.
    let saved: Vec<(Vec<(ShardMeta, Tensor)>, Vec<(String, Tensor)>)> =
        run_local(2, TIMEOUT, |g| {
            let dims = ParallelDims::new(1, -1, 1, 1, 1, 2).unwrap();
            let mesh = DeviceMesh::new(g, dims).unwrap();
            let mut model = new_model(DType::F32);
            let mut dp = DataParallel::new(
                &mut model,
                &mesh,
                &DataParallelConfig::new(DType::F32),
                ShardInit::Seed(SEED),
                &Device::Cpu,
            )
            .unwrap();
            let (t, l) = batch(0, mesh.dp_rank() * 6..mesh.dp_rank() * 6 + 6);
            let input = model.make_batch(&t, 6, SEQ, None).unwrap();
            let labels = model.make_labels(&l).unwrap();
            let tokens = sum_u64(mesh.dp().as_ref(), valid(&l)).unwrap();
            Executor::default()
                .forward_backward(
                    &mut model,
                    &input,
                    &labels,
                    1.0 / tokens as f64,
                    &mut dp,
                    MicrobatchInfo::single(),
                )
                .unwrap();
            sgd(&mut dp.optimizer_params(&mut model));
            dp.after_optimizer_step(&mut model, DType::F32).unwrap();
            (
                dp.sharded_state(&model).unwrap(),
                dp.full_state(&model).unwrap(),
            )
        })
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| panic!("a rank panicked")))
        .collect();
    let full = saved[0].1.clone();
    let all_pieces: Vec<(ShardMeta, Tensor)> = saved.into_iter().flat_map(|(s, _)| s).collect();
    // Every piece carries the global shape and its rows; no padding is saved.
    for (m, t) in &all_pieces {
        assert_eq!(t.dims(), m.local_shape().as_slice(), "{}", m.name);
    }

    for world in [4, 1] {
        let loaded = run_local(world, TIMEOUT, |g| {
            let dims = ParallelDims::new(1, -1, 1, 1, 1, world).unwrap();
            let mesh = DeviceMesh::new(g, dims).unwrap();
            let mut model = new_model(DType::F32);
            let cfg = DataParallelConfig::new(DType::F32);
            let mut dp =
                DataParallel::new(&mut model, &mesh, &cfg, ShardInit::Zeros, &Device::Cpu).unwrap();
            dp.load_sharded(&mut model, DType::F32, |m| cut(&all_pieces, m))
                .unwrap();
            dp.full_state(&model).unwrap()
        })
        .unwrap();
        for r in loaded {
            let state = r.unwrap_or_else(|_| panic!("a rank panicked"));
            assert!(
                bitwise_same(&state, &full),
                "world {world}: reloaded weights differ"
            );
        }
    }
}

#[test]
fn a_rank_that_dies_mid_step_fails_the_others_with_its_name() {
    let outcomes = run_local(3, Duration::from_secs(5), |g| {
        let dims = ParallelDims::new(1, -1, 1, 1, 1, 3).unwrap();
        let mesh = DeviceMesh::new(g, dims).unwrap();
        let mut model = new_model(DType::F32);
        let mut dp = DataParallel::new(
            &mut model,
            &mesh,
            &DataParallelConfig::new(DType::F32),
            ShardInit::Seed(SEED),
            &Device::Cpu,
        )
        .unwrap();
        if mesh.world().rank() == 1 {
            drop((dp, mesh));
            panic!("rank 1 dies before its first forward");
        }
        let (t, l) = batch(0, 0..4);
        let input = model.make_batch(&t, 4, SEQ, None).unwrap();
        let labels = model.make_labels(&l).unwrap();
        let hooks: &mut dyn BlockHooks = &mut dp;
        Executor::default()
            .forward_backward(
                &mut model,
                &input,
                &labels,
                0.01,
                hooks,
                MicrobatchInfo::single(),
            )
            .unwrap_err()
            .to_string()
    })
    .unwrap();
    assert!(outcomes[1].is_err());
    for o in [&outcomes[0], &outcomes[2]] {
        let msg = o
            .as_ref()
            .unwrap_or_else(|_| panic!("a surviving rank panicked"));
        assert!(
            msg.contains("rank 1") && msg.contains("all_gather"),
            "{msg}"
        );
    }
}
