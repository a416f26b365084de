//! What Titan can do with each option today.
//!
//! Every torchtitan option loads, so a torchtitan file parses and the truth is told about it:
//! [`UNSUPPORTED`] refuses options of features Titan has not built yet when they are set to
//! anything but an accepted value; [`IGNORED`] lists options Titan accepts without effect, so
//! the trainer can say so. As features land, delete their lines here: nothing else changes.

use crate::error::{Error, Result, UnsupportedSetting};
use crate::schema::lookup;
use crate::sections::JobConfig;

/// Which values of an option Titan can honour.
#[derive(Debug, Clone, Copy)]
pub enum Accepted {
    /// Only the default value.
    DefaultOnly,
    /// Only these values (TOML spelling without quotes, e.g. `"selective"` → `selective`).
    OneOf(&'static [&'static str]),
}

/// One refused option.
#[derive(Debug, Clone, Copy)]
pub struct SupportRule {
    /// Dotted option key.
    pub key: &'static str,
    /// Values Titan can honour.
    pub accepted: Accepted,
    /// Why other values are refused (shown to the user).
    pub why: &'static str,
}

const fn default_only(key: &'static str, why: &'static str) -> SupportRule {
    SupportRule {
        key,
        accepted: Accepted::DefaultOnly,
        why,
    }
}

const NO_TP: &str = "Titan has no tensor parallelism yet; use data_parallel_shard_degree";
const NO_PP: &str = "Titan has no pipeline parallelism yet";
const NO_CP: &str = "Titan has no context parallelism yet";
const NO_EP: &str = "Titan has no expert parallelism (and no MoE models) yet";
const NO_COMPILER: &str = "Titan has no compiler; its fused kernels are always on";

/// Options refused when set to a value Titan cannot honour. Edit freely as features land.
pub const UNSUPPORTED: &[SupportRule] = &[
    default_only(
        "profiling.enable_profiling",
        "Titan has no profiler yet; use nsys or perf",
    ),
    default_only(
        "profiling.enable_memory_snapshot",
        "Titan cannot record memory snapshots yet",
    ),
    default_only(
        "model.converters",
        "Titan has no model converters (float8 / MX quantization) yet",
    ),
    default_only(
        "optimizer.early_step_in_backward",
        "Titan steps the optimizer after backward only",
    ),
    default_only(
        "training.enable_cpu_offload",
        "Titan has no CPU offload yet",
    ),
    default_only(
        "training.dtype",
        "Titan keeps float32 master weights; pure bfloat16 training is not built yet",
    ),
    default_only("parallelism.tensor_parallel_degree", NO_TP),
    default_only("parallelism.enable_async_tensor_parallel", NO_TP),
    default_only("parallelism.pipeline_parallel_degree", NO_PP),
    default_only("parallelism.context_parallel_degree", NO_CP),
    default_only("parallelism.expert_parallel_degree", NO_EP),
    default_only("parallelism.expert_tensor_parallel_degree", NO_EP),
    default_only("parallelism.expert_parallel_comm_backend", NO_EP),
    default_only(
        "metrics.enable_wandb",
        "Titan has no Weights & Biases client; use TensorBoard or metrics.jsonl",
    ),
    SupportRule {
        key: "checkpoint.async_mode",
        accepted: Accepted::OneOf(&["disabled", "async"]),
        why: "Titan writes in a background thread (`async`); staging through pinned memory \
              into a separate writer process is not built yet",
    },
    default_only(
        "checkpoint.initial_load_in_hf_quantized",
        "Titan cannot dequantize Hugging Face checkpoints yet",
    ),
    SupportRule {
        key: "activation_checkpoint.mode",
        accepted: Accepted::OneOf(&["selective", "full", "none"]),
        why: "memory_budget needs a compiler, and Titan has none",
    },
    default_only(
        "activation_checkpoint.visualize_memory_budget_pareto",
        "memory_budget needs a compiler, and Titan has none",
    ),
    default_only("compile.enable", NO_COMPILER),
    default_only(
        "comm.mode",
        "Titan has no fake or simulated communication backend yet",
    ),
    default_only(
        "fault_tolerance.enable",
        "Titan has no fault tolerance (TorchFT) yet",
    ),
    default_only(
        "job.custom_config_module",
        "Titan cannot import Python modules; extend the Rust config instead",
    ),
    default_only(
        "experimental.custom_import",
        "Titan cannot import Python modules; register Rust components instead",
    ),
    default_only(
        "experimental.custom_args_module",
        "Titan cannot import Python modules; extend the Rust config instead",
    ),
];

const ONLY_PROFILING: &str = "applies to profiling only, which Titan does not support yet";
const ONLY_PP: &str = "applies to pipeline parallelism only, which Titan does not support yet";
const ONLY_CP: &str = "applies to context parallelism only, which Titan does not support yet";
const ONLY_TP: &str = "applies to tensor parallelism only, which Titan does not support yet";
const ONLY_FT: &str = "applies to fault tolerance only, which Titan does not support yet";
const NO_DATALOADER: &str = "configures PyTorch's DataLoader, which Titan does not use";
const NO_GC: &str = "Rust has no garbage collector";
const NO_FLIGHT_RECORDER: &str = "Titan has no flight recorder";
const ONLY_TORCH_AC: &str = "applies to PyTorch's checkpoint wrapper only";

