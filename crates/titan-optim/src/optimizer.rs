//! [`Optimizer`]: AdamW/Adam over titan-core [`Param`]s, state keyed by parameter name.

use std::borrow::{Borrow, BorrowMut};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};
use titan_core::Param;

use crate::clip::GradScale;
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
///
/// # Fused CUDA step
///
/// With feature `cuda`, fused kernels on (`titan_core::ops::fused::enabled()`) and every
/// stepped parameter's master and gradient f32 contiguous tensors on one CUDA device, a step
/// is one multi-tensor kernel launch that updates masters and moments in place (and, in
/// [`Optimizer::step_and_refresh`] with a bf16 compute dtype, writes the compute copies in
/// place in the same pass). The result equals the composite path's bit for bit. Handles on a
/// parameter's master or compute copy taken before the step see the new values; moments
/// handed out by [`Optimizer::state_dict`] are copied before the next in-place step, so a
/// snapshot stays valid. Anything else runs the composite path.
#[derive(Debug)]
pub struct Optimizer {
    config: AdamWConfig,
    moments: BTreeMap<String, MomentState>,
    /// The moment tensors may have other holders (a state-dict snapshot, a clone, a loaded
    /// state): copy them before the next in-place update.
    moments_shared: AtomicBool,
}

impl Clone for Optimizer {
    fn clone(&self) -> Self {
        // Both now share moment tensors; neither may write them in place.
        self.moments_shared.store(true, Ordering::Relaxed);
        Self {
            config: self.config,
            moments: self.moments.clone(),
            moments_shared: AtomicBool::new(true),
        }
    }
}

