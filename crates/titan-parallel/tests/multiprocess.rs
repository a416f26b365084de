//! Real processes: this test binary launches copies of itself with `launch` (as
//! `cargo xtask train --nproc-per-node 2` will), each copy joins the TCP world from the
//! torchrun variables and plays one role. No test harness: `main` is the parent when
//! `TITAN_PARALLEL_TEST_ROLE` is unset, a rank otherwise.

mod common;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::*;
use titan_parallel::launch::{launch, LaunchConfig};
use titan_parallel::{init_process_group, CommOptions, DistEnv, EnvSource, Error, ReduceOp};

const ROLE: &str = "TITAN_PARALLEL_TEST_ROLE";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // `cargo test -- --list`: this binary has no named tests to list.
        return;
    }
    match std::env::var(ROLE) {
        Ok(role) => std::process::exit(rank_main(&role)),
        Err(_) => parent_main(),
    }
}

fn parent_main() {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let run = |role: &str, nproc: usize| {
        let cfg = LaunchConfig {
            nproc_per_node: nproc,
            program: exe.clone().into_os_string(),
            args: Vec::new(),
            log_ranks: None,
            master_port: None,
            env: vec![(OsString::from(ROLE), OsString::from(role))],
        };
        let start = Instant::now();
        let status = launch(&cfg).unwrap_or_else(|e| panic!("launching `{role}`: {e}"));
        (status, start.elapsed())
    };

    // Two processes train FSDP over TCP and match the single-process reference.
    let (status, _) = run("fsdp", 2);
    assert!(status.success(), "fsdp over TCP: {status}");
    println!("test fsdp_over_tcp_matches_one_process ... ok");

    // A rank that dies abruptly is reported by name to the survivor.
    let (status, _) = run("die", 2);
    assert!(status.success(), "peer death: {status}");
    println!("test survivor_names_the_dead_rank ... ok");

    // A failing rank makes the launcher kill the other at once (it would sleep for minutes).
    let (status, took) = run("fail", 3);
    assert_eq!(
        status.code(),
        Some(3),
        "the launcher returns the failing rank's status"
    );
    assert!(
        took < Duration::from_secs(100),
        "the other ranks were not killed (took {took:?})"
    );
    println!("test launcher_fails_fast ... ok");
}

/// One rank. Returns the process exit code.
fn rank_main(role: &str) -> i32 {
    let env = DistEnv::from_env().expect("torchrun variables from the launcher");
    assert_eq!(env.source, EnvSource::Torchrun);
    match role {
        "fsdp" => {
            let world =
                init_process_group(&env, &CommOptions::from_seconds(60, 60)).expect("TCP world");
            assert_eq!(world.backend(), "tcp");
            let (run, kind, _) = train_rank(world, Layout::new(1, -1, env.world_size));
            let reference = reference(1.0);
            let (loss_err, param_err) = (
                max_rel(&run.losses, &reference.losses),
                param_rel_err(&run.params, &reference.params),
            );
            println!(
                "{kind} over TCP: losses {:?}; rel err loss {loss_err:e}, weights {param_err:e}",
                run.losses
            );
            // The same layout on in-process threads runs the same algorithm: the same bits.
            let threads = train(Layout::new(1, -1, env.world_size));
            let same_bits = threads[0].0.losses == run.losses
                && bitwise_same(&threads[0].0.params, &run.params);
            i32::from(!(kind == "fsdp" && loss_err < 2e-6 && param_err < 5e-6 && same_bits))
        }
        "die" => {
            let world =
                init_process_group(&env, &CommOptions::from_seconds(60, 60)).expect("TCP world");
            world.barrier().expect("barrier");
            if env.rank == 1 {
                // Exit without running destructors: no goodbye, like a crash.
                std::process::exit(0);
            }
            let e = world
                .all_reduce(
                    &Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
                    ReduceOp::Sum,
                )
                .unwrap_err();
            println!("rank 0 saw: {e}");
            i32::from(!matches!(&e, Error::PeerDied { rank: 1, how, .. } if how.contains("died")))
        }
        "fail" => {
            if env.rank == 1 {
                eprintln!("rank 1 fails on purpose");
                return 3;
            }
            std::thread::sleep(Duration::from_secs(300));
            0
        }
        other => {
            eprintln!("unknown role {other}");
            2
        }
    }
}
