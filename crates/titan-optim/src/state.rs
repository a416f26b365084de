//! The optimizer's saveable state: named f32 tensors plus serde-able metadata.
//!
//! Tensor keys follow torchtitan's flattened optimizer state (`state.<fqn>.exp_avg`), minus the
//! `state.` prefix, which belongs to whoever nests this state in a checkpoint:
//! `<fqn>.exp_avg` and `<fqn>.exp_avg_sq`. Step counts and hyperparameters live in
//! [`OptimizerStateMeta`].

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::AdamWConfig;
use crate::update::MomentState;
use crate::{Error, Result};

/// Suffix of the first-moment tensor key: `<fqn>.exp_avg`.
pub const EXP_AVG_SUFFIX: &str = ".exp_avg";
/// Suffix of the second-moment tensor key: `<fqn>.exp_avg_sq`.
pub const EXP_AVG_SQ_SUFFIX: &str = ".exp_avg_sq";

/// Key of a parameter's first moment.
pub fn exp_avg_key(fqn: &str) -> String {
    format!("{fqn}{EXP_AVG_SUFFIX}")
}

/// Key of a parameter's second moment.
pub fn exp_avg_sq_key(fqn: &str) -> String {
    format!("{fqn}{EXP_AVG_SQ_SUFFIX}")
}

/// Everything but the tensors: small, serde-able (JSON in a checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerStateMeta {
    /// Hyperparameters in force when the state was saved.
    pub config: AdamWConfig,
    /// Steps taken per parameter (PyTorch's per-parameter `step`), keyed by FQN. Every
    /// parameter listed here has both moment tensors.
    pub steps: BTreeMap<String, u64>,
}

/// A snapshot of an optimizer: f32 moments keyed `<fqn>.exp_avg` / `<fqn>.exp_avg_sq`, shaped
/// like the parameter (or the local shard) they belong to, on the parameter's device.
///
/// The tensors are shared with the optimizer, not copied; steps replace the optimizer's
/// tensors rather than writing into them (the fused CUDA step, which updates in place, first
/// copies tensors a snapshot may share), so a snapshot stays valid while training goes on.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    pub tensors: BTreeMap<String, Tensor>,
    pub meta: OptimizerStateMeta,
}

impl OptimizerState {
    pub(crate) fn from_moments(
        config: AdamWConfig,
        moments: &BTreeMap<String, MomentState>,
    ) -> Self {
        let mut tensors = BTreeMap::new();
        let mut steps = BTreeMap::new();
        for (name, m) in moments {
            tensors.insert(exp_avg_key(name), m.exp_avg.clone());
            tensors.insert(exp_avg_sq_key(name), m.exp_avg_sq.clone());
            steps.insert(name.clone(), m.step);
        }
        Self {
            tensors,
            meta: OptimizerStateMeta { config, steps },
        }
    }

    /// Check completeness and consistency, and split into per-parameter moments (cast to f32).
    pub(crate) fn into_moments(self) -> Result<BTreeMap<String, MomentState>> {
        let OptimizerState { mut tensors, meta } = self;
        let mut moments = BTreeMap::new();
        for (name, step) in meta.steps {
            let avg_key = exp_avg_key(&name);
            let sq_key = exp_avg_sq_key(&name);
            let exp_avg = take_f32(&mut tensors, &name, &avg_key)?;
            let exp_avg_sq = take_f32(&mut tensors, &name, &sq_key)?;
            if exp_avg.shape() != exp_avg_sq.shape() {
                return Err(Error::StateShape {
                    param: name,
                    key: sq_key,
                    expected: exp_avg.shape().clone(),
                    got: exp_avg_sq.shape().clone(),
                });
            }
            moments.insert(
                name,
                MomentState {
                    exp_avg,
                    exp_avg_sq,
                    step,
                },
            );
        }
        if let Some(key) = tensors.into_keys().next() {
            return Err(Error::UnexpectedStateKey { key });
        }
        Ok(moments)
    }
}

fn take_f32(tensors: &mut BTreeMap<String, Tensor>, param: &str, key: &str) -> Result<Tensor> {
    let t = tensors.remove(key).ok_or_else(|| Error::MissingStateKey {
        param: param.to_string(),
        key: key.to_string(),
    })?;
    match t.dtype() {
        DType::F32 => Ok(t),
        DType::F64 | DType::BF16 | DType::F16 => Ok(t.to_dtype(DType::F32)?),
        dtype => Err(Error::StateDType {
            key: key.to_string(),
            dtype,
        }),
    }
}
