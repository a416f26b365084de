//! Optimizer hyperparameters: torchtitan's `[optimizer]` section for AdamW and Adam.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Hyperparameters of AdamW (`decoupled = true`) or Adam with L2 weight decay
/// (`decoupled = false`). Defaults are torchtitan's: lr 8e-4, betas (0.9, 0.95), eps 1e-8,
/// weight decay 0.1 applied to every parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Base learning rate (`optimizer.lr`). The schedule scales it; [`crate::Optimizer::step`]
    /// takes the scheduled value, so the optimizer itself only records this one.
    pub lr: f64,
    /// `(optimizer.beta1, optimizer.beta2)`.
    pub betas: (f64, f64),
    /// `optimizer.eps`, added to the bias-corrected denominator.
    pub eps: f64,
    /// `optimizer.weight_decay`.
    pub weight_decay: f64,
    /// `true`: AdamW (decay multiplies the parameter); `false`: Adam (decay is added to the
    /// gradient, `torch.optim.Adam(weight_decay=...)`).
    pub decoupled: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self::adamw()
    }
}

impl AdamWConfig {
    /// torchtitan's AdamW defaults.
    pub fn adamw() -> Self {
        Self {
            lr: 8e-4,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
            decoupled: true,
        }
    }

    /// torchtitan's `optimizer.name = "Adam"` with the same defaults (L2 decay on the gradient).
    pub fn adam() -> Self {
        Self {
            decoupled: false,
            ..Self::adamw()
        }
    }

    /// The optimizer's class name as torchtitan logs it (`lr/AdamW`): `"AdamW"` or `"Adam"`.
    pub fn name(&self) -> &'static str {
        if self.decoupled {
            "AdamW"
        } else {
            "Adam"
        }
    }

    /// PyTorch's constructor checks, with the TOML key to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, value: f64, reason: &str| {
            Err(Error::InvalidConfig {
                key,
                value: value.to_string(),
                reason: reason.to_string(),
            })
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(
                "optimizer.lr",
                self.lr,
                "must be a finite number >= 0 (default 8e-4)",
            );
        }
        if !(0.0..1.0).contains(&self.betas.0) {
            return bad(
                "optimizer.beta1",
                self.betas.0,
                "must be in [0, 1) (default 0.9)",
            );
        }
        if !(0.0..1.0).contains(&self.betas.1) {
            return bad(
                "optimizer.beta2",
                self.betas.1,
                "must be in [0, 1) (default 0.95)",
            );
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(
                "optimizer.eps",
                self.eps,
                "must be a finite number >= 0 (default 1e-8)",
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "optimizer.weight_decay",
                self.weight_decay,
                "must be a finite number >= 0 (default 0.1)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_torchtitans() {
        let c = AdamWConfig::default();
        assert_eq!(
            (c.lr, c.betas, c.eps, c.weight_decay),
            (8e-4, (0.9, 0.95), 1e-8, 0.1)
        );
        assert!(c.decoupled);
        assert_eq!(c.name(), "AdamW");
        assert_eq!(AdamWConfig::adam().name(), "Adam");
        assert!(!AdamWConfig::adam().decoupled);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            (
                AdamWConfig {
                    lr: -1.0,
                    ..Default::default()
                },
                "optimizer.lr",
            ),
            (
                AdamWConfig {
                    lr: f64::NAN,
                    ..Default::default()
                },
                "optimizer.lr",
            ),
            (
                AdamWConfig {
                    betas: (1.0, 0.95),
                    ..Default::default()
                },
                "optimizer.beta1",
            ),
            (
                AdamWConfig {
                    betas: (0.9, -0.1),
                    ..Default::default()
                },
                "optimizer.beta2",
            ),
            (
                AdamWConfig {
                    eps: -1e-8,
                    ..Default::default()
                },
                "optimizer.eps",
            ),
            (
                AdamWConfig {
                    weight_decay: -0.1,
                    ..Default::default()
                },
                "optimizer.weight_decay",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().unwrap_err();
            assert!(
                matches!(&err, Error::InvalidConfig { key: k, .. } if *k == key),
                "{err}"
            );
        }
    }
}
