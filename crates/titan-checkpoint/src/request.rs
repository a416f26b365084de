//! What the trainer hands to a save and asks of a load: named (possibly sharded) tensors,
//! opaque JSON blobs, and the local regions each rank wants back.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::region::Region;

/// A rank's part of a named tensor: the box `offset .. offset + tensor.dims()` of a tensor of
/// `global_shape`. Unsharded tensors have offset zero and `global_shape == tensor.dims()`.
/// Padding (FSDP's last-shard padding) must not be included: give the real region.
#[derive(Debug, Clone)]
pub struct ShardedTensor {
    /// Namespaced name: `model.<fqn>`, `optimizer.<fqn>.exp_avg`, ... (see [`crate::keys`]).
    pub name: String,
    pub global_shape: Vec<usize>,
    /// Start of this shard in each dimension.
    pub offset: Vec<usize>,
    /// The local shard, on any device and of any stored dtype.
    pub tensor: Tensor,
}

impl ShardedTensor {
    /// A whole tensor.
    pub fn full(name: impl Into<String>, tensor: Tensor) -> Self {
        let global_shape = tensor.dims().to_vec();
        Self {
            name: name.into(),
            offset: vec![0; global_shape.len()],
            global_shape,
            tensor,
        }
    }

    /// Rows `start .. start + tensor.dims()[0]` of a tensor of `global_shape` (dim-0 sharding,
    /// as FSDP does it).
    pub fn dim0(
        name: impl Into<String>,
        global_shape: Vec<usize>,
        start: usize,
        tensor: Tensor,
    ) -> Self {
        let mut offset = vec![0; global_shape.len()];
        if let Some(first) = offset.first_mut() {
            *first = start;
        }
        Self {
            name: name.into(),
            global_shape,
            offset,
            tensor,
        }
    }

    /// The box this shard covers.
    pub fn region(&self) -> Region {
        Region::new(self.offset.clone(), self.tensor.dims().to_vec())
    }
}

/// Everything one rank contributes to the checkpoint of one step.
#[derive(Debug, Clone, Default)]
pub struct SaveRequest {
    pub step: u64,
    pub rank: usize,
    /// Ranks writing this step; 1 means [`crate::Checkpointer::save`] also finalizes.
    pub world_size: usize,
    /// This is the run's last step (torchtitan's `last_step`): saved synchronously, and
    /// model-only in `export_dtype` when `last_save_model_only` is set.
    pub last_step: bool,
    /// Model and optimizer tensors (this rank's shards).
    pub tensors: Vec<ShardedTensor>,
    /// Opaque state: `lr_scheduler`, `train_state`, `dataloader.rank<r>`, ... Ranks that give
    /// the same name must give the same value.
    pub blobs: BTreeMap<String, serde_json::Value>,
}

impl SaveRequest {
    /// A single-process request (rank 0 of 1).
    pub fn single(step: u64, last_step: bool) -> Self {
        Self {
            step,
            rank: 0,
            world_size: 1,
            last_step,
            ..Default::default()
        }
    }
}

/// A region of a named tensor that one rank wants restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRequest {
    pub name: String,
    /// The global shape the model expects; a checkpoint with another is refused.
    pub global_shape: Vec<usize>,
    /// Start of the wanted region in each dimension.
    pub offset: Vec<usize>,
    /// Extent of the wanted region (the local shard's shape).
    pub shape: Vec<usize>,
}

impl TensorRequest {
    /// The whole tensor.
    pub fn full(name: impl Into<String>, global_shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            offset: vec![0; global_shape.len()],
            shape: global_shape.clone(),
            global_shape,
        }
    }

    /// Rows `start .. start + len` (dim-0 sharding).
    pub fn dim0(
        name: impl Into<String>,
        global_shape: Vec<usize>,
        start: usize,
        len: usize,
    ) -> Self {
        let mut offset = vec![0; global_shape.len()];
        let mut shape = global_shape.clone();
        if let (Some(o), Some(s)) = (offset.first_mut(), shape.first_mut()) {
            *o = start;
            *s = len;
        }
        Self {
            name: name.into(),
            global_shape,
            offset,
            shape,
        }
    }

    /// The requested box.
    pub fn region(&self) -> Region {
        Region::new(self.offset.clone(), self.shape.clone())
    }
}
