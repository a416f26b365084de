//! The trainer under titan-parallel's strategies, ranks as threads: FSDP on 2 ranks trains and
//! checkpoints its shards; the checkpoint resumes on 1 rank (resharding end to end) and on 2.

use std::time::Duration;

use titan_trainer::parallel::DataParallelStrategy;
use titan_trainer::{llama::llama3_spec, train::train_with, JobConfig, RunContext, TrainOutcome};

mod common;

fn cfg(dump: &std::path::Path, steps: usize, extra: &[&str]) -> JobConfig {
    let mut all = vec![
        "--checkpoint.interval",
        "2",
        "--checkpoint.last_save_model_only=false",
    ];
    all.extend_from_slice(extra);
    common::tiny_config(dump, steps, &all)
}

fn run_ranks(n: usize, cfg: &JobConfig) -> Vec<TrainOutcome> {
    let groups = titan_parallel::local_world(n, Duration::from_secs(60)).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                let cfg = cfg.clone();
                s.spawn(move || {
                    let mut strategy = DataParallelStrategy::new(g, &cfg).unwrap();
                    let ctx = RunContext {
                        local_rank: 0,
                        progress: false,
                    };
                    train_with(&llama3_spec(), &cfg, &ctx, &mut strategy).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn fsdp_two_ranks_train_checkpoint_and_resume_on_one_and_two() {
    let root = std::env::temp_dir().join(format!("titan-dp-{}", std::process::id()));
    let outs = run_ranks(2, &cfg(&root.join("a"), 4, &[]));
    // Every rank logs the same global loss.
    assert_eq!(outs[0].losses, outs[1].losses);
    assert!(outs[0].final_loss < outs[0].losses[0].1);

    // The 2-rank checkpoint of step 4 loads into 1 rank (FSDP shards gathered back)...
    let one = cfg(&root.join("a"), 6, &["--checkpoint.folder", "checkpoint"]);
    let resumed_one = titan_trainer::run(
        &titan_trainer::Registry::default(),
        &one,
        &RunContext {
            local_rank: 0,
            progress: false,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        resumed_one.losses.first().map(|l| l.0),
        Some(5),
        "resumed at step 5"
    );
    assert!(resumed_one.final_loss.is_finite());

    // ...and back into 2 ranks from the 1-rank checkpoint of step 6.
    let two = run_ranks(2, &cfg(&root.join("a"), 8, &[]));
    assert_eq!(two[0].losses.first().map(|l| l.0), Some(7));
    assert_eq!(two[0].losses, two[1].losses);
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn ddp_two_ranks_match_across_ranks() {
    let root = std::env::temp_dir().join(format!("titan-ddp-{}", std::process::id()));
    let outs = run_ranks(
        2,
        &cfg(
            &root,
            3,
            &[
                "--parallelism.data_parallel_replicate_degree",
                "2",
                "--parallelism.data_parallel_shard_degree",
                "1",
                "--checkpoint.enable=false",
            ],
        ),
    );
    assert_eq!(outs[0].losses, outs[1].losses);
    assert_eq!(outs[0].steps, 3);
    std::fs::remove_dir_all(root).ok();
}
