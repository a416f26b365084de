//! torchtitan's learning-rate schedule: linear warmup, an optional stable phase, then linear,
//! sqrt or cosine decay towards `min_lr_factor` (`components/lr_scheduler.py`,
//! `linear_warmup_stable_decay`).
//!
//! With `total` steps, `warmup = min(warmup_steps, total)`, `decay = round(total *
//! decay_ratio)` (clamped to `total - warmup`; `total - warmup` when `decay_ratio` is unset)
//! and `stable = total + 1 - warmup - decay` (one virtual step so the last real step's lr is
//! not 0), the factor for 0-based step `s` is:
//! - `s < warmup`: `(s + 1) / warmup`;
//! - `s < warmup + stable`: `1`;
//! - otherwise, with `p = (s + 1 - warmup - stable) / decay`: `1 - p` (linear), `1 - sqrt(p)`
//!   (sqrt) or `(1 + cos(pi p)) / 2` (cosine), mapped to `min + (1 - min) * f`.
//!
//! Steps past `total` keep the value of the virtual step after the last (torchtitan would go on
//! evaluating the formula, reaching negative learning rates for linear and sqrt decay).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Shape of the decay phase (`lr_scheduler.decay_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayType {
    #[default]
    Linear,
    Sqrt,
    Cosine,
}

impl FromStr for DecayType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "sqrt" => Ok(Self::Sqrt),
            "cosine" => Ok(Self::Cosine),
            other => Err(Error::InvalidConfig {
                key: "lr_scheduler.decay_type",
                value: format!("{other:?}"),
                reason: "must be one of \"linear\", \"sqrt\", \"cosine\"".to_string(),
            }),
        }
    }
}

impl fmt::Display for DecayType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Sqrt => "sqrt",
            Self::Cosine => "cosine",
        })
    }
}

/// The schedule's inputs: torchtitan's `[lr_scheduler]` section plus the base lr and the
/// total step count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedulerConfig {
    /// Base learning rate (`optimizer.lr`): the factor multiplies it.
    pub lr: f64,
    /// `lr_scheduler.warmup_steps` (clamped to `total_steps`).
    pub warmup_steps: u64,
    /// `lr_scheduler.decay_ratio`: fraction of `total_steps` spent decaying, in [0, 1];
    /// `None` decays right after warmup.
    pub decay_ratio: Option<f64>,
    /// `lr_scheduler.decay_type`.
    pub decay_type: DecayType,
    /// `lr_scheduler.min_lr_factor`: the factor decay ends at, in [0, 1].
    pub min_lr_factor: f64,
    /// `lr_scheduler.total_steps`, or `training.steps` when that is unset.
    pub total_steps: u64,
}

impl Default for LrSchedulerConfig {
    /// torchtitan's defaults: lr 8e-4, warmup 200, no decay ratio, linear, min factor 0,
    /// `training.steps` 10000.
    fn default() -> Self {
        Self {
            lr: 8e-4,
            warmup_steps: 200,
            decay_ratio: None,
            decay_type: DecayType::Linear,
            min_lr_factor: 0.0,
            total_steps: 10_000,
        }
    }
}

/// What a checkpoint stores: the number of steps taken (torchtitan 0.3's `last_epoch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrSchedulerState {
    pub last_step: u64,
}

/// The schedule and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    config: LrSchedulerConfig,
    warmup: u64,
    stable: u64,
    decay: u64,
    last_step: u64,
}

impl LrScheduler {
    /// Validate `config` and derive the phase lengths; the scheduler starts before step 1.
    pub fn new(config: LrSchedulerConfig) -> Result<Self> {
        let bad = |key: &'static str, value: String, reason: &str| {
            Err(Error::InvalidConfig {
                key,
                value,
                reason: reason.to_string(),
            })
        };
        if !(config.lr.is_finite() && config.lr >= 0.0) {
            return bad(
                "optimizer.lr",
                config.lr.to_string(),
                "must be a finite number >= 0",
            );
        }
        if config.total_steps == 0 {
            return bad(
                "training.steps",
                "0".to_string(),
                "the schedule needs at least 1 step (set training.steps or lr_scheduler.total_steps)",
            );
        }
        if let Some(r) = config.decay_ratio {
            if !(0.0..=1.0).contains(&r) {
                return bad(
                    "lr_scheduler.decay_ratio",
                    r.to_string(),
                    "must be in [0, 1], or unset to decay right after warmup",
                );
            }
        }
        if !(0.0..=1.0).contains(&config.min_lr_factor) {
            return bad(
                "lr_scheduler.min_lr_factor",
                config.min_lr_factor.to_string(),
                "must be in [0, 1] (default 0.0)",
            );
        }

