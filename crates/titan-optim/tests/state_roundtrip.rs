//! Saving and loading optimizer state: identical continuation, clear errors on mismatch.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use titan_core::{Init, Param};
use titan_optim::{AdamWConfig, Error, Optimizer, OptimizerState, Result};

fn param(name: &str, values: &[f32]) -> Result<Param> {
    Ok(Param::from_tensor(
        name,
        Tensor::new(values, &Device::Cpu)?,
        Init::Zeros,
    )?)
}

fn set_grad(p: &mut Param, g: &[f32]) -> Result<()> {
    p.set_grad(Some(Tensor::new(g, &Device::Cpu)?))?;
    Ok(())
}

fn values(p: &Param) -> Vec<f32> {
    p.master()
        .expect("master")
        .to_vec1::<f32>()
        .expect("1-d f32")
}

/// Round-trip the state through host memory and JSON metadata, as a checkpoint would.
fn through_checkpoint(state: OptimizerState) -> Result<OptimizerState> {
    let meta_json = serde_json::to_string(&state.meta).expect("meta serializes");
    let meta = serde_json::from_str(&meta_json).expect("meta deserializes");
    let mut tensors = BTreeMap::new();
    for (k, t) in state.tensors {
        let host = t.to_vec1::<f32>()?;
        tensors.insert(k, Tensor::new(host.as_slice(), &Device::Cpu)?);
    }
    Ok(OptimizerState { tensors, meta })
}

#[test]
fn resumed_optimizer_continues_identically() -> Result<()> {
    let grads = [
        [0.5f32, -1.0, 0.25],
        [0.1, 0.2, -0.3],
        [-2.0, 0.0, 1.0],
        [0.3, 0.3, 0.3],
    ];
    let lrs = [1e-2, 5e-3, 2e-3, 1e-3];
    let mut a = param("a", &[1.0, 2.0, 3.0])?;
    let mut b = param("b", &[-1.0])?;
    let mut opt = Optimizer::new(AdamWConfig::default())?;
    for step in 0..2 {
        set_grad(&mut a, &grads[step])?;
        // `b` gets a gradient only at the first step: its step count must survive as 1.
        b.set_grad(if step == 0 {
            Some(Tensor::new(&[1f32], &Device::Cpu)?)
        } else {
            None
        })?;
        opt.step(&mut [&mut a, &mut b], lrs[step])?;
    }
    let saved = through_checkpoint(opt.state_dict())?;
    assert_eq!(saved.meta.steps.get("a"), Some(&2));
    assert_eq!(saved.meta.steps.get("b"), Some(&1));
    let (mut a2, mut b2) = (a.clone(), b.clone());
    let mut resumed = Optimizer::new(AdamWConfig::default())?;
    resumed.load_state_dict(saved)?;
    resumed.validate_params(&[&a2, &b2])?;

    for step in 2..4 {
        set_grad(&mut a, &grads[step])?;
        set_grad(&mut a2, &grads[step])?;
        set_grad(&mut b, &[0.5])?;
        set_grad(&mut b2, &[0.5])?;
        opt.step(&mut [&mut a, &mut b], lrs[step])?;
        resumed.step(&mut [&mut a2, &mut b2], lrs[step])?;
        assert_eq!(values(&a), values(&a2), "step {}", step + 1);
        assert_eq!(values(&b), values(&b2), "step {}", step + 1);
    }
    assert_eq!(resumed.step_count("b"), Some(3));
    Ok(())
}

fn one_step_state() -> Result<(Param, OptimizerState)> {
    let mut w = param("layers.0.w", &[1.0, 2.0])?;
    set_grad(&mut w, &[0.1, 0.2])?;
    let mut opt = Optimizer::new(AdamWConfig::default())?;
    opt.step(&mut [&mut w], 1e-3)?;
    Ok((w, opt.state_dict()))
}

#[test]
fn missing_moment_is_named() -> Result<()> {
    let (_, mut state) = one_step_state()?;
    state.tensors.remove("layers.0.w.exp_avg_sq");
    let err = Optimizer::new(AdamWConfig::default())?
        .load_state_dict(state)
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingStateKey { param, key } if param == "layers.0.w" && key == "layers.0.w.exp_avg_sq"),
        "{err}"
    );
    assert!(err.to_string().contains("layers.0.w"));
    Ok(())
}

