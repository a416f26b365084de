//! AdamW and Adam against an independent f64 scalar implementation of PyTorch's update.
//!
//! The reference works element by element in f64 from the textbook form of
//! `torch.optim.AdamW` / `torch.optim.Adam(weight_decay=...)`:
//! decay, `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`, bias corrections, then
//! `p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`. The optimizer computes in f32, so values
//! agree to f32 rounding: |param| <= ~2 here and each of the few steps adds a few ulps
//! (2^-23 * 2 ~ 2.4e-7 each), hence the 2e-6 absolute tolerance. A wrong formula (missing bias
//! correction, decay at the wrong place, betas swapped) moves values by ~1e-3 or more with the
//! learning rates used here.

use candle_core::{DType, Device, Tensor};
use titan_core::{Init, Param};
use titan_optim::{AdamWConfig, Optimizer, Result};

const TOL: f64 = 2e-6;

/// Per-element state of the f64 reference.
#[derive(Clone)]
struct RefState {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    step: u64,
}

impl RefState {
    fn new(p: &[f32]) -> Self {
        let n = p.len();
        Self {
            p: p.iter().map(|&x| x as f64).collect(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }

    fn step(&mut self, cfg: &AdamWConfig, grad: &[f32], lr: f64) {
        let (b1, b2) = cfg.betas;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        assert_eq!(grad.len(), self.p.len());
        for (i, &g) in grad.iter().enumerate() {
            let mut g = g as f64;
            if cfg.decoupled {
                self.p[i] *= 1.0 - lr * cfg.weight_decay;
            } else {
                g += cfg.weight_decay * self.p[i];
            }
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let denom = self.v[i].sqrt() / bc2.sqrt() + cfg.eps;
            self.p[i] -= lr / bc1 * self.m[i] / denom;
        }
    }
}

fn param(name: &str, values: &[f32]) -> Result<Param> {
    let t = Tensor::new(values, &Device::Cpu)?;
    Ok(Param::from_tensor(name, t, Init::Zeros)?)
}

fn values(p: &Param) -> Vec<f32> {
    p.master()
        .expect("test params hold a master")
        .to_vec1::<f32>()
        .expect("1-d f32 master")
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= TOL,
            "{what}[{i}]: got {g}, want {w} (tol {TOL})"
        );
    }
}

/// Four steps with a different lr and gradient each step, on two parameters; one parameter
/// has no gradient at step 3 and must be left alone (value, moments and step count).
fn run_against_reference(cfg: AdamWConfig) -> Result<()> {
    let a0 = [0.5f32, -1.25, 2.0, 0.0];
    let b0 = [1.5f32, -0.75];
    let mut a = param("layers.0.w", &a0)?;
    let mut b = param("norm.weight", &b0)?;
    let mut ra = RefState::new(&a0);
    let mut rb = RefState::new(&b0);
    let lrs = [0.1, 0.05, 0.02, 0.07];
    let grads_a: [[f32; 4]; 4] = [
        [0.3, -0.2, 1.5, 0.0],
        [-0.1, 0.4, 0.9, 1e-3],
        [2.0, -3.0, 0.01, -0.5],
        [0.0, 0.25, -1.0, 0.8],
    ];
    let grads_b: [[f32; 2]; 4] = [[1.0, -1.0], [0.5, 0.5], [9.0, 9.0], [-0.2, 0.1]];

    let mut opt = Optimizer::new(cfg)?;
    for step in 0..4 {
        let lr = lrs[step];
        a.zero_grad();
        b.zero_grad();
        a.accumulate_grad(&Tensor::new(&grads_a[step], &Device::Cpu)?)?;
        ra.step(&cfg, &grads_a[step], lr);
        let b_has_grad = step != 2;
        if b_has_grad {
            b.accumulate_grad(&Tensor::new(&grads_b[step], &Device::Cpu)?)?;
            rb.step(&cfg, &grads_b[step], lr);
        }
        let b_before = values(&b);
        opt.step(&mut [&mut a, &mut b], lr)?;
        assert_close(
            &values(&a),
            &ra.p,
            &format!("{} step {} a", cfg.name(), step + 1),
        );
        assert_close(
            &values(&b),
            &rb.p,
            &format!("{} step {} b", cfg.name(), step + 1),
        );
        if !b_has_grad {
            assert_eq!(
                values(&b),
                b_before,
                "a parameter without grad must not change"
            );
        }
        assert_eq!(opt.step_count("layers.0.w"), Some(ra.step));
        assert_eq!(opt.step_count("norm.weight"), Some(rb.step));
    }
    // Moments, too.
    let state = opt.state_dict();
    let m = state.tensors["layers.0.w.exp_avg"].to_vec1::<f32>()?;
    let v = state.tensors["layers.0.w.exp_avg_sq"].to_vec1::<f32>()?;
    assert_close(&m, &ra.m, "exp_avg");
    assert_close(&v, &ra.v, "exp_avg_sq");
    Ok(())
}

