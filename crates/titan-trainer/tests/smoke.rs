use titan_trainer::{run, JobConfig, Registry, RunContext};

#[test]
fn default_config_trains_a_few_steps() {
    let dir = std::env::temp_dir().join(format!("titan-smoke-{}", std::process::id()));
    let cfg = JobConfig::load(
        None,
        &[
            "--training.steps",
            "3",
            "--metrics.log_freq",
            "1",
            "--job.dump_folder",
            dir.to_str().unwrap(),
            "--validation.freq",
            "2",
            "--validation.steps",
            "1",
        ],
    )
    .unwrap();
    let out = run(
        &Registry::default(),
        &cfg,
        &RunContext {
            local_rank: 0,
            progress: false,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(out.steps, 3);
    assert!(out.final_loss.is_finite());
    std::fs::remove_dir_all(dir).ok();
}
