//! `[activation_checkpoint]` and `[memory_estimation]`: trading compute for memory.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::declare::{choice, section};
use crate::option_type::{CliValue, OptionType};

choice! {
    /// Activation checkpointing mode.
    pub enum AcMode {
        /// Recompute some blocks (every N-th) or some ops (`selective_ac_option`).
        Selective = "selective",
        /// Recompute every block.
        Full = "full",
        /// Let the compiler pick what to recompute within a memory budget.
        MemoryBudget = "memory_budget",
        /// Keep all activations.
        None = "none",
    }
}

/// `activation_checkpoint.selective_ac_option`: torchtitan's string `"N"` or `"op"`, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectiveAcOption {
    /// Checkpoint every N-th transformer block (N >= 1; 1 means every block).
    EveryNthLayer(usize),
    /// Per-op policy: save matmul and attention outputs (every second matmul is recomputed).
    Op,
}

impl fmt::Display for SelectiveAcOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectiveAcOption::EveryNthLayer(n) => write!(f, "{n}"),
            SelectiveAcOption::Op => f.write_str("op"),
        }
    }
}

impl Serialize for SelectiveAcOption {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written as a string, as torchtitan's files do (`selective_ac_option = "2"`).
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SelectiveAcOption {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SelectiveAcOption;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"op\" or a layer interval such as \"2\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text == "op" {
                    return Ok(SelectiveAcOption::Op);
                }
                text.trim()
                    .parse::<usize>()
                    .map(SelectiveAcOption::EveryNthLayer)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(text), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                usize::try_from(n)
                    .map(SelectiveAcOption::EveryNthLayer)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                usize::try_from(n)
                    .map(SelectiveAcOption::EveryNthLayer)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl OptionType for SelectiveAcOption {
    fn type_name() -> String {
        "str (\"op\" or a layer interval N >= 1, e.g. \"2\")".into()
    }
    fn cli_value(text: &str) -> Option<CliValue> {
        Some(CliValue::Set(toml::Value::String(text.to_string())))
    }
}

section! {
    /// Activation checkpointing (recompute activations in backward to save memory).
    pub struct ActivationCheckpoint {
        /// Mode: `selective`, `full`, `memory_budget` or `none`.
        pub mode: AcMode = AcMode::Selective,
        /// Selective AC: `"N"` checkpoints every N-th block, `"op"` uses the per-op policy.
        pub selective_ac_option: SelectiveAcOption = SelectiveAcOption::EveryNthLayer(2),
        /// Per-op SAC: matmuls with the shapes of these Linear modules are always recomputed.
        pub per_op_sac_force_recompute_mm_shapes_by_fqns: Vec<String> = vec![String::from("moe.router.gate")],
        /// Stop recomputing early once all needed activations are rematerialized.
        pub early_stop: bool = false,
        /// `memory_budget` mode: 0.0 recomputes everything, 1.0 is the runtime-optimized default.
        pub memory_budget: f64 = 0.5,
        /// `memory_budget` mode: dump an SVG of the runtime/memory Pareto front.
        pub visualize_memory_budget_pareto: bool = false,
        /// Stash and restore the RNG state around recomputation.
        pub preserve_rng_state: bool = true,
        /// Determinism check applied to recomputed activations.
        pub determinism_check: String = String::from("default"),
        /// Capture activation-checkpointing debug information (slower).
        pub debug: bool = false,
    }
}

section! {
    /// Memory estimation: predict peak memory instead of training.
    pub struct MemoryEstimation {
        /// Estimate memory usage for the configured parallelism.
        pub enable: bool = false,
        /// Estimate with real tensors instead of fake (shape-only) ones.
        pub disable_fake_mode: bool = false,
    }
}
