//! Glue for single-process use with `titan-core` parameters: whole masters out as
//! `model.<fqn>` tensors, whole-tensor requests, and loaded values back into masters.
//! Sharded training builds [`ShardedTensor`]s and [`TensorRequest`]s from its own shards.

use titan_core::Param;

use crate::load::LoadedState;
use crate::request::{ShardedTensor, TensorRequest};
use crate::{keys, Error, Result};

/// `model.<fqn>` entries holding each parameter's whole f32 master.
pub fn model_tensors<'a>(
    params: impl IntoIterator<Item = &'a Param>,
) -> Result<Vec<ShardedTensor>> {
    params
        .into_iter()
        .map(|p| {
            let master = p.master().ok_or_else(|| Error::Request {
                name: keys::model(p.name()),
                reason: "the parameter holds no master values here: materialize it (or save its shard with ShardedTensor)".into(),
            })?;
            Ok(ShardedTensor::full(keys::model(p.name()), master.clone()))
        })
        .collect()
}

/// Whole-tensor requests for each parameter's `model.<fqn>`.
pub fn model_requests<'a>(params: impl IntoIterator<Item = &'a Param>) -> Vec<TensorRequest> {
    params
        .into_iter()
        .map(|p| TensorRequest::full(keys::model(p.name()), p.shape().dims().to_vec()))
        .collect()
}

/// Set each parameter's master from `state` (cast to f32, moved to `device`); returns how
/// many parameters were set. Parameters absent from `state` keep their values.
pub fn set_masters<'a>(
    params: impl IntoIterator<Item = &'a mut Param>,
    state: &LoadedState,
    device: &candle_core::Device,
) -> Result<usize> {
    let mut n = 0;
    for p in params {
        if let Some(t) = state.tensors.get(&keys::model(p.name())) {
            p.set_master(t.to_device(device)?)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use std::collections::{BTreeMap, HashMap};
    use titan_core::Init;

    #[test]
    fn masters_out_and_back() -> Result<()> {
        let w = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?;
        let mut p = Param::from_tensor("layers.0.attention.wq.weight", w.clone(), Init::Zeros)?;
        let out = model_tensors([&p])?;
        assert_eq!(out[0].name, "model.layers.0.attention.wq.weight");
        assert_eq!(model_requests([&p])[0].global_shape, vec![2, 3]);

        let loaded = (w.to_dtype(DType::BF16)? * 2.0)?;
        let state = LoadedState {
            step: 1,
            source: "x".into(),
            model_only: true,
            tensors: HashMap::from([(out[0].name.clone(), loaded)]),
            blobs: BTreeMap::new(),
            skipped: vec![],
        };
        assert_eq!(set_masters([&mut p], &state, &Device::Cpu)?, 1);
        let master = p.master().ok_or_else(|| Error::Request {
            name: "wq".into(),
            reason: "no master".into(),
        })?;
        assert_eq!(master.dtype(), DType::F32);
        assert_eq!(
            master.to_vec2::<f32>()?,
            vec![vec![0., 2., 4.], vec![6., 8., 10.]]
        );

        let bare = Param::new(titan_core::ParamSpec::new("norm.weight", 4, Init::Ones));
        assert!(model_tensors([&bare]).is_err());
        Ok(())
    }
}
