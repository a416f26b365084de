//! One handle over the data-parallel strategies, chosen from the mesh as torchtitan does:
//! FSDP when parameters are sharded (`dp_shard x cp > 1`; HSDP when `dp_replicate > 1` too),
//! DDP when `dp_replicate` is the only data parallelism, nothing for a single rank.
//!
//! The trainer's step is the same for all of them:
//! ```text
//! executor.forward_backward(&mut model, .., &mut dp, mb)     // dp: BlockHooks
//! let norm = dp.clip_grad_norm(&mut model, max_norm)?;
//! optimizer.step(&mut dp.optimizer_params(&mut model), lr)?;
//! dp.after_optimizer_step(&mut model)?;
//! ```

use candle_core::{DType, Device, Tensor};
use titan_core::{BlockHooks, LayeredModel, MicrobatchInfo, Module, Param, UnitId};

use crate::clip::clip_grad_norm_distributed;
use crate::ddp::{Ddp, DdpConfig};
use crate::fsdp::{Fsdp, FsdpConfig, ReshardAfterForward, ShardInit};
use crate::mesh::{DeviceMesh, MeshAxis};
use crate::state::ShardMeta;
use crate::{Error, Result};

/// Options of every strategy (torchtitan's `training.mixed_precision_*` and
/// `parallelism.fsdp_reshard_after_forward`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataParallelConfig {
    /// The dtype the model computes with (gathered weights under FSDP; compute copies
    /// otherwise).
    pub param_dtype: DType,
    /// The dtype gradients are reduced in.
    pub reduce_dtype: DType,
    pub reshard_after_forward: ReshardAfterForward,
    /// DDP bucket size.
    pub bucket_cap_mb: f64,
    /// FSDP: prefetch all-gathers and defer reduce-scatter waits so collectives overlap compute
    /// on device backends (see [`crate::fsdp`]). Default on unless `TITAN_FSDP_OVERLAP=0`.
    pub overlap: bool,
}

impl DataParallelConfig {
    /// Compute in `param_dtype`, reduce in f32, default resharding, 100 MB DDP buckets, FSDP
    /// overlap as [`crate::fsdp::overlap_default`].
    pub fn new(param_dtype: DType) -> Self {
        Self {
            param_dtype,
            reduce_dtype: DType::F32,
            reshard_after_forward: ReshardAfterForward::Default,
            bucket_cap_mb: 100.0,
            overlap: crate::fsdp::overlap_default(),
        }
    }
}

/// The data-parallel strategy of this run.
// One value per run: boxing the large FSDP variant (its CUDA streams and events) saves nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DataParallel {
    /// One data-parallel rank: parameters live in the model.
    Single,
    /// Replicated parameters, all-reduced gradients.
    Ddp(Ddp),
    /// Sharded parameters (FSDP, or HSDP when it has a replicate group).
    Fsdp(Fsdp),
}

impl DataParallel {
    /// Picks and builds the strategy for `mesh`, and initializes the parameters (`init`):
    /// shards under FSDP, full masters and compute copies otherwise.
    pub fn new<M: LayeredModel + Module>(
        model: &mut M,
        mesh: &DeviceMesh,
        cfg: &DataParallelConfig,
        init: ShardInit,
        device: &Device,
    ) -> Result<Self> {
        let dims = mesh.dims();
        // Without the model-parallel strategies, ranks along those axes would each compute the
        // same batch's full gradient and FSDP would sum them: refuse rather than be wrong.
        for (axis, degree, option) in [
            ("tensor", dims.tp, "parallelism.tensor_parallel_degree"),
            ("pipeline", dims.pp, "parallelism.pipeline_parallel_degree"),
            ("context", dims.cp, "parallelism.context_parallel_degree"),
        ] {
            if degree > 1 {
                return Err(Error::Config(format!(
                    "{option} = {degree}: Titan has no {axis} parallelism yet; set it to 1 and use \
                     parallelism.data_parallel_shard_degree / data_parallel_replicate_degree"
                )));
            }
        }
        if dims.fsdp_enabled() {
            let fsdp_cfg = FsdpConfig {
                param_dtype: cfg.param_dtype,
                reduce_dtype: cfg.reduce_dtype,
                reshard_after_forward: cfg.reshard_after_forward,
                pipeline_parallel: dims.pp > 1,
                overlap: cfg.overlap,
            };
            let replicate =
                (dims.dp_replicate > 1).then(|| mesh.group(MeshAxis::DpReplicate).clone());
            return Ok(Self::Fsdp(Fsdp::new(
                model,
                mesh.fsdp().clone(),
                replicate,
                fsdp_cfg,
                init,
                device,
            )?));
        }
        materialize(model, init, cfg.param_dtype, device)?;
        if dims.dp_replicate > 1 {
            let ddp_cfg = DdpConfig {
                reduce_dtype: cfg.reduce_dtype,
                bucket_cap_mb: cfg.bucket_cap_mb,
                broadcast_params: true,
                overlap: cfg.overlap,
            };
            return Ok(Self::Ddp(Ddp::new(
                model,
                mesh.group(MeshAxis::DpReplicate).clone(),
                ddp_cfg,
            )?));
        }
        Ok(Self::Single)
    }

