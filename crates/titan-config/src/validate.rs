//! Value checks done once, up front: ranges and consistency between options. Types and
//! enumerated values are already checked while parsing.

use std::fmt::Display;

use crate::error::{Error, Problem, Result};
use crate::sections::{JobConfig, SelectiveAcOption, CHECKPOINT_PARTS};

/// Collects problems; each names the key, its value and what is allowed.
#[derive(Default)]
struct Checks {
    problems: Vec<Problem>,
}

impl Checks {
    fn require(&mut self, ok: bool, key: &str, value: impl Display, reason: &str) {
        if !ok {
            self.problems.push(Problem {
                key: key.to_string(),
                value: value.to_string(),
                reason: reason.to_string(),
                origin: None,
            });
        }
    }

    fn at_least_one(&mut self, key: &str, value: usize) {
        self.require(value >= 1, key, value, "must be at least 1");
    }

    fn positive_finite(&mut self, key: &str, value: f64) {
        self.require(
            value.is_finite() && value > 0.0,
            key,
            value,
            "must be a finite number greater than 0",
        );
    }

    fn unit_interval(&mut self, key: &str, value: f64) {
        self.require(
            (0.0..=1.0).contains(&value),
            key,
            value,
            "must be between 0 and 1 (inclusive)",
        );
    }

    fn not_empty(&mut self, key: &str, value: &str) {
        self.require(!value.trim().is_empty(), key, "\"\"", "must not be empty");
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

impl JobConfig {
    /// Every value problem of this configuration (empty when it is valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut c = Checks::default();

        c.not_empty("job.dump_folder", &self.job.dump_folder);
        c.at_least_one("profiling.profile_freq", self.profiling.profile_freq);
        c.at_least_one("metrics.log_freq", self.metrics.log_freq);
        self.check_model(&mut c);

        let o = &self.optimizer;
        c.positive_finite("optimizer.lr", o.lr);
        for (key, beta) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            c.require((0.0..1.0).contains(&beta), key, beta, "must be in [0, 1)");
        }
        c.positive_finite("optimizer.eps", o.eps);
        c.require(
            o.weight_decay.is_finite() && o.weight_decay >= 0.0,
            "optimizer.weight_decay",
            o.weight_decay,
            "must be a finite number >= 0",
        );

        let s = &self.lr_scheduler;
        if let Some(total) = s.total_steps {
            c.at_least_one("lr_scheduler.total_steps", total);
        }
        if let Some(ratio) = s.decay_ratio {
            c.unit_interval("lr_scheduler.decay_ratio", ratio);
        }
        c.unit_interval("lr_scheduler.min_lr_factor", s.min_lr_factor);

        self.check_training(&mut c);
        self.check_parallelism(&mut c);
        self.check_checkpoint(&mut c);

        let ac = &self.activation_checkpoint;
        if let SelectiveAcOption::EveryNthLayer(n) = ac.selective_ac_option {
            c.require(
                n >= 1,
                "activation_checkpoint.selective_ac_option",
                quoted(&n.to_string()),
                "must be \"op\" or a layer interval >= 1 (\"1\" checkpoints every layer)",
            );
        }
        c.unit_interval("activation_checkpoint.memory_budget", ac.memory_budget);

        for (key, seconds) in [
            ("comm.init_timeout_seconds", self.comm.init_timeout_seconds),
            (
                "comm.train_timeout_seconds",
                self.comm.train_timeout_seconds,
            ),
        ] {
            c.require(seconds >= 1, key, seconds, "must be at least 1 second");
        }

        let v = &self.validation;
        c.require(
            v.steps == -1 || v.steps >= 1,
            "validation.steps",
            v.steps,
            "must be at least 1, or -1 to consume the whole validation set",
        );
        if v.enable {
            c.not_empty("validation.dataset", &v.dataset);
            c.at_least_one("validation.freq", v.freq);
            c.at_least_one("validation.local_batch_size", v.local_batch_size);
            c.at_least_one("validation.seq_len", v.seq_len);
        }
        c.problems
    }

