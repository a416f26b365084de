//! A NaN or Inf loss stops the run with an error naming the step, before any checkpoint of
//! the broken weights is written.

use titan_trainer::{run, JobConfig, Registry, RunContext};

#[test]
fn exploding_run_stops_at_the_step_and_keeps_the_last_good_checkpoint() {
    let dump = std::env::temp_dir().join(format!("titan-nan-{}", std::process::id()));
    let cfg = JobConfig::load(
        None,
        &[
            "--model.dim",
            "32",
            "--model.n_layers",
            "1",
            "--model.n_heads",
            "2",
            "--training.seq_len",
            "16",
            "--training.local_batch_size",
            "2",
            "--validation.enable=false",
            "--metrics.enable_plot=false",
            "--optimizer.lr",
            "1e30",
            "--lr_scheduler.warmup_steps",
            "0",
            "--training.steps",
            "10",
            "--checkpoint.enable",
            "--checkpoint.interval",
            "1",
            "--checkpoint.keep_latest_k",
            "0",
            "--job.dump_folder",
            dump.to_str().unwrap(),
        ],
    )
    .unwrap();
    let err = run(
        &Registry::default(),
        &cfg,
        &RunContext {
            local_rank: 0,
            progress: false,
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    let titan_trainer::Error::NonFinite { step, .. } = err else {
        panic!("expected a non-finite error, got {msg}")
    };
    assert!(
        msg.contains(&format!("step {step}")) && msg.contains("not finite"),
        "{msg}"
    );
    // Checkpoints exist only for the steps before the failure.
    let ck = dump.join("checkpoint");
    for s in 1..step {
        assert!(
            ck.join(format!("step-{s}")).is_dir(),
            "step-{s} should have been saved"
        );
    }
    assert!(
        !ck.join(format!("step-{step}")).exists(),
        "no checkpoint of the broken step"
    );
    std::fs::remove_dir_all(dump).ok();
}