    /// `single`, `ddp`, `fsdp` or `hsdp`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Ddp(_) => "ddp",
            Self::Fsdp(f) if f.replicate_group().is_some() => "hsdp",
            Self::Fsdp(_) => "fsdp",
        }
    }

    /// The parameters the optimizer steps on: FSDP's shards, else the model's parameters.
    pub fn optimizer_params<'a, M: Module>(&'a mut self, model: &'a mut M) -> Vec<&'a mut Param> {
        match self {
            Self::Fsdp(f) => f.shard_params_mut(),
            Self::Single | Self::Ddp(_) => model.params_mut(),
        }
    }

    /// Runs an optimizer step (`step`) over [`DataParallel::optimizer_params`]: under FSDP in
    /// two calls, so the next pass's first all-gathers overlap the rest of the step
    /// ([`Fsdp::step_and_prefetch`]; `next_pass`: whether another pass follows); otherwise in
    /// one.
    pub fn optimizer_step<M: Module, E: From<crate::Error>>(
        &mut self,
        model: &mut M,
        next_pass: bool,
        mut step: impl FnMut(&mut [&mut Param]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        match self {
            Self::Fsdp(f) => f.step_and_prefetch(next_pass, step),
            Self::Single | Self::Ddp(_) => step(&mut model.params_mut()),
        }
    }

    /// Clips gradients to a global 2-norm of `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm<M: Module>(&mut self, model: &mut M, max_norm: f64) -> Result<f64> {
        match self {
            Self::Fsdp(f) => f.clip_grad_norm(max_norm),
            Self::Ddp(d) => d.clip_grad_norm(model, max_norm),
            Self::Single => clip_grad_norm_distributed(&mut model.params_mut(), max_norm, &[]),
        }
    }

    /// The squared global 2-norm of all gradients, summed over ranks without counting
    /// replicas twice (for a caller that clips itself, e.g. titan-optim's
    /// `clip_with_total_norm`). Identical on every rank.
    pub fn grad_sq_norm<M: Module>(&self, model: &M) -> Result<f64> {
        match self {
            Self::Fsdp(f) => f.grad_sq_norm(),
            // DDP replicas hold identical reduced gradients: the local norm is the global one.
            Self::Single | Self::Ddp(_) => crate::clip::local_sq_norm(&model.params()),
        }
    }

    /// (Re)draws the initial weights with `seed`: FSDP shards in place; otherwise every
    /// parameter of `model`, on the device of its current master, with compute copies in
    /// `compute_dtype`. Every rank draws the same values for the same elements.
    pub fn init_weights<M: Module>(
        &mut self,
        model: &mut M,
        seed: u64,
        compute_dtype: DType,
    ) -> Result<()> {
        if let Self::Fsdp(f) = self {
            return f.init_weights(seed);
        }
        for p in model.params_mut() {
            let device = p.master().map(|m| m.device().clone()).ok_or_else(|| {
                Error::Sharding(format!(
                    "parameter `{}` has no master values to redraw",
                    p.name()
                ))
            })?;
            p.materialize(&device, seed, compute_dtype)?;
        }
        Ok(())
    }

    /// What this rank holds of the parameter named `name` (see [`ShardMeta`]).
    pub fn shard_meta<M: Module>(&self, model: &M, name: &str) -> Option<ShardMeta> {
        match self {
            Self::Fsdp(f) => f.shard_meta(name),
            Self::Single | Self::Ddp(_) => {
                self.shard_metas(model).into_iter().find(|m| m.name == name)
            }
        }
    }

    /// After an optimizer step that rebuilt the compute copies itself (titan-optim's
    /// `step_and_refresh*` over [`DataParallel::optimizer_params`]): clear every gradient.
    pub fn after_refreshing_step<M: Module>(&mut self, model: &mut M) {
        match self {
            Self::Fsdp(f) => f.zero_grad(),
            Self::Single | Self::Ddp(_) => {
                for p in model.params_mut() {
                    p.zero_grad();
                }
            }
        }
    }

    /// After the optimizer step: rebuild compute copies of replicated parameters (FSDP
    /// gathers fresh ones at the next forward) and clear every gradient.
    pub fn after_optimizer_step<M: Module>(
        &mut self,
        model: &mut M,
        compute_dtype: DType,
    ) -> Result<()> {
        if !matches!(self, Self::Fsdp(_)) {
            for p in model.params_mut() {
                p.refresh_compute(compute_dtype)?;
            }
        }
        self.after_refreshing_step(model);
        Ok(())
    }

    /// What this rank holds of every parameter (see [`ShardMeta`]).
    pub fn shard_metas<M: Module>(&self, model: &M) -> Vec<ShardMeta> {
        match self {
            Self::Fsdp(f) => f.shard_metas(),
            Self::Single | Self::Ddp(_) => {
                let replica = match self {
                    Self::Ddp(d) => d.group().rank(),
                    _ => 0,
                };
                model
                    .params()
                    .into_iter()
                    .map(|p| ShardMeta {
                        name: p.name().to_string(),
                        global_shape: p.shape().dims().to_vec(),
                        offset: 0,
                        rows: p.shape().dims().first().copied().unwrap_or(1),
                        replica,
                    })
                    .collect()
            }
        }
    }

    /// The f32 masters this rank holds, with their metadata, for a checkpoint save.
    pub fn sharded_state<M: Module>(&self, model: &M) -> Result<Vec<(ShardMeta, Tensor)>> {
        match self {
            Self::Fsdp(f) => f.sharded_state(),
            Self::Single | Self::Ddp(_) => {
                let metas = self.shard_metas(model);
                metas
                    .into_iter()
                    .zip(model.params())
                    .map(|(m, p)| {
                        let t = p.master().ok_or_else(|| {
                            Error::Sharding(format!(
                                "parameter `{}` has no master values to save",
                                p.name()
                            ))
                        })?;
                        Ok((m, t.clone()))
                    })
                    .collect()
            }
        }
    }

    /// Loads every parameter from `read` (see [`Fsdp::load_sharded`]); replicated parameters
    /// get fresh compute copies in `compute_dtype`.
    pub fn load_sharded<M: Module>(
        &mut self,
        model: &mut M,
        compute_dtype: DType,
        mut read: impl FnMut(&ShardMeta) -> Result<Tensor>,
    ) -> Result<()> {
        if let Self::Fsdp(f) = self {
            return f.load_sharded(read);
        }
        let metas = self.shard_metas(model);
        for (meta, p) in metas.iter().zip(model.params_mut()) {
            let t = read(meta)?;
            p.set_master(t)?;
            p.refresh_compute(compute_dtype)?;
            p.zero_grad();
        }
        Ok(())
    }

    /// Every full parameter as f32 (collective under FSDP).
    pub fn full_state<M: Module>(&self, model: &M) -> Result<Vec<(String, Tensor)>> {
        match self {
            Self::Fsdp(f) => f.gather_full_state(),
            Self::Single | Self::Ddp(_) => model
                .params()
                .into_iter()
                .map(|p| {
                    let t = p.master().ok_or_else(|| {
                        Error::Sharding(format!("parameter `{}` has no master values", p.name()))
                    })?;
                    Ok((p.name().to_string(), t.clone()))
                })
                .collect(),
        }
    }
}