        let total = config.total_steps;
        let mut warmup = config.warmup_steps;
        if warmup > total {
            tracing::warn!(
                warmup,
                total,
                "lr_scheduler.warmup_steps exceeds the total training steps; using {total}"
            );
            warmup = total;
        }
        let decay = match config.decay_ratio {
            Some(ratio) => {
                // Python's round(): ties to even.
                let decay = (total as f64 * ratio).round_ties_even() as u64;
                if warmup + decay > total {
                    tracing::warn!(
                        warmup,
                        decay,
                        total,
                        "warmup + decay steps exceed the total training steps; decaying for {} steps",
                        total - warmup
                    );
                    total - warmup
                } else {
                    decay
                }
            }
            None => total - warmup,
        };
        let stable = total + 1 - warmup - decay;
        Ok(Self {
            config,
            warmup,
            stable,
            decay,
            last_step: 0,
        })
    }

    pub fn config(&self) -> &LrSchedulerConfig {
        &self.config
    }
    /// Warmup length after clamping to the total.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup
    }
    /// Stable-phase length, including the virtual last step.
    pub fn stable_steps(&self) -> u64 {
        self.stable
    }
    /// Decay length.
    pub fn decay_steps(&self) -> u64 {
        self.decay
    }

    /// The lr multiplier for 1-based training step `step` (step 0 reads as step 1).
    pub fn factor_at(&self, step: u64) -> f64 {
        // torchtitan's LambdaLR counts from 0 and never goes past the virtual step `total`.
        let s = step.saturating_sub(1).min(self.config.total_steps);
        let warmup_stable = self.warmup + self.stable;
        if s < self.warmup {
            (s + 1) as f64 / self.warmup as f64
        } else if s < warmup_stable {
            1.0
        } else {
            // Reached only when decay > 0: s <= total = warmup + stable + decay - 1.
            let progress = (s + 1 - warmup_stable) as f64 / self.decay as f64;
            let f = match self.config.decay_type {
                DecayType::Linear => 1.0 - progress,
                DecayType::Sqrt => 1.0 - progress.sqrt(),
                DecayType::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            };
            let min = self.config.min_lr_factor;
            min + (1.0 - min) * f
        }
    }

    /// The learning rate for 1-based training step `step`: factor times the base lr.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.config.lr * self.factor_at(step)
    }

    /// The learning rate for the next step (`last_step() + 1`): pass it to the optimizer and
    /// log it, then call [`LrScheduler::step`].
    pub fn current_lr(&self) -> f64 {
        self.lr_at(self.last_step + 1)
    }

    /// Advance after an optimizer step.
    pub fn step(&mut self) {
        self.last_step += 1;
    }

    /// Steps taken so far (0 before the first).
    pub fn last_step(&self) -> u64 {
        self.last_step
    }

    /// The state to checkpoint.
    pub fn state(&self) -> LrSchedulerState {
        LrSchedulerState {
            last_step: self.last_step,
        }
    }

    /// Resume at a saved position. The schedule itself comes from the current config, as in
    /// torchtitan 0.3, so `training.steps` may change between runs.
    pub fn load_state(&mut self, state: LrSchedulerState) {
        if state.last_step > self.config.total_steps {
            tracing::warn!(
                last_step = state.last_step,
                total_steps = self.config.total_steps,
                "resumed LR schedule is past its total steps; the lr stays at its final value"
            );
        }
        self.last_step = state.last_step;
    }
}