/// Options Titan accepts but that have no effect in Titan, with the reason. A key may name a
/// whole section (`quantize`): every option under it.
pub const IGNORED: &[(&str, &str)] = &[
    ("profiling.save_traces_folder", ONLY_PROFILING),
    ("profiling.profile_freq", ONLY_PROFILING),
    ("profiling.profiler_active", ONLY_PROFILING),
    ("profiling.profiler_warmup", ONLY_PROFILING),
    ("profiling.save_memory_snapshot_folder", ONLY_PROFILING),
    (
        "model.print_after_conversion",
        "Titan has no model converters yet",
    ),
    (
        "optimizer.implementation",
        "selects among PyTorch's optimizer kernels; Titan has its own step (same math)",
    ),
    ("training.gc_freq", NO_GC),
    ("training.gc_debug", NO_GC),
    ("training.dataloader", NO_DATALOADER),
    ("validation.dataloader", NO_DATALOADER),
    ("parallelism.disable_loss_parallel", ONLY_TP),
    ("parallelism.module_fqns_per_model_part", ONLY_PP),
    (
        "parallelism.pipeline_parallel_first_stage_less_layers",
        ONLY_PP,
    ),
    (
        "parallelism.pipeline_parallel_last_stage_less_layers",
        ONLY_PP,
    ),
    ("parallelism.pipeline_parallel_layers_per_stage", ONLY_PP),
    ("parallelism.pipeline_parallel_schedule", ONLY_PP),
    ("parallelism.pipeline_parallel_schedule_csv", ONLY_PP),
    ("parallelism.pipeline_parallel_microbatch_size", ONLY_PP),
    (
        "parallelism.pipeline_parallel_expert_parallel_overlap",
        ONLY_PP,
    ),
    ("parallelism.context_parallel_load_balancer", ONLY_CP),
    ("parallelism.context_parallel_rotate_method", ONLY_CP),
    ("checkpoint.enable_ft_dataloader_checkpoints", ONLY_FT),
    ("activation_checkpoint.early_stop", ONLY_TORCH_AC),
    (
        "activation_checkpoint.preserve_rng_state",
        "Llama has no dropout: there is no RNG state to preserve",
    ),
    ("activation_checkpoint.determinism_check", ONLY_TORCH_AC),
    ("activation_checkpoint.debug", ONLY_TORCH_AC),
    (
        "activation_checkpoint.per_op_sac_force_recompute_mm_shapes_by_fqns",
        "only MoE router shapes are listed by default, and Titan has no MoE",
    ),
    (
        "activation_checkpoint.memory_budget",
        "applies to mode = \"memory_budget\" only, which Titan does not support yet",
    ),
    ("compile.components", "Titan has no compiler"),
    ("compile.backend", "Titan has no compiler"),
    (
        "quantize",
        "quantize.* only matters with model.converters, which Titan does not support yet",
    ),
    ("comm.trace_buf_size", NO_FLIGHT_RECORDER),
    ("comm.save_traces_folder", NO_FLIGHT_RECORDER),
    ("comm.save_traces_file_prefix", NO_FLIGHT_RECORDER),
    (
        "memory_estimation.disable_fake_mode",
        "applies to PyTorch's FakeTensorMode only",
    ),
    ("fault_tolerance.process_group", ONLY_FT),
    ("fault_tolerance.process_group_timeout_ms", ONLY_FT),
    ("fault_tolerance.replica_id", ONLY_FT),
    ("fault_tolerance.group_size", ONLY_FT),
    ("fault_tolerance.min_replica_size", ONLY_FT),
    ("fault_tolerance.semi_sync_method", ONLY_FT),
    (
        "debug.deterministic_warn_only",
        "applies to PyTorch's deterministic-algorithms switch only",
    ),
    ("debug.moe_force_load_balance", "Titan has no MoE models"),
];

/// A setting that Titan accepts but ignores.
#[derive(Debug, Clone, PartialEq)]
pub struct IgnoredSetting {
    /// Dotted option key.
    pub key: String,
    /// The value that was set.
    pub value: String,
    /// Why it has no effect.
    pub why: &'static str,
}

/// Option values as TOML (`None` for unset optional options), by dotted key.
struct Values {
    current: Option<toml::Value>,
    default: Option<toml::Value>,
}

impl Values {
    fn of(config: &JobConfig) -> Values {
        Values {
            current: toml::Value::try_from(config).ok(),
            default: toml::Value::try_from(JobConfig::default()).ok(),
        }
    }

    fn current(&self, key: &str) -> Option<&toml::Value> {
        self.current.as_ref().and_then(|v| lookup(v, key))
    }

    fn is_default(&self, key: &str) -> bool {
        self.current(key) == self.default.as_ref().and_then(|v| lookup(v, key))
    }
}