/// Gives every parameter of `model` its full master and compute copy.
fn materialize<M: Module>(
    model: &mut M,
    init: ShardInit,
    compute_dtype: DType,
    device: &Device,
) -> Result<()> {
    for p in model.params_mut() {
        match init {
            ShardInit::Seed(seed) => p.materialize(device, seed, compute_dtype)?,
            ShardInit::Zeros => {
                p.set_master(Tensor::zeros(p.shape(), DType::F32, device)?)?;
                p.refresh_compute(compute_dtype)?;
            }
            ShardInit::TakeMasters => {
                if p.master().is_none() {
                    return Err(Error::Sharding(format!(
                        "parameter `{}` has no master values: initialize the model first, or use ShardInit::Seed",
                        p.name()
                    )));
                }
                p.refresh_compute(compute_dtype)?;
            }
        }
    }
    Ok(())
}

impl BlockHooks for DataParallel {
    fn before_forward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        match self {
            Self::Fsdp(f) => f.before_forward(unit, params, mb),
            Self::Ddp(d) => d.before_forward(unit, params, mb),
            Self::Single => Ok(()),
        }
    }
    fn after_forward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        match self {
            Self::Fsdp(f) => f.after_forward(unit, params, mb),
            Self::Ddp(d) => d.after_forward(unit, params, mb),
            Self::Single => Ok(()),
        }
    }
    fn before_backward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        match self {
            Self::Fsdp(f) => f.before_backward(unit, params, mb),
            Self::Ddp(d) => d.before_backward(unit, params, mb),
            Self::Single => Ok(()),
        }
    }
    fn after_backward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        match self {
            Self::Fsdp(f) => f.after_backward(unit, params, mb),
            Self::Ddp(d) => d.after_backward(unit, params, mb),
            Self::Single => Ok(()),
        }
    }
}