#[test]
fn stray_tensor_is_rejected() -> Result<()> {
    let (_, mut state) = one_step_state()?;
    state.tensors.insert(
        "ghost.exp_avg".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu)?,
    );
    let err = Optimizer::new(AdamWConfig::default())?
        .load_state_dict(state)
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedStateKey { key } if key == "ghost.exp_avg"),
        "{err}"
    );
    Ok(())
}

#[test]
fn moments_of_different_shapes_are_rejected() -> Result<()> {
    let (_, mut state) = one_step_state()?;
    state.tensors.insert(
        "layers.0.w.exp_avg_sq".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu)?,
    );
    let err = Optimizer::new(AdamWConfig::default())?
        .load_state_dict(state)
        .unwrap_err();
    assert!(
        matches!(&err, Error::StateShape { param, .. } if param == "layers.0.w"),
        "{err}"
    );
    Ok(())
}

#[test]
fn state_for_another_shape_fails_validation_and_step_without_changing_params() -> Result<()> {
    let (_, state) = one_step_state()?;
    let mut opt = Optimizer::new(AdamWConfig::default())?;
    opt.load_state_dict(state)?;
    // Same name, different shape (another model size or sharding).
    let mut w = param("layers.0.w", &[1.0, 2.0, 3.0])?;
    let mut other = param("a_first", &[5.0])?;
    set_grad(&mut w, &[0.1, 0.2, 0.3])?;
    set_grad(&mut other, &[1.0])?;
    let err = opt.validate_params(&[&w]).unwrap_err();
    assert!(
        matches!(&err, Error::StateShape { param, .. } if param == "layers.0.w"),
        "{err}"
    );
    assert!(err.to_string().contains("layers.0.w"), "{err}");
    let err = opt.step(&mut [&mut other, &mut w], 1e-3).unwrap_err();
    assert!(
        matches!(&err, Error::StateShape { param, .. } if param == "layers.0.w"),
        "{err}"
    );
    // Inputs are checked before anything moves.
    assert_eq!(values(&other), vec![5.0]);
    assert_eq!(opt.step_count("a_first"), None);
    Ok(())
}

#[test]
fn state_for_unknown_param_fails_validation() -> Result<()> {
    let (_, state) = one_step_state()?;
    let mut opt = Optimizer::new(AdamWConfig::default())?;
    opt.load_state_dict(state)?;
    let other = param("layers.1.w", &[1.0, 2.0])?;
    let err = opt.validate_params(&[&other]).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownStateParam { param } if param == "layers.0.w"),
        "{err}"
    );
    Ok(())
}

#[test]
fn bad_step_inputs_are_errors() -> Result<()> {
    let mut opt = Optimizer::new(AdamWConfig::default())?;
    let mut a = param("w", &[1.0])?;
    let mut b = param("w", &[2.0])?;
    set_grad(&mut a, &[1.0])?;
    let err = opt.step(&mut [&mut a, &mut b], 1e-3).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateParam { param } if param == "w"),
        "{err}"
    );
    for lr in [f64::NAN, -1e-3, f64::INFINITY] {
        assert!(matches!(
            opt.step(&mut [&mut a], lr),
            Err(Error::InvalidLr { .. })
        ));
    }
    let mut shard = param("released", &[1.0])?;
    set_grad(&mut shard, &[1.0])?;
    shard.take_master();
    let err = opt.step(&mut [&mut shard], 1e-3).unwrap_err();
    assert!(
        matches!(&err, Error::MissingMaster { param } if param == "released"),
        "{err}"
    );
    assert!(Optimizer::new(AdamWConfig {
        eps: -1.0,
        ..Default::default()
    })
    .is_err());
    Ok(())
}

#[test]
fn step_and_refresh_updates_compute_copies() -> Result<()> {
    let mut w = param("w", &[1.0, -1.0])?;
    let mut frozen = param("frozen", &[3.0])?;
    w.refresh_compute(DType::BF16)?;
    frozen.refresh_compute(DType::BF16)?;
    set_grad(&mut w, &[1.0, 1.0])?;
    let mut opt = Optimizer::new(AdamWConfig::default())?;
    opt.step_and_refresh(&mut [&mut w, &mut frozen], 0.25, DType::BF16)?;
    let compute = w.compute()?;
    assert_eq!(compute.dtype(), DType::BF16);
    let want = w
        .master()
        .expect("master")
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    assert_eq!(compute.to_dtype(DType::F32)?.to_vec1::<f32>()?, want);
    assert_ne!(want, vec![1.0, -1.0], "the step moved the master");
    Ok(())
}
