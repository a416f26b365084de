//! Shared helpers of the trainer's integration tests.

use titan_trainer::JobConfig;

/// A tiny Llama (dim 64, 2 layers, GQA 4/2) on short sequences with checkpoints on, plus
/// `extra` command-line overrides.
pub fn tiny_config(dump: &std::path::Path, steps: usize, extra: &[&str]) -> JobConfig {
    let base = [
        "--model.dim",
        "64",
        "--model.n_layers",
        "2",
        "--model.n_heads",
        "4",
        "--model.n_kv_heads",
        "2",
        "--training.seq_len",
        "32",
        "--training.local_batch_size",
        "2",
        "--lr_scheduler.warmup_steps",
        "2",
        "--metrics.log_freq",
        "1",
        "--validation.enable=false",
        "--metrics.enable_plot=false",
        "--checkpoint.enable",
    ];
    let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--training.steps".into(),
        steps.to_string(),
        "--job.dump_folder".into(),
        dump.display().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    JobConfig::load(None, &args).unwrap_or_else(|e| panic!("{e}"))
}