    fn check_model(&self, c: &mut Checks) {
        let m = &self.model;
        c.not_empty("model.name", &m.name);
        c.not_empty("model.flavor", &m.flavor);
        for (key, value) in [
            ("model.dim", m.dim),
            ("model.n_layers", m.n_layers),
            ("model.n_heads", m.n_heads),
            ("model.n_kv_heads", m.n_kv_heads),
            ("model.vocab_size", m.vocab_size),
            ("model.multiple_of", m.multiple_of),
            ("model.max_seq_len", m.max_seq_len),
        ] {
            if let Some(value) = value {
                c.at_least_one(key, value);
            }
        }
        for (key, value) in [
            ("model.ffn_dim_multiplier", m.ffn_dim_multiplier),
            ("model.norm_eps", m.norm_eps),
            ("model.rope_theta", m.rope_theta),
        ] {
            if let Some(value) = value {
                c.positive_finite(key, value);
            }
        }
        if let (Some(dim), Some(heads)) = (m.dim, m.n_heads) {
            c.require(
                heads == 0 || dim % heads == 0,
                "model.dim",
                dim,
                &format!("must be divisible by model.n_heads = {heads}"),
            );
        }
        if let (Some(heads), Some(kv)) = (m.n_heads, m.n_kv_heads) {
            c.require(
                kv == 0 || heads % kv == 0,
                "model.n_kv_heads",
                kv,
                &format!("must divide model.n_heads = {heads}"),
            );
        }
    }

    fn check_training(&self, c: &mut Checks) {
        let t = &self.training;
        c.not_empty("training.dataset", &t.dataset);
        c.at_least_one("training.local_batch_size", t.local_batch_size);
        let local = i64::try_from(t.local_batch_size).unwrap_or(i64::MAX);
        c.require(
            t.global_batch_size == -1
                || (t.global_batch_size >= 1 && local >= 1 && t.global_batch_size % local == 0),
            "training.global_batch_size",
            t.global_batch_size,
            &format!(
                "must be -1 (no accumulation) or a positive multiple of \
                 training.local_batch_size = {}",
                t.local_batch_size
            ),
        );
        c.at_least_one("training.seq_len", t.seq_len);
        c.at_least_one("training.steps", t.steps);
        c.positive_finite("training.max_norm", t.max_norm);
        c.at_least_one("training.gc_freq", t.gc_freq);
    }

    fn check_parallelism(&self, c: &mut Checks) {
        let p = &self.parallelism;
        for (key, degree) in [
            (
                "parallelism.data_parallel_replicate_degree",
                p.data_parallel_replicate_degree,
            ),
            (
                "parallelism.tensor_parallel_degree",
                p.tensor_parallel_degree,
            ),
            (
                "parallelism.pipeline_parallel_degree",
                p.pipeline_parallel_degree,
            ),
            (
                "parallelism.context_parallel_degree",
                p.context_parallel_degree,
            ),
            (
                "parallelism.expert_parallel_degree",
                p.expert_parallel_degree,
            ),
            (
                "parallelism.pipeline_parallel_microbatch_size",
                p.pipeline_parallel_microbatch_size,
            ),
        ] {
            c.require(
                degree >= 1,
                key,
                degree,
                "must be at least 1 (1 means disabled)",
            );
        }
        c.require(
            p.data_parallel_shard_degree == -1 || p.data_parallel_shard_degree >= 1,
            "parallelism.data_parallel_shard_degree",
            p.data_parallel_shard_degree,
            "must be at least 1, or -1 to use the ranks left over by the other degrees",
        );
        let etp = p.expert_tensor_parallel_degree;
        c.require(
            etp == 1 || etp == p.tensor_parallel_degree,
            "parallelism.expert_tensor_parallel_degree",
            etp,
            &format!(
                "must be 1 or equal to parallelism.tensor_parallel_degree = {}",
                p.tensor_parallel_degree
            ),
        );
        let micro = p.pipeline_parallel_microbatch_size;
        if p.pipeline_parallel_degree > 1 && micro >= 1 {
            c.require(
                self.training.local_batch_size % micro == 0,
                "parallelism.pipeline_parallel_microbatch_size",
                micro,
                &format!(
                    "must divide training.local_batch_size = {}",
                    self.training.local_batch_size
                ),
            );
        }
        let cp = p.context_parallel_degree;
        if cp > 1 {
            c.require(
                self.training.seq_len % (2 * cp) == 0,
                "training.seq_len",
                self.training.seq_len,
                &format!(
                    "must be divisible by 2 * parallelism.context_parallel_degree = {}",
                    2 * cp
                ),
            );
        }
        let tp = p.tensor_parallel_degree;
        if tp > 1 {
            c.require(
                self.training.seq_len % tp == 0,
                "training.seq_len",
                self.training.seq_len,
                &format!("must be divisible by parallelism.tensor_parallel_degree = {tp}"),
            );
        }
    }