fn render(value: Option<&toml::Value>) -> String {
    value.map_or_else(|| "None".to_string(), toml::Value::to_string)
}

fn bare(value: Option<&toml::Value>) -> String {
    match value {
        Some(toml::Value::String(s)) => s.clone(),
        other => render(other),
    }
}

/// Leaf options under `key` (itself if it is an option, every option of it if a section).
fn options_under(key: &str) -> impl Iterator<Item = &'static str> + '_ {
    crate::schema::schema()
        .options
        .iter()
        .map(|o| o.key.as_str())
        .filter(move |k| *k == key || k.starts_with(&format!("{key}.")))
}

impl JobConfig {
    /// Every option set to a value Titan cannot honour yet (see [`UNSUPPORTED`]).
    pub fn unsupported_settings(&self) -> Vec<UnsupportedSetting> {
        let values = Values::of(self);
        UNSUPPORTED
            .iter()
            .filter(|rule| match rule.accepted {
                Accepted::DefaultOnly => !values.is_default(rule.key),
                Accepted::OneOf(ok) => !ok.contains(&bare(values.current(rule.key)).as_str()),
            })
            .map(|rule| UnsupportedSetting {
                key: rule.key.to_string(),
                value: render(values.current(rule.key)),
                why: rule.why,
            })
            .collect()
    }

    /// Refuses configurations that use features Titan has not built yet, naming each offending
    /// option and value. Call it before training; loading alone does not.
    pub fn check_supported(&self) -> Result<()> {
        let unsupported = self.unsupported_settings();
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(Error::Unsupported(unsupported))
        }
    }

    /// Options set to a non-default value that Titan ignores (see [`IGNORED`]); the trainer
    /// should log them.
    pub fn ignored_settings(&self) -> Vec<IgnoredSetting> {
        let values = Values::of(self);
        IGNORED
            .iter()
            .flat_map(|(prefix, why)| options_under(prefix).map(move |key| (key, *why)))
            .filter(|(key, _)| !values.is_default(key))
            .map(|(key, why)| IgnoredSetting {
                key: key.to_string(),
                value: render(values.current(key)),
                why,
            })
            .collect()
    }
}

/// What Titan does with this option, for help text: `None` when it is fully supported.
pub(crate) fn titan_note(key: &str) -> Option<String> {
    if let Some(rule) = UNSUPPORTED.iter().find(|rule| rule.key == key) {
        return Some(match rule.accepted {
            Accepted::DefaultOnly => "Titan: default only".to_string(),
            Accepted::OneOf(values) => format!("Titan: only {}", values.join(" | ")),
        });
    }
    IGNORED
        .iter()
        .any(|(prefix, _)| options_under(prefix).any(|k| k == key))
        .then(|| "Titan: no effect".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::schema;
    use crate::sections::AcMode;

    #[test]
    fn every_listed_key_exists() {
        let schema = schema();
        for rule in UNSUPPORTED {
            assert!(schema.option(rule.key).is_some(), "{}", rule.key);
        }
        for (key, _) in IGNORED {
            assert!(options_under(key).next().is_some(), "{key}");
        }
    }

    #[test]
    fn no_option_is_both_refused_and_ignored() {
        for rule in UNSUPPORTED {
            let ignored = IGNORED
                .iter()
                .any(|(prefix, _)| options_under(prefix).any(|k| k == rule.key));
            assert!(!ignored, "{}", rule.key);
        }
    }

    #[test]
    fn defaults_are_supported_and_not_ignored() {
        let config = JobConfig::default();
        assert!(config.check_supported().is_ok());
        assert!(config.ignored_settings().is_empty());
    }

    #[test]
    fn refusals_name_key_value_and_reason() {
        let mut config = JobConfig::default();
        config.compile.enable = true;
        config.parallelism.tensor_parallel_degree = 8;
        config.activation_checkpoint.mode = AcMode::MemoryBudget;
        let message = config
            .check_supported()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("`compile.enable = true`"), "{message}");
        assert!(message.contains(NO_COMPILER), "{message}");
        assert!(message.contains("`parallelism.tensor_parallel_degree = 8`"));
        assert!(message.contains("`activation_checkpoint.mode = \"memory_budget\"`"));
        config.activation_checkpoint.mode = AcMode::Full;
        let keys: Vec<_> = config
            .unsupported_settings()
            .into_iter()
            .map(|u| u.key)
            .collect();
        assert_eq!(
            keys,
            ["parallelism.tensor_parallel_degree", "compile.enable"]
        );
    }

    #[test]
    fn ignored_settings_are_reported() {
        let mut config = JobConfig::default();
        config.training.gc_freq = 7;
        config.quantize.linear.float8.filter_fqns = vec!["output".into()];
        config.training.dataloader.num_workers = 2;
        let keys: Vec<_> = config
            .ignored_settings()
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(
            keys,
            [
                "training.gc_freq",
                "training.dataloader.num_workers",
                "quantize.linear.float8.filter_fqns"
            ]
        );
    }
}
