//! A downstream crate registers its own model and replaces the data loader without forking.

use std::time::Duration;

use titan_data::Batch;
use titan_models::llama3::{Llama3, LlamaArgs};
use titan_trainer::{run, BatchSource, JobConfig, Registry, RunContext, TrainSpec};

/// Batches of a repeating pattern: a model can learn it to near-zero loss.
struct Pattern {
    seq: usize,
    batch: usize,
    served: u64,
}

impl BatchSource for Pattern {
    fn next_batch(&mut self) -> titan_trainer::Result<Option<Batch>> {
        self.served += 1;
        let n = self.seq * self.batch;
        let tokens: Vec<u32> = (0..=n).map(|i| (i % 7) as u32 + 1).collect();
        Ok(Some(Batch {
            inputs: tokens[..n].to_vec(),
            labels: tokens[1..].iter().map(|&t| t as i64).collect(),
            positions: None,
            batch_size: self.batch,
            seq_len: self.seq,
        }))
    }
    fn state(&self) -> titan_trainer::Result<serde_json::Value> {
        Ok(serde_json::json!({ "served": self.served }))
    }
    fn load_state(&mut self, state: &serde_json::Value) -> titan_trainer::Result<()> {
        self.served = state["served"].as_u64().unwrap_or(0);
        Ok(())
    }
    fn wait_time(&self) -> Duration {
        Duration::ZERO
    }
    fn name(&self) -> String {
        "pattern".into()
    }
}

#[test]
fn custom_model_and_data_loader_train_through_the_registry() {
    let spec = TrainSpec::new(
        "tiny_llama",
        |_cfg: &JobConfig, _tok: Option<&titan_data::Tokenizer>| {
            let args = LlamaArgs {
                dim: 32,
                n_layers: 1,
                n_heads: 2,
                vocab_size: 16,
                multiple_of: 16,
                ..LlamaArgs::flavor("debugmodel")?
            };
            Ok(Llama3::new(&args)?)
        },
    )
    .with_data(|req| {
        Ok(Box::new(Pattern {
            seq: req.config.training.seq_len,
            batch: req.config.training.local_batch_size,
            served: 0,
        }))
    });
    let mut registry = Registry::default();
    registry.register(spec);
    assert_eq!(registry.names(), vec!["llama3", "tiny_llama"]);

    let dump = std::env::temp_dir().join(format!("titan-ext-{}", std::process::id()));
    let cfg = JobConfig::load(
        None,
        &[
            "--model.name",
            "tiny_llama",
            "--training.steps",
            "30",
            "--training.seq_len",
            "16",
            "--training.local_batch_size",
            "2",
            "--validation.enable=false",
            "--optimizer.lr",
            "1e-2",
            "--job.dump_folder",
            dump.to_str().unwrap(),
            "--metrics.enable_plot=false",
        ],
    )
    .unwrap();
    let out = run(
        &registry,
        &cfg,
        &RunContext {
            local_rank: 0,
            progress: false,
        },
    )
    .unwrap()
    .unwrap();
    let first = out.losses.first().unwrap().1;
    assert!(
        out.final_loss < first / 3.0,
        "the pattern is learnable: {first} -> {}",
        out.final_loss
    );

    let err = run(
        &registry,
        &JobConfig::load(None, &["--model.name", "nope"]).unwrap(),
        &RunContext::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("llama3, tiny_llama"), "{err}");
    std::fs::remove_dir_all(dump).ok();
}