    fn check_checkpoint(&self, c: &mut Checks) {
        let k = &self.checkpoint;
        c.not_empty("checkpoint.folder", &k.folder);
        c.at_least_one("checkpoint.interval", k.interval);
        c.require(
            k.keep_latest_k != 1,
            "checkpoint.keep_latest_k",
            k.keep_latest_k,
            "must be 0 (keep all) or at least 2: the newest checkpoint may still be being written",
        );
        c.require(
            k.load_step >= -1,
            "checkpoint.load_step",
            k.load_step,
            "must be a step number, or -1 for the latest checkpoint",
        );
        c.require(
            !k.initial_load_in_hf || k.initial_load_model_only,
            "checkpoint.initial_load_model_only",
            k.initial_load_model_only,
            "must be true when checkpoint.initial_load_in_hf is true (safetensors hold only the model)",
        );
        c.require(
            !k.initial_load_in_hf_quantized || k.initial_load_in_hf,
            "checkpoint.initial_load_in_hf_quantized",
            k.initial_load_in_hf_quantized,
            "needs checkpoint.initial_load_in_hf = true",
        );
        c.require(
            !k.last_save_in_hf || k.last_save_model_only,
            "checkpoint.last_save_model_only",
            k.last_save_model_only,
            "must be true when checkpoint.last_save_in_hf is true (safetensors hold only the model)",
        );
        c.require(
            !k.create_seed_checkpoint || k.enable,
            "checkpoint.enable",
            k.enable,
            "must be true when checkpoint.create_seed_checkpoint is true",
        );
        for part in &k.exclude_from_loading {
            c.require(
                CHECKPOINT_PARTS.contains(&part.as_str()),
                "checkpoint.exclude_from_loading",
                quoted(part),
                &format!("each entry must be one of {}", CHECKPOINT_PARTS.join(", ")),
            );
        }
    }

    /// Checks every value; the error lists all problems at once.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(config: &JobConfig) -> Vec<String> {
        config.problems().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(keys(&JobConfig::default()), Vec::<String>::new());
    }

    #[test]
    fn out_of_range_values_are_named() {
        let mut config = JobConfig::default();
        config.training.seq_len = 0;
        config.training.steps = 0;
        config.lr_scheduler.decay_ratio = Some(1.5);
        config.optimizer.lr = f64::NAN;
        config.checkpoint.keep_latest_k = 1;
        config.training.global_batch_size = 12;
        config.training.local_batch_size = 8;
        let found = keys(&config);
        for key in [
            "training.seq_len",
            "training.steps",
            "lr_scheduler.decay_ratio",
            "optimizer.lr",
            "checkpoint.keep_latest_k",
            "training.global_batch_size",
        ] {
            assert!(found.iter().any(|k| k == key), "{key} not in {found:?}");
        }
    }

    #[test]
    fn consistency_rules() {
        let mut config = JobConfig::default();
        config.checkpoint.last_save_in_hf = true;
        config.checkpoint.last_save_model_only = false;
        config.checkpoint.exclude_from_loading = vec!["weights".into()];
        config.model.dim = Some(100);
        config.model.n_heads = Some(16);
        let found = keys(&config);
        assert!(found.contains(&"checkpoint.last_save_model_only".to_string()));
        assert!(found.contains(&"checkpoint.exclude_from_loading".to_string()));
        assert!(found.contains(&"model.dim".to_string()));
    }
}
