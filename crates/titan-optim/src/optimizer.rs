//! [`Optimizer`]: AdamW/Adam over titan-core [`Param`]s, state keyed by parameter name.

use std::borrow::{Borrow, BorrowMut};
use std::collections::{BTreeMap, HashSet};

use candle_core::{DType, Tensor};
use titan_core::Param;

use crate::config::AdamWConfig;
use crate::state::{exp_avg_key, OptimizerState};
use crate::update::{adam_step, MomentState};
use crate::{Error, Result};

/// AdamW (or Adam) with f32 moments, one state per parameter name.
///
/// The optimizer reads a parameter's [`Param::name`], [`Param::master`] and [`Param::grad`]
/// and writes [`Param::set_master`]; nothing else. A sharding layer may therefore hand it shard
/// parameters whose master is the local shard: the state then has the shard's shape.
///
/// After [`Optimizer::step`] the compute copies are stale: call
/// [`Param::refresh_compute`] (or use [`Optimizer::step_and_refresh`] for unsharded
/// parameters) before the next forward.
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: AdamWConfig,
    moments: BTreeMap<String, MomentState>,
}

impl Optimizer {
    /// An optimizer with no state yet (state is created at a parameter's first step).
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            moments: BTreeMap::new(),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Steps taken by the parameter named `name` (`None` before its first step).
    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.moments.get(name).map(|m| m.step)
    }

    /// Number of parameters with state.
    pub fn num_states(&self) -> usize {
        self.moments.len()
    }

    /// One optimizer step with learning rate `lr` (the schedule's value for this step).
    ///
    /// Parameters without a gradient are skipped, as in PyTorch: their values, moments and
    /// step counts do not change. Every parameter with a gradient must hold its f32 master.
    /// Inputs are checked before any parameter changes.
    pub fn step<P: BorrowMut<Param>>(&mut self, params: &mut [P], lr: f64) -> Result<()> {
        self.step_params(params, lr).map(|_| ())
    }

    /// [`Optimizer::step`], then rebuild the compute copy (`compute_dtype`) of every parameter
    /// that changed. For parameters that own their full master; a sharding layer that gathers
    /// compute copies itself should call [`Optimizer::step`].
    pub fn step_and_refresh<P: BorrowMut<Param>>(
        &mut self,
        params: &mut [P],
        lr: f64,
        compute_dtype: DType,
    ) -> Result<()> {
        for i in self.step_params(params, lr)? {
            params[i].borrow_mut().refresh_compute(compute_dtype)?;
        }
        Ok(())
    }

    /// Steps every parameter that has a gradient; returns their indices.
    fn step_params<P: BorrowMut<Param>>(
        &mut self,
        params: &mut [P],
        lr: f64,
    ) -> Result<Vec<usize>> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::InvalidLr { lr });
        }
        let stepped = self.check_step_inputs(params)?;
        for &i in &stepped {
            let p = params[i].borrow_mut();
            let (Some(master), Some(grad)) = (p.master(), p.grad()) else {
                // check_step_inputs selected only parameters holding both.
                continue;
            };
            let grad = grad.to_dtype(DType::F32)?;
            // Work on a copy (tensor handles) so a failed update leaves the state as it was.
            let mut moments = match self.moments.get(p.name()) {
                Some(m) => MomentState {
                    // Loaded state may sit on another device (a CPU checkpoint read).
                    exp_avg: m.exp_avg.to_device(master.device())?,
                    exp_avg_sq: m.exp_avg_sq.to_device(master.device())?,
                    step: m.step,
                },
                None => MomentState {
                    exp_avg: Tensor::zeros(master.shape(), DType::F32, master.device())?,
                    exp_avg_sq: Tensor::zeros(master.shape(), DType::F32, master.device())?,
                    step: 0,
                },
            };
            let new_master = adam_step(&self.config, master, &grad, &mut moments, lr)?;
            let name = p.name().to_string();
            p.set_master(new_master)?;
            self.moments.insert(name, moments);
        }
        tracing::debug!(
            optimizer = self.config.name(),
            lr,
            stepped = stepped.len(),
            skipped_without_grad = params.len() - stepped.len(),
            "optimizer step"
        );
        Ok(stepped)
    }

    /// Unique names, a master for every gradient, state shaped like its parameter.
    fn check_step_inputs<P: Borrow<Param>>(&self, params: &[P]) -> Result<Vec<usize>> {
        let mut names = HashSet::with_capacity(params.len());
        let mut stepped = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let p = p.borrow();
            if !names.insert(p.name()) {
                return Err(Error::DuplicateParam {
                    param: p.name().to_string(),
                });
            }
            if p.grad().is_none() {
                continue;
            }
            let master = p.master().ok_or_else(|| Error::MissingMaster {
                param: p.name().to_string(),
            })?;
            if let Some(m) = self.moments.get(p.name()) {
                if m.exp_avg.shape() != master.shape() {
                    return Err(Error::StateShape {
                        param: p.name().to_string(),
                        key: exp_avg_key(p.name()),
                        expected: master.shape().clone(),
                        got: m.exp_avg.shape().clone(),
                    });
                }
            }
            stepped.push(i);
        }
        Ok(stepped)
    }

    /// Check loaded state against the parameters this optimizer will step, so a mismatched
    /// checkpoint fails at load rather than at the first step: every state entry must name one
    /// of `params`, with the shape of its master (when the master is present).
    pub fn validate_params<P: Borrow<Param>>(&self, params: &[P]) -> Result<()> {
        let by_name: BTreeMap<&str, &Param> = params
            .iter()
            .map(|p| (p.borrow().name(), p.borrow()))
            .collect();
        for (name, m) in &self.moments {
            let p = by_name
                .get(name.as_str())
                .ok_or_else(|| Error::UnknownStateParam {
                    param: name.clone(),
                })?;
            if let Some(master) = p.master() {
                if master.shape() != m.exp_avg.shape() {
                    return Err(Error::StateShape {
                        param: name.clone(),
                        key: exp_avg_key(name),
                        expected: master.shape().clone(),
                        got: m.exp_avg.shape().clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The state to checkpoint (tensors shared, not copied).
    pub fn state_dict(&self) -> OptimizerState {
        OptimizerState::from_moments(self.config, &self.moments)
    }

    /// Replace all state with `state`, after checking that every listed parameter has both
    /// moments of one shape and that no stray tensor is present. The hyperparameters given to
    /// [`Optimizer::new`] stay in force (PyTorch would restore the saved ones); a difference is
    /// logged as a warning. Call [`Optimizer::validate_params`] to check shapes against the model.
    pub fn load_state_dict(&mut self, state: OptimizerState) -> Result<()> {
        if state.meta.config != self.config {
            tracing::warn!(
                saved = ?state.meta.config,
                current = ?self.config,
                "optimizer hyperparameters differ from the checkpoint's; using the current ones"
            );
        }
        self.moments = state.into_moments()?;
        Ok(())
    }
}
