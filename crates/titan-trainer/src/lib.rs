//! Titan's trainer: the thin layer that composes the engine (`titan-core`), a model
//! (`titan-models`), data (`titan-data`), the optimizer and schedule (`titan-optim`), metrics
//! (`titan-metrics`), checkpoints (`titan-checkpoint`) and configuration (`titan-config`) into
//! a torchtitan-compatible training run.
//!
//! Every component sits behind a small seam so a downstream crate replaces one piece without
//! forking the rest: a model is a [`TrainableModel`]; a [`TrainSpec`] says how to build the
//! model, tokenizer, datasets, data loader, optimizer and LR schedule; a [`Registry`] maps
//! `model.name` to specs; data parallelism is a [`Strategy`]. The trainer itself knows no
//! model's internals and no collective's implementation.
//!
//! ```no_run
//! use titan_trainer::{run_main, Registry};
//! // `cargo xtask train` in one line: parse the command line, train, exit non-zero on error.
//! std::process::exit(run_main(&Registry::default(), std::env::args().skip(1).collect()));
//! ```

pub mod checkpointing;
pub mod data;
pub mod device;
pub mod error;
pub mod estimate;
pub mod llama;
pub mod model;
pub mod parallel;
pub mod spec;
pub mod strategy;
pub mod train;

use std::path::PathBuf;

pub use data::{BatchSource, DataRequest};
pub use error::{Error, Result};
pub use model::{ModelSummary, TrainableModel};
pub use spec::{Registry, RunSpec, TrainSpec};
pub use strategy::{ShardLayout, SingleDevice, Strategy};
pub use titan_config::JobConfig;

/// Facts about this process that do not come from the config.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// GPU index on this node.
    pub local_rank: usize,
    /// Draw a progress bar when the console is a terminal.
    pub progress: bool,
}

impl Default for RunContext {
    fn default() -> Self {
        Self {
            local_rank: 0,
            progress: true,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Steps completed (the last step number).
    pub steps: u64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// (step, global mean loss) of every step this process ran.
    pub losses: Vec<(u64, f64)>,
    /// The loss/throughput plot, when written.
    pub plot: Option<PathBuf>,
    pub dump_folder: PathBuf,
    pub model_summary: ModelSummary,
}

/// Set up console logging once: `RUST_LOG` wins, else info for Titan's crates.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Metrics lines carry torchtitan's ANSI colours in the message: do not escape them; and
    // print through the metrics writer so the progress bar is hidden while a line prints.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi_sanitization(false)
        .with_writer(titan_metrics::ConsoleWriter::default)
        .try_init();
}

/// Run one configuration with a registry: training, or the memory estimate when
/// `memory_estimation.enable` is set.
pub fn run(registry: &Registry, cfg: &JobConfig, ctx: &RunContext) -> Result<Option<TrainOutcome>> {
    if cfg.job.print_config {
        println!("{}", cfg.to_toml_string()?);
    }
    let spec = registry.get(&cfg.model.name)?;
    if cfg.memory_estimation.enable {
        let est = spec.estimate_memory(cfg)?;
        println!(
            "Memory estimate for {} {}:\n{est}",
            cfg.model.name, cfg.model.flavor
        );
        return Ok(None);
    }
    spec.train(cfg, ctx).map(Some)
}

/// Whether this process was launched as one rank of several (torchrun or Slurm variables).
pub fn is_distributed_launch() -> bool {
    titan_parallel::DistEnv::from_env()
        .map(|e| e.is_distributed())
        .unwrap_or(false)
}

/// A whole command-line program: parse `args` (`--help`, `--job.config_file`, overrides),
/// run, print errors. Returns the process exit code.
pub fn run_main(registry: &Registry, args: Vec<String>) -> i32 {
    init_logging();
    let invocation = match titan_config::parse_args(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let cfg = match invocation {
        titan_config::Invocation::Help(text) => {
            println!("{text}");
            return 0;
        }
        titan_config::Invocation::Run(cfg) => cfg,
    };
    // torchrun's LOCAL_RANK or Slurm's SLURM_LOCALID (srun sets no LOCAL_RANK), so each rank
    // of a node opens its own GPU.
    let local_rank = match titan_parallel::DistEnv::from_env() {
        Ok(env) => env.local_rank,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match run(
        registry,
        &cfg,
        &RunContext {
            local_rank,
            progress: true,
        },
    ) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
