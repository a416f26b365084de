//! Collectives on the in-process thread backend and on TCP over loopback.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use titan_parallel::{
    init_process_group, run_local, CommOptions, DistEnv, EnvSource, Error, Group, ProcessGroup,
    ReduceOp, Rendezvous, Result,
};

const T: Duration = Duration::from_secs(20);

/// Rank `r`'s test values: distinct per rank and element, not exactly representable sums.
fn values(r: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (r as f32 + 1.0) * 0.1 + i as f32 * 1.37e-3)
        .collect()
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Runs `f` on every rank of an in-process world and returns the per-rank results.
fn on_threads<R: Send>(n: usize, f: impl Fn(Group) -> R + Sync) -> Vec<R> {
    run_local(n, T, f)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| panic!("a rank panicked")))
        .collect()
}

/// Checks every collective on one rank of a world of any size.
fn exercise(g: &dyn ProcessGroup) -> Result<()> {
    let (r, n) = (g.rank(), g.size());
    // all_reduce: sum in rank order, bitwise.
    let x = tensor(values(r, 6), &[2, 3]);
    let sum = g.all_reduce(&x, ReduceOp::Sum)?;
    let mut expect = values(0, 6);
    for q in 1..n {
        for (e, v) in expect.iter_mut().zip(values(q, 6)) {
            *e += v;
        }
    }
    assert_eq!(
        bits(&sum),
        expect.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(sum.dims(), &[2, 3]);
    let avg = g
        .all_reduce(&x, ReduceOp::Avg)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(avg, expect.iter().map(|e| e / n as f32).collect::<Vec<_>>());
    let max = g
        .all_reduce(&x, ReduceOp::Max)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(max, values(n - 1, 6));
    let min = g
        .all_reduce(&x, ReduceOp::Min)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(min, values(0, 6));

    // bf16 all_reduce accumulates in f32 and rounds once.
    let xb = Tensor::from_vec(vec![bf16::from_f32(r as f32 + 0.5); 4], 4, &Device::Cpu)?;
    let sb = g.all_reduce(&xb, ReduceOp::Sum)?;
    assert_eq!(sb.dtype(), DType::BF16);
    let want: f32 = (0..n).map(|q| q as f32 + 0.5).sum();
    assert_eq!(sb.to_vec1::<bf16>()?, vec![bf16::from_f32(want); 4]);

    // all_gather: dim-0 concatenation in rank order.
    let gathered = g.all_gather(&tensor(values(r, 6), &[2, 3]))?;
    assert_eq!(gathered.dims(), &[2 * n, 3]);
    let all: Vec<f32> = (0..n).flat_map(|q| values(q, 6)).collect();
    assert_eq!(gathered.flatten_all()?.to_vec1::<f32>()?, all);

    // reduce_scatter: rank r gets chunk r of the sum.
    let big = tensor(values(r, 4 * n), &[2 * n, 2]);
    let mine = g.reduce_scatter(&big, ReduceOp::Sum)?;
    assert_eq!(mine.dims(), &[2, 2]);
    let mut full = values(0, 4 * n);
    for q in 1..n {
        for (e, v) in full.iter_mut().zip(values(q, 4 * n)) {
            *e += v;
        }
    }
    assert_eq!(
        bits(&mine),
        full[4 * r..4 * r + 4]
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    );

    // broadcast from the last rank.
    let b = g.broadcast(&tensor(values(r, 3), &[3]), n - 1)?;
    assert_eq!(b.to_vec1::<f32>()?, values(n - 1, 3));

    // send/recv around a ring (even ranks send first, so no rank waits on a cycle).
    if n > 1 {
        let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
        let msg = tensor(values(r, 2), &[2]);
        let got = if r % 2 == 0 {
            g.send(&msg, next)?;
            g.recv(&candle_core::Shape::from(2), DType::F32, prev, &Device::Cpu)?
        } else {
            let got = g.recv(&candle_core::Shape::from(2), DType::F32, prev, &Device::Cpu)?;
            g.send(&msg, next)?;
            got
        };
        assert_eq!(got.to_vec1::<f32>()?, values(prev, 2));
    }
    g.barrier()?;
    Ok(())
}

#[test]
fn collectives_are_correct_and_bitwise_identical_on_every_rank_for_sizes_1_to_4() {
    for n in 1..=4 {
        let sums = on_threads(n, |g| {
            exercise(g.as_ref()).unwrap();
            let x = tensor(values(g.rank(), 5), &[5]);
            bits(&g.all_reduce(&x, ReduceOp::Sum).unwrap())
        });
        assert!(
            sums.windows(2).all(|w| w[0] == w[1]),
            "world {n}: ranks got different bits"
        );
    }
}

#[test]
fn splits_form_the_requested_groups() {
    let out = on_threads(4, |world| {
        let r = world.rank();
        // Even and odd ranks, ordered by descending rank.
        let g = world
            .split(Some((r % 2) as u32), (10 - r) as u32, "parity")
            .unwrap()
            .unwrap();
        let members = g.global_ranks().to_vec();
        let s = g
            .all_reduce(&tensor(vec![r as f32], &[1]), ReduceOp::Sum)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        // Rank 3 opts out of the second split.
        let none = world
            .split(if r == 3 { None } else { Some(0) }, r as u32, "three")
            .unwrap();
        let three = none.map(|g| g.global_ranks().to_vec());
        // Explicit partition: {0, 1}, {2}; rank 3 in none.
        let part = world
            .split_by_ranks(&[vec![1, 0], vec![2]], "pairs")
            .unwrap();
        let part_members = part.as_ref().map(|g| g.global_ranks().to_vec());
        if let Some(p) = &part {
            exercise(p.as_ref()).unwrap();
        }
        (members, s, three, part_members)
    });
    assert_eq!(out[0].0, vec![2, 0]);
    assert_eq!(out[1].0, vec![3, 1]);
    assert_eq!(out[0].1, 2.0);
    assert_eq!(out[3].1, 4.0);
    assert_eq!(out[0].2, Some(vec![0, 1, 2]));
    assert_eq!(out[3].2, None);
    assert_eq!(out[0].3, Some(vec![1, 0]));
    assert_eq!(out[2].3, Some(vec![2]));
    assert_eq!(out[3].3, None);
}

#[test]
fn shape_mismatch_fails_on_every_rank_with_both_shapes() {
    let errs = on_threads(3, |g| {
        let rows = if g.rank() == 2 { 3 } else { 2 };
        g.all_reduce(
            &Tensor::zeros((rows, 2), DType::F32, &Device::Cpu).unwrap(),
            ReduceOp::Sum,
        )
        .unwrap_err()
    });
    for e in errs {
        assert!(matches!(e, Error::Mismatch { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("[2, 2]") && m.contains("[3, 2]") && m.contains("global rank 2"),
            "{m}"
        );
    }
}

#[test]
fn local_argument_errors_say_how_to_fix() {
    on_threads(3, |g| {
        let e = g
            .reduce_scatter(
                &Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap(),
                ReduceOp::Sum,
            )
            .unwrap_err();
        assert!(e.to_string().contains("multiple of 3"), "{e}");
        let e = g
            .all_reduce(
                &Tensor::zeros(2, DType::I64, &Device::Cpu).unwrap(),
                ReduceOp::Avg,
            )
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let e = g
            .broadcast(&Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(), 7)
            .unwrap_err();
        assert!(e.to_string().contains("not a rank"), "{e}");
    });
}

#[test]
fn a_rank_that_never_arrives_is_named_by_every_other_rank() {
    let t = Duration::from_millis(300);
    let outcomes = run_local(3, t, |g| {
        if g.rank() == 1 {
            // Stays alive past the others' timeout but never joins the collective.
            std::thread::sleep(Duration::from_millis(1200));
            return None;
        }
        Some(
            g.all_reduce(
                &Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
                ReduceOp::Sum,
            )
            .unwrap_err(),
        )
    })
    .unwrap();
    for o in outcomes.into_iter().filter_map(|o| o.unwrap()) {
        match &o {
            Error::Timeout { missing, .. } => assert_eq!(missing, &vec![1], "{o}"),
            other => panic!("expected a timeout naming rank 1, got {other}"),
        }
        assert!(o.to_string().contains("comm.train_timeout_seconds"), "{o}");
    }
}

#[test]
fn a_rank_that_dies_is_reported_at_once() {
    let outcomes = run_local(3, T, |g| {
        if g.rank() == 2 {
            drop(g);
            panic!("rank 2 crashes");
        }
        let start = std::time::Instant::now();
        let e = g
            .all_reduce(
                &Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
                ReduceOp::Sum,
            )
            .unwrap_err();
        (e, start.elapsed())
    })
    .unwrap();
    assert!(outcomes[2].is_err(), "rank 2 panicked");
    for o in outcomes.into_iter().take(2) {
        let (e, took) = o.unwrap_or_else(|_| panic!("ranks 0 and 1 must not panic"));
        assert!(matches!(e, Error::PeerDied { rank: 2, .. }), "{e}");
        // Reported from the departure, not from the 20 s timeout.
        assert!(took < T, "took {took:?}");
    }
}

fn tcp_env(rank: usize, world: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        local_rank: rank,
        world_size: world,
        local_world_size: world,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        source: EnvSource::Torchrun,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_backend_runs_the_same_collectives_over_loopback() {
    let port = free_port();
    let opts = CommOptions {
        init_timeout: T,
        train_timeout: T,
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|r| {
                s.spawn(move || {
                    let g = init_process_group(&tcp_env(r, 3, port), &opts).unwrap();
                    assert_eq!(g.backend(), "tcp");
                    exercise(g.as_ref()).unwrap();
                    let sub = g
                        .split_by_ranks(&[vec![0, 2], vec![1]], "sub")
                        .unwrap()
                        .unwrap();
                    exercise(sub.as_ref()).unwrap();
                    g.barrier().unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn tcp_rendezvous_names_the_rank_that_never_arrives() {
    let port = free_port();
    let opts = CommOptions {
        init_timeout: Duration::from_millis(800),
        train_timeout: T,
    };
    let e = init_process_group(&tcp_env(0, 2, port), &opts).unwrap_err();
    match &e {
        Error::Timeout { missing, .. } => assert_eq!(missing, &vec![1], "{e}"),
        other => panic!("expected a rendezvous timeout naming rank 1, got {other}"),
    }
}

#[test]
fn tcp_peer_that_leaves_is_reported() {
    let port = free_port();
    let opts = CommOptions {
        init_timeout: T,
        train_timeout: T,
    };
    std::thread::scope(|s| {
        let leaver = s.spawn(move || {
            let g = init_process_group(&tcp_env(1, 2, port), &opts).unwrap();
            g.barrier().unwrap();
            drop(g);
        });
        let g = init_process_group(&tcp_env(0, 2, port), &opts).unwrap();
        g.barrier().unwrap();
        leaver.join().unwrap();
        let e = g
            .all_reduce(
                &Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
                ReduceOp::Sum,
            )
            .unwrap_err();
        assert!(matches!(e, Error::PeerDied { rank: 1, .. }), "{e}");
        assert!(e.to_string().contains("left the group"), "{e}");
    });
}

#[test]
fn rank0_shares_a_value_through_the_store() {
    let port = free_port();
    let got: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|r| {
                s.spawn(move || {
                    let rdzv = Rendezvous::connect(&tcp_env(r, 3, port), T).unwrap();
                    rdzv.share_from_rank0("nccl_id", || Ok(vec![7u8; 128]), T)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(got.iter().all(|v| v == &vec![7u8; 128]));
}
