//! How parameters, gradients and reductions are laid out across processes: the seam where
//! data parallelism (FSDP, HSDP, DDP from `titan-parallel`) plugs into the training loop.
//! [`SingleDevice`] is the one-process strategy.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use titan_checkpoint::{ShardedTensor, TensorRequest};
use titan_core::{BlockHooks, NoHooks, Param};

use crate::model::TrainableModel;
use crate::Result;

/// Where one parameter's local values sit in its global tensor (dim-0 shards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    pub global_shape: Vec<usize>,
    /// First row of the local shard along dim 0.
    pub start: usize,
    /// Rows held locally.
    pub len: usize,
    /// Whether this rank writes this piece to checkpoints (one replica of each piece does).
    pub writes: bool,
}

/// A data-parallel strategy as the training loop sees it.
pub trait Strategy<M: TrainableModel>: Send {
    /// Hooks around each unit (gather / reshard / reduce).
    fn hooks(&mut self) -> &mut dyn BlockHooks;
    /// This process's rank among data-parallel ranks, and their number (for data sharding).
    fn dp_rank(&self) -> usize;
    fn dp_world_size(&self) -> usize;
    /// This process's global rank and the world size.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sum / max of a scalar over the data-parallel ranks (token counts, losses).
    fn all_reduce_sum(&mut self, v: f64) -> Result<f64>;
    fn all_reduce_max(&mut self, v: f64) -> Result<f64>;
    /// Draw initial weights (each rank its own part) on `device`, compute copies in
    /// `compute_dtype`. The model is shape-only before this call.
    fn init_weights(
        &mut self,
        model: &mut M,
        seed: u64,
        device: &Device,
        compute_dtype: DType,
    ) -> Result<()>;
    /// The parameters the optimizer steps on (full parameters, or this rank's shards).
    fn optimizer_params<'a>(&'a mut self, model: &'a mut M) -> Vec<&'a mut Param>;
    /// Runs the optimizer step `step` over [`Strategy::optimizer_params`], in one call or in
    /// several over disjoint parts (a sharding strategy starts gathering the next pass's first
    /// units once their parameters are stepped). `next_pass`: whether another step follows.
    fn optimizer_step(
        &mut self,
        model: &mut M,
        next_pass: bool,
        step: &mut dyn FnMut(&mut [&mut Param]) -> Result<()>,
    ) -> Result<()> {
        let _ = next_pass;
        step(&mut self.optimizer_params(model))
    }
    /// Squared L2 norm of all gradients across every rank (no double counting of replicas).
    fn global_grad_sq_norm(&mut self, model: &mut M) -> Result<f64>;
    /// Whether the optimizer step itself rebuilds the compute copies of the parameters it
    /// steps (they are the model's own parameters, as on one device): the fused AdamW
    /// writes them in the same pass, and [`Strategy::after_step`] then skips its refresh.
    fn refresh_in_step(&self) -> bool {
        false
    }
    /// After the optimizer step: make compute copies current (unless
    /// [`Strategy::refresh_in_step`]), drop gradients.
    fn after_step(&mut self, model: &mut M) -> Result<()>;
    /// After a checkpoint load replaced the masters outside the optimizer: make compute copies
    /// current, drop gradients.
    fn after_restore(&mut self, model: &mut M) -> Result<()> {
        if self.refresh_in_step() {
            // after_step leaves compute copies to the optimizer step on such strategies.
            model.refresh_compute()?;
        }
        self.after_step(model)
    }
    /// Where each optimizer parameter sits globally (for checkpoints).
    fn layout(&self, model: &M, name: &str) -> Option<ShardLayout>;
    /// Wait for every rank (checkpoint coordination).
    fn barrier(&mut self) -> Result<()>;
}

/// Everything on one device in one process.
#[derive(Debug, Default)]
pub struct SingleDevice {
    hooks: NoHooks,
}

impl<M: TrainableModel> Strategy<M> for SingleDevice {
    fn hooks(&mut self) -> &mut dyn BlockHooks {
        &mut self.hooks
    }
    fn dp_rank(&self) -> usize {
        0
    }
    fn dp_world_size(&self) -> usize {
        1
    }
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, v: f64) -> Result<f64> {
        Ok(v)
    }
    fn all_reduce_max(&mut self, v: f64) -> Result<f64> {
        Ok(v)
    }
    fn init_weights(
        &mut self,
        model: &mut M,
        seed: u64,
        _device: &Device,
        _compute_dtype: DType,
    ) -> Result<()> {
        model.init_weights(seed)
    }
    fn optimizer_params<'a>(&'a mut self, model: &'a mut M) -> Vec<&'a mut Param> {
        model.params_mut()
    }
    fn global_grad_sq_norm(&mut self, model: &mut M) -> Result<f64> {
        Ok(titan_optim::local_sq_norm(&model.params())?)
    }
    fn refresh_in_step(&self) -> bool {
        true
    }
    fn after_step(&mut self, model: &mut M) -> Result<()> {
        // The step rebuilt the compute copies (refresh_in_step).
        for p in model.params_mut() {
            p.zero_grad();
        }
        Ok(())
    }
    fn layout(&self, model: &M, name: &str) -> Option<ShardLayout> {
        model
            .params()
            .into_iter()
            .find(|p| p.name() == name)
            .map(|p| {
                let dims = p.shape().dims().to_vec();
                ShardLayout {
                    start: 0,
                    len: dims.first().copied().unwrap_or(1),
                    global_shape: dims,
                    writes: true,
                }
            })
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The checkpoint entries of a list of local tensors (`prefix.<name>`), sharded as `layout` says.
pub(crate) fn sharded_entries<M: TrainableModel, S: Strategy<M> + ?Sized>(
    strategy: &S,
    model: &M,
    tensors: impl IntoIterator<Item = (String, String, Tensor)>,
) -> Vec<ShardedTensor> {
    tensors
        .into_iter()
        .filter(|(_, fqn, _)| strategy.layout(model, fqn).is_none_or(|l| l.writes))
        .map(|(key, fqn, t)| match strategy.layout(model, &fqn) {
            Some(l) if l.global_shape.first() != Some(&l.len) => {
                ShardedTensor::dim0(key, l.global_shape, l.start, t)
            }
            _ => ShardedTensor::full(key, t),
        })
        .collect()
}

/// The load requests matching [`sharded_entries`].
pub(crate) fn tensor_requests<M: TrainableModel, S: Strategy<M> + ?Sized>(
    strategy: &S,
    model: &M,
    names: impl IntoIterator<Item = (String, String, Vec<usize>)>,
) -> Vec<TensorRequest> {
    names
        .into_iter()
        .map(
            |(key, fqn, local_shape)| match strategy.layout(model, &fqn) {
                Some(l) if l.global_shape.first() != Some(&l.len) => {
                    TensorRequest::dim0(key, l.global_shape, l.start, l.len)
                }
                _ => TensorRequest::full(key, local_shape),
            },
        )
        .collect()
}

/// Look up a loaded tensor, with an error that names the checkpoint key.
pub(crate) fn take_loaded(loaded: &mut HashMap<String, Tensor>, key: &str) -> Result<Tensor> {
    loaded.remove(key).ok_or_else(|| {
        crate::Error::Msg(format!(
            "the checkpoint has no tensor `{key}`; it was written by a different model or config (check model.flavor and the model.* overrides)"
        ))
    })
}