#[test]
fn adamw_matches_reference() -> Result<()> {
    run_against_reference(AdamWConfig::adamw())
}

#[test]
fn adam_with_l2_decay_matches_reference() -> Result<()> {
    run_against_reference(AdamWConfig::adam())
}

#[test]
fn non_default_hyperparameters_match_reference() -> Result<()> {
    // beta1 < 0.5 exercises the other form of torch.lerp (weight 1 - beta1 >= 0.5).
    let cfg = AdamWConfig {
        lr: 1e-2,
        betas: (0.3, 0.8),
        eps: 1e-3,
        weight_decay: 0.5,
        decoupled: true,
    };
    run_against_reference(cfg)?;
    run_against_reference(AdamWConfig {
        decoupled: false,
        ..cfg
    })?;
    run_against_reference(AdamWConfig {
        weight_decay: 0.0,
        ..cfg
    })
}

#[test]
fn first_step_moves_by_lr_times_sign() -> Result<()> {
    // Without decay, step 1 gives m_hat = g and v_hat = g^2, so p moves by lr*g/(|g| + eps):
    // a closed form independent of the reference above.
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::adamw()
    };
    let mut p = param("w", &[1.0, 1.0, 1.0])?;
    p.accumulate_grad(&Tensor::new(&[4f32, -0.5, 0.0], &Device::Cpu)?)?;
    Optimizer::new(cfg)?.step(&mut [&mut p], 0.01)?;
    let got = values(&p);
    let want = [
        1.0 - 0.01 * 4.0 / (4.0 + 1e-8),
        1.0 + 0.01 * 0.5 / (0.5 + 1e-8),
        1.0,
    ];
    assert_close(&got, &want, "first step");
    Ok(())
}

#[test]
fn adamw_decays_even_with_zero_gradient() -> Result<()> {
    let mut p = param("w", &[2.0, -4.0])?;
    p.accumulate_grad(&Tensor::zeros(2, DType::F32, &Device::Cpu)?)?;
    Optimizer::new(AdamWConfig::adamw())?.step(&mut [&mut p], 0.5)?;
    // m = v = 0, so only p *= 1 - lr*wd = 0.95.
    assert_close(&values(&p), &[1.9, -3.8], "decay only");
    Ok(())
}

#[test]
fn params_without_grad_get_no_state() -> Result<()> {
    let mut with = param("with", &[1.0])?;
    let mut without = param("without", &[1.0])?;
    with.accumulate_grad(&Tensor::new(&[1f32], &Device::Cpu)?)?;
    let mut opt = Optimizer::new(AdamWConfig::default())?;
    opt.step(&mut [&mut with, &mut without], 1e-3)?;
    assert_eq!(opt.step_count("with"), Some(1));
    assert_eq!(opt.step_count("without"), None);
    assert_eq!(opt.num_states(), 1);
    assert_eq!(values(&without), vec![1.0]);
    assert!(!opt.state_dict().tensors.contains_key("without.exp_avg"));
    Ok(())
}
