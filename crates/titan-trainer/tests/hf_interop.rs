//! The last save writes a Hugging Face folder; a new run starts from it
//! (`initial_load_in_hf`), with the trained weights.

use titan_trainer::{run, JobConfig, Registry, RunContext};

mod common;

fn cfg(dump: &std::path::Path, steps: &str, extra: &[&str]) -> JobConfig {
    let mut all = vec!["--optimizer.lr", "3e-3", "--lr_scheduler.warmup_steps", "1"];
    all.extend_from_slice(extra);
    common::tiny_config(dump, steps.parse().unwrap(), &all)
}

#[test]
fn last_save_in_hf_then_initial_load_in_hf() {
    let root = std::env::temp_dir().join(format!("titan-hf-{}", std::process::id()));
    let ctx = RunContext {
        local_rank: 0,
        progress: false,
    };
    let a = run(
        &Registry::default(),
        &cfg(&root.join("a"), "8", &["--checkpoint.last_save_in_hf"]),
        &ctx,
    )
    .unwrap()
    .unwrap();
    let hf = root.join("a/checkpoint/step-8/hf");
    assert!(
        hf.join("config.json").is_file() && hf.join("model.safetensors").is_file(),
        "HF export at {}",
        hf.display()
    );

    let hf_arg = hf.display().to_string();
    let b = run(
        &Registry::default(),
        &cfg(
            &root.join("b"),
            "1",
            &[
                "--checkpoint.initial_load_path",
                &hf_arg,
                "--checkpoint.initial_load_in_hf",
            ],
        ),
        &ctx,
    )
    .unwrap()
    .unwrap();
    // Same first batch; B starts from A's trained weights, so its first loss is A's late loss.
    let (a_first, b_first) = (a.losses[0].1, b.losses[0].1);
    assert!(
        b_first < a_first - 0.5,
        "loaded weights should be trained: {b_first} vs fresh {a_first}"
    );
    std::fs::remove_dir_all(root).ok();
}
