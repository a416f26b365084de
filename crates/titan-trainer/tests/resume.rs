//! Exact resume: 6 steps straight equal 3 steps, save, a fresh run loads and trains 3 more:
//! same per-step losses and final weights, bit for bit, on the CPU.

use titan_checkpoint::{keys, Checkpointer};
use titan_trainer::{run, JobConfig, Registry, RunContext};

mod common;

fn tiny(dump: &std::path::Path, steps: usize, extra: &[&str]) -> JobConfig {
    let mut all = vec![
        "--checkpoint.interval",
        "3",
        "--checkpoint.last_save_model_only=false",
    ];
    all.extend_from_slice(extra);
    common::tiny_config(dump, steps, &all)
}

fn final_weights(
    dump: &std::path::Path,
    step: u64,
) -> std::collections::BTreeMap<String, Vec<u32>> {
    let cfg = titan_trainer::checkpointing::checkpoint_config(&tiny(dump, 6, &[]), 0, 1);
    let ck = Checkpointer::new(cfg).unwrap();
    let dir = ck.step_dir(step);
    let index = titan_checkpoint::layout::read_index(&dir).unwrap();
    let wants: Vec<titan_checkpoint::TensorRequest> = index
        .tensors
        .iter()
        .filter(|(n, _)| keys::model_fqn(n).is_some())
        .map(|(n, e)| titan_checkpoint::TensorRequest::full(n.clone(), e.global_shape.clone()))
        .collect();
    let loaded = ck.load_step(step, &wants).unwrap();
    loaded
        .tensors
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn train_6_equals_train_3_save_load_train_3() {
    let root = std::env::temp_dir().join(format!("titan-resume-{}", std::process::id()));
    let (a, b) = (root.join("straight"), root.join("resumed"));
    let ctx = RunContext {
        local_rank: 0,
        progress: false,
    };
    let reg = Registry::default();
    let straight = run(&reg, &tiny(&a, 6, &[]), &ctx).unwrap().unwrap();
    let first = run(&reg, &tiny(&b, 3, &[]), &ctx).unwrap().unwrap();
    let second = run(&reg, &tiny(&b, 6, &[]), &ctx).unwrap().unwrap();
    assert_eq!(first.losses.len(), 3);
    assert_eq!(second.losses.len(), 3, "the second run resumes at step 4");
    let resumed: Vec<(u64, u64)> = first
        .losses
        .iter()
        .chain(&second.losses)
        .map(|(s, l)| (*s, l.to_bits()))
        .collect();
    let expected: Vec<(u64, u64)> = straight
        .losses
        .iter()
        .map(|(s, l)| (*s, l.to_bits()))
        .collect();
    assert_eq!(resumed, expected);
    assert_eq!(final_weights(&a, 6), final_weights(&b, 6));
    std::fs::remove_dir_all(root).ok();
}