impl Optimizer {
    /// An optimizer with no state yet (state is created at a parameter's first step).
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            moments: BTreeMap::new(),
            moments_shared: AtomicBool::new(false),
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
        self.step_params(params, lr, &GradScale::ONE, None)
            .map(|_| ())
    }

    /// [`Optimizer::step`] with every gradient multiplied by `scale` as it is read (the clip
    /// coefficient of [`crate::clip_coefficient`] or [`crate::clip_scale`]): the same update
    /// as clipping the gradients first, without writing them. The gradients are not changed.
    pub fn step_with_scale<P: BorrowMut<Param>>(
        &mut self,
        params: &mut [P],
        lr: f64,
        scale: &GradScale,
    ) -> Result<()> {
        self.step_params(params, lr, scale, None).map(|_| ())
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
        self.step_and_refresh_with_scale(params, lr, compute_dtype, &GradScale::ONE)
    }

    /// [`Optimizer::step_and_refresh`] with every gradient multiplied by `scale` as it is
    /// read (see [`Optimizer::step_with_scale`]).
    pub fn step_and_refresh_with_scale<P: BorrowMut<Param>>(
        &mut self,
        params: &mut [P],
        lr: f64,
        compute_dtype: DType,
        scale: &GradScale,
    ) -> Result<()> {
        let (stepped, refreshed) = self.step_params(params, lr, scale, Some(compute_dtype))?;
        if !refreshed {
            for i in stepped {
                params[i].borrow_mut().refresh_compute(compute_dtype)?;
            }
        }
        Ok(())
    }

    /// Steps every parameter that has a gradient; returns their indices and whether their
    /// compute copies were already rebuilt in `refresh` dtype (the fused bf16 path).
    fn step_params<P: BorrowMut<Param>>(
        &mut self,
        params: &mut [P],
        lr: f64,
        scale: &GradScale,
        refresh: Option<DType>,
    ) -> Result<(Vec<usize>, bool)> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::InvalidLr { lr });
        }
        let stepped = self.check_step_inputs(params)?;
        #[cfg(feature = "cuda")]
        if let Some(refreshed) = self.step_fused(params, &stepped, lr, scale, refresh)? {
            tracing::debug!(
                optimizer = self.config.name(),
                lr,
                stepped = stepped.len(),
                skipped_without_grad = params.len() - stepped.len(),
                "optimizer step (fused)"
            );
            return Ok((stepped, refreshed));
        }
        #[cfg(not(feature = "cuda"))]
        let _ = refresh;
        for &i in &stepped {
            let p = params[i].borrow_mut();
            let (Some(master), Some(grad)) = (p.master(), p.grad()) else {
                // check_step_inputs selected only parameters holding both.
                continue;
            };
            let grad = scale.apply(&grad.to_dtype(DType::F32)?)?;
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
        Ok((stepped, false))
    }

    /// The fused CUDA step of `stepped` (see the type's docs); `None` when it does not apply
    /// (nothing changed then). Returns whether compute copies were written (`refresh` bf16).
    #[cfg(feature = "cuda")]
    fn step_fused<P: BorrowMut<Param>>(
        &mut self,
        params: &mut [P],
        stepped: &[usize],
        lr: f64,
        scale: &GradScale,
        refresh: Option<DType>,
    ) -> Result<Option<bool>> {
        use crate::fused;
        use crate::update::step_scalars;
        use titan_kernels::adamw::AdamParam;

        if !titan_core::ops::fused::enabled() {
            return Ok(None);
        }
        let Some(like) = stepped
            .first()
            .and_then(|&i| params[i].borrow().master().cloned())
        else {
            return Ok(None);
        };
        for &i in stepped {
            let p = params[i].borrow();
            let (Some(m), Some(g)) = (p.master(), p.grad()) else {
                return Ok(None);
            };
            if !fused::fits(m, &like) || !fused::fits(g, &like) {
                return Ok(None);
            }
        }
        let device = like.device().clone();
        if self.moments_shared.load(Ordering::Relaxed) {
            for m in self.moments.values_mut() {
                if m.exp_avg.device().is_cuda() {
                    m.exp_avg = m.exp_avg.copy()?;
                    m.exp_avg_sq = m.exp_avg_sq.copy()?;
                }
            }
            self.moments_shared.store(false, Ordering::Relaxed);
        }
        let on_device = |t: &Tensor| -> Result<Tensor> {
            Ok(t.to_device(&device)?.to_dtype(DType::F32)?.contiguous()?)
        };
        // New state and compute copies, installed only if the kernel runs.
        let mut prepared: Vec<(MomentState, Option<(Tensor, bool)>)> =
            Vec::with_capacity(stepped.len());
        for &i in stepped {
            let p = params[i].borrow();
            let shape = like_shape(p)?;
            let moments = match self.moments.get(p.name()) {
                Some(m) => MomentState {
                    exp_avg: on_device(&m.exp_avg)?,
                    exp_avg_sq: on_device(&m.exp_avg_sq)?,
                    step: m.step + 1,
                },
                None => MomentState {
                    exp_avg: Tensor::zeros(&shape, DType::F32, &device)?,
                    exp_avg_sq: Tensor::zeros(&shape, DType::F32, &device)?,
                    step: 1,
                },
            };
            let compute = match (refresh, p.compute()) {
                (Some(DType::BF16), Ok(c))
                    if c.dtype() == DType::BF16
                        && c.is_contiguous()
                        && c.shape() == &shape
                        && c.device().same_device(&device) =>
                {
                    Some((c.clone(), false))
                }
                (Some(DType::BF16), _) => {
                    Some((Tensor::zeros(&shape, DType::BF16, &device)?, true))
                }
                _ => None,
            };
            prepared.push((moments, compute));
        }
        let mut entries = Vec::with_capacity(stepped.len());
        for (&i, (m, c)) in stepped.iter().zip(&prepared) {
            let p = params[i].borrow();
            let (Some(master), Some(grad)) = (p.master(), p.grad()) else {
                return Ok(None);
            };
            let s = step_scalars(&self.config, m.step, lr);
            entries.push(AdamParam {
                master,
                grad,
                exp_avg: &m.exp_avg,
                exp_avg_sq: &m.exp_avg_sq,
                compute: c.as_ref().map(|(t, _)| t),
                neg_step_size: s.neg_step_size,
                inv_bc2_sqrt: s.inv_bc2_sqrt,
            });
        }
        let ran = fused::adam_step(&entries, &fused::adam_scalars(&self.config, lr), scale)?;
        drop(entries);
        if !ran {
            return Ok(None);
        }
        for (&i, (m, c)) in stepped.iter().zip(prepared) {
            let p = params[i].borrow_mut();
            if let Some((t, true)) = c {
                p.set_compute(t)?;
            }
            self.moments.insert(p.name().to_string(), m);
        }
        Ok(Some(refresh == Some(DType::BF16)))
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
        // The snapshot shares the tensors: the fused step copies them before writing.
        self.moments_shared.store(true, Ordering::Relaxed);
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
        // The caller may hold other handles on the loaded tensors.
        self.moments_shared.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The shape of `p`'s master (the local shard's shape under sharding).
#[cfg(feature = "cuda")]
fn like_shape(p: &Param) -> Result<candle_core::Shape> {
    p.master()
        .map(|m| m.shape().clone())
        .ok_or_else(|| Error::MissingMaster {
            param: p.name().to_string(),
        })
}
