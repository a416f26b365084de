//! The update follows PyTorch's single-tensor Adam operation by operation, in f32.
//!
//! This emulates `_single_tensor_adam` with scalar f32 arithmetic (Python floats cast to f32
//! at each tensor op, association of the CUDA kernels: `x / s` as `x * (1/s)`,
//! `addcmul` as `a + s*(b*c)`, `addcdiv` as `a + s*(b/c)`) and requires bit-equal results on
//! CPU, where candle's f32 ops round exactly once each. Any reordering (say `b1*m + (1-b1)*g`
//! instead of `lerp`) changes low bits and fails here while passing the f64 reference test.

use candle_core::{Device, Tensor};
use titan_core::{Init, Param};
use titan_optim::{AdamWConfig, Optimizer, Result};

fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// One element's (p, m, v) after a step, op by op as PyTorch with f32 tensors.
fn torch_f32_step(
    cfg: &AdamWConfig,
    p: f32,
    g: f32,
    m: f32,
    v: f32,
    step: u64,
    lr: f64,
) -> (f32, f32, f32) {
    let (b1, b2) = cfg.betas;
    let (mut p, mut g) = (p, g);
    if cfg.weight_decay != 0.0 {
        if cfg.decoupled {
            p *= (1.0 - lr * cfg.weight_decay) as f32;
        } else {
            g += (cfg.weight_decay as f32) * p;
        }
    }
    let m = lerp(m, g, (1.0 - b1) as f32);
    let v = v * b2 as f32 + ((1.0 - b2) as f32) * (g * g);
    let t = step as f64;
    let step_size = lr / (1.0 - b1.powf(t));
    let bc2_sqrt = (1.0 - b2.powf(t)).sqrt();
    let denom = v.sqrt() * (1.0f32 / bc2_sqrt as f32) + cfg.eps as f32;
    let p = p + (-step_size as f32) * (m / denom);
    (p, m, v)
}

fn check(cfg: AdamWConfig) -> Result<()> {
    let p0 = [0.123_456_7f32, -1.987_654_3, 3.0e-3, 7.25, -0.5];
    let grads = [
        [0.3f32, -0.2, 1.5, 1e-4, -2.5],
        [-0.1, 0.4, 0.9, 1e-3, 0.7],
        [2.0, -3.0, 0.01, -0.5, 0.33],
    ];
    let lrs = [3e-3, 7e-4, 1.1e-2];
    let mut param = Param::from_tensor("w", Tensor::new(&p0, &Device::Cpu)?, Init::Zeros)?;
    let mut opt = Optimizer::new(cfg)?;
    let (mut p, mut m, mut v) = (p0.to_vec(), vec![0f32; 5], vec![0f32; 5]);
    for (step, (g, &lr)) in grads.iter().zip(&lrs).enumerate() {
        param.zero_grad();
        param.accumulate_grad(&Tensor::new(g, &Device::Cpu)?)?;
        opt.step(&mut [&mut param], lr)?;
        for i in 0..5 {
            (p[i], m[i], v[i]) = torch_f32_step(&cfg, p[i], g[i], m[i], v[i], step as u64 + 1, lr);
        }
        let got = param.master().expect("master").to_vec1::<f32>()?;
        assert_eq!(got, p, "{} step {}: params", cfg.name(), step + 1);
        let state = opt.state_dict();
        assert_eq!(state.tensors["w.exp_avg"].to_vec1::<f32>()?, m, "exp_avg");
        assert_eq!(
            state.tensors["w.exp_avg_sq"].to_vec1::<f32>()?,
            v,
            "exp_avg_sq"
        );
    }
    Ok(())
}

#[test]
fn adamw_is_bit_exact_with_torch_op_order() -> Result<()> {
    check(AdamWConfig::adamw())
}

#[test]
fn adam_is_bit_exact_with_torch_op_order() -> Result<()> {
    check(AdamWConfig::adam())?;
    check(AdamWConfig {
        betas: (0.2, 0.5),
        ..AdamWConfig::adam()
    })
}
