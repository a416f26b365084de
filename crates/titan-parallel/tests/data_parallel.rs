//! FSDP, HSDP and DDP train a tiny Llama 3 on the thread backend and match a single-process
//! run of the same global batch: per-step losses and final weights within fp32 rounding, and
//! bitwise where the summation order is the same (see docs/parallelism.md).

mod common;

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use common::*;
use titan_core::{ActivationCheckpoint, BlockHooks, Executor, MicrobatchInfo, Module};
use titan_parallel::{
    run_local, sum_u64, DataParallel, DataParallelConfig, DeviceMesh, ParallelDims,
    ReshardAfterForward, ShardInit, ShardMeta,
};

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
fn fsdp_3_with_uneven_shards_accumulation_and_checkpointing_matches_one_process() {
    // dim 32, vocab 64 and kv 16 rows do not split evenly in 3: every unit carries padding.
    // Full activation checkpointing re-gathers each block before its recompute.
    check_matches_reference(
        Layout {
            accum: 2,
            reshard: ReshardAfterForward::Always,
            ac: ActivationCheckpoint::Full,
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
fn fsdp_overlap_changes_no_bits() {
    // Prefetched all-gathers and deferred reduce-scatters reorder the collectives, not the
    // arithmetic: on the host backends the results must be bitwise those of the plain path.
    for base in [
        Layout {
            accum: 2,
            ac: ActivationCheckpoint::Full,
            reshard: ReshardAfterForward::Always,
            ..Layout::new(1, 3, 3)
        },
        Layout {
            accum: 3,
            ..Layout::new(2, 2, 4)
        },
        Layout {
            reshard: ReshardAfterForward::Never,
            ..Layout::new(1, -1, 2)
        },
    ] {
        let on = train(Layout {
            overlap: true,
            ..base
        });
        let off = train(Layout {
            overlap: false,
            ..base
        });
        check_ranks_agree(&on);
        assert_eq!(on[0].0.losses, off[0].0.losses);
        assert_eq!(on[0].0.norms, off[0].0.norms);
        assert!(bitwise_same(&on[0].0.params, &off[0].0.params));
    }
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

/// Every full parameter by name.
type FullState = Vec<(String, Tensor)>;

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
    let saved: Vec<(Vec<(ShardMeta, Tensor)>, FullState)> = run_local(2, TIMEOUT, |g| {
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
        // Stepped as the trainer does: the next pass's first units start gathering.
        dp.optimizer_step(&mut model, true, |ps| -> titan_parallel::Result<()> {
            sgd(ps);
            Ok(())
        })
        .unwrap();
        dp.after_optimizer_step(&mut model, DType::F32).unwrap();
        let state = dp.sharded_state(&model).unwrap();
        // A reload drops those gathers (they carry the weights it replaces).
        dp.load_sharded(&mut model, DType::F32, |m| cut(&state, m))
            .unwrap();
        if let DataParallel::Fsdp(f) = &dp {
            assert_eq!(f.in_flight(), 0);
        }
        (state, dp.full_state(&model).unwrap())
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

#[test]
fn model_parallel_degrees_are_refused_until_implemented() {
    let out = run_local(2, TIMEOUT, |g| {
        let dims = ParallelDims::new(1, -1, 1, 2, 1, 2).unwrap();
        let mesh = DeviceMesh::new(g, dims).unwrap();
        let mut model = new_model(DType::F32);
        let cfg = DataParallelConfig::new(DType::F32);
        DataParallel::new(&mut model, &mesh, &cfg, ShardInit::Seed(SEED), &Device::Cpu)
            .unwrap_err()
            .to_string()
    })
    .unwrap();
    for o in out {
        let m = o.unwrap_or_else(|_| panic!("a rank panicked"));
        assert!(m.contains("tensor_parallel_degree = 2"), "{m}");
    }
}

#[test]
fn strategies_can_move_between_threads_and_redraw_weights() {
    fn assert_send<T: Send>() {}
    assert_send::<DataParallel>();
    assert_send::<titan_parallel::DeviceMesh>();
    // Built with zeros, then initialized: the same weights as initializing at construction.
    let out = run_local(2, TIMEOUT, |g| {
        let dims = ParallelDims::new(1, -1, 1, 1, 1, 2).unwrap();
        let mesh = DeviceMesh::new(g, dims).unwrap();
        let cfg = DataParallelConfig::new(DType::F32);
        let mut a = new_model(DType::F32);
        let mut dp_a =
            DataParallel::new(&mut a, &mesh, &cfg, ShardInit::Zeros, &Device::Cpu).unwrap();
        dp_a.init_weights(&mut a, SEED, DType::F32).unwrap();
        let mut b = new_model(DType::F32);
        let dp_b =
            DataParallel::new(&mut b, &mesh, &cfg, ShardInit::Seed(SEED), &Device::Cpu).unwrap();
        let meta = dp_a.shard_meta(&a, "output.weight").unwrap();
        assert_eq!(
            (meta.global_shape.clone(), meta.rows),
            (vec![VOCAB, 32], VOCAB / 2)
        );
        assert_eq!(dp_a.grad_sq_norm(&a).unwrap(), 0.0);
        bitwise_same(&dp_a.full_state(&a).unwrap(), &dp_b.full_state(&b).unwrap())
    })
    .unwrap();
    assert!(out.into_iter().all(|r| r.unwrap_or(false)));
}

#[test]
fn titan_optim_adamw_steps_on_shards_unchanged() {
    // AdamW state lives per shard (keyed by FQN, shaped as the shard) and matches one process.
    check_matches_reference(
        Layout {
            opt: Opt::AdamW,
            ..Layout::new(1, -1, 2)
        },
        "fsdp",
    );
    // Element-wise updates keep FSDP and DDP bitwise equal without clipping.
    let no_clip = 1e9;
    let fsdp = train(Layout {
        opt: Opt::AdamW,
        max_norm: no_clip,
        ..Layout::new(1, 2, 2)
    });
    let ddp = train(Layout {
        opt: Opt::AdamW,
        max_norm: no_clip,
        ..Layout::new(2, 1, 2)
    });
    assert_eq!(fsdp[0].0.losses, ddp[0].0.losses);
    assert!(bitwise_same(&fsdp[0].0.params, &ddp[0].0.params));
}

#[test]
fn gathering_the_steps_bf16_copies_equals_casting_the_masters() {
    // AdamW writing the bf16 compute copies in its pass (FSDP and HSDP then all-gather the
    // shards' copies; DDP computes with them) gives bitwise what casting the masters gives.
    // The refreshing runs step through `DataParallel::optimizer_step`, so under FSDP they also
    // gather the next pass's first units during the step (asserted in `train_rank`).
    for base in [
        Layout::new(1, 2, 2),
        Layout::new(2, 2, 4),
        Layout::new(2, 1, 2),
    ] {
        let layout = |opt| Layout {
            opt,
            param_dtype: DType::BF16,
            ..base
        };
        let cast = train(layout(Opt::AdamW));
        for opt in [Opt::AdamWRefresh, Opt::AdamWAlternate] {
            let copies = train(layout(opt));
            assert_eq!(
                cast[0].0.losses, copies[0].0.losses,
                "{} {opt:?}",
                cast[0].1
            );
            assert!(
                bitwise_same(&cast[0].0.params, &copies[0].0.params),
                "{} {opt:?}",
                cast[0].1
            );
        }
    }
}

#[test]
fn one_rank_clipping_agrees_with_titan_optim() {
    let mut a = new_model(DType::F32);
    a.init_weights(SEED).unwrap();
    let (t, l) = batch(0, 0..4);
    let input = a.make_batch(&t, 4, SEQ, None).unwrap();
    let labels = a.make_labels(&l).unwrap();
    Executor::default()
        .forward_backward(
            &mut a,
            &input,
            &labels,
            1.0 / valid(&l) as f64,
            &mut titan_core::NoHooks,
            MicrobatchInfo::single(),
        )
        .unwrap();
    let mut b = a.clone();
    let ours = titan_parallel::clip_grad_norm_distributed(&mut a.params_mut(), 0.1, &[]).unwrap();
    let theirs = titan_optim::clip_grad_norm(&mut b.params_mut(), 0.1).unwrap();
    assert_eq!(ours, theirs);
    assert!(ours > 0.1, "the test must actually clip (norm {ours})");
    for (pa, pb) in a.params().iter().zip(b.params()) {
        assert!(titan_core::testing::bitwise_eq(pa.grad().unwrap(), pb.grad().unwrap()).unwrap());
    }
}
