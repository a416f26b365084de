//! Clipping folded into the optimizer: `step_with_scale` with the clip coefficient gives the
//! same bits as clipping the gradients and stepping, and leaves the gradients alone.

use candle_core::{DType, Device, Tensor};
use titan_core::testing::randn;
use titan_core::{Init, Param};
use titan_optim::{
    clip_coefficient, clip_grad_norm, clip_scale, AdamWConfig, Error, GradScale, Optimizer, Result,
};

fn params(seed: u64, step: u64) -> Result<Vec<Param>> {
    let dev = Device::Cpu;
    let mut out = Vec::new();
    for (name, n) in [("a", 1usize), ("b", 7), ("c", 1000)] {
        let mut p = Param::from_tensor(
            name,
            randn(seed, name, n, 0.5, DType::F32, &dev)?,
            Init::Zeros,
        )?;
        let g = randn(
            seed + step,
            &format!("{name}.grad"),
            n,
            3.0,
            DType::F32,
            &dev,
        )?;
        p.set_grad(Some(g))?;
        out.push(p);
    }
    Ok(out)
}

fn values(ps: &[Param]) -> Result<Vec<Vec<f32>>> {
    ps.iter()
        .map(|p| Ok(p.master().expect("master").to_vec1::<f32>()?))
        .collect()
}

#[test]
fn scaled_step_equals_clip_then_step() -> Result<()> {
    for cfg in [AdamWConfig::adamw(), AdamWConfig::adam()] {
        let mut clipped = params(1, 0)?;
        let mut scaled = params(1, 0)?;
        let mut opt_a = Optimizer::new(cfg)?;
        let mut opt_b = Optimizer::new(cfg)?;
        for step in 0..3 {
            if step > 0 {
                for (a, b) in clipped.iter_mut().zip(scaled.iter_mut()) {
                    let fresh = params(1, step)?;
                    let g = fresh
                        .iter()
                        .find(|p| p.name() == a.name())
                        .expect("same names");
                    a.set_grad(g.grad().cloned())?;
                    b.set_grad(g.grad().cloned())?;
                }
            }
            let norm = clip_grad_norm(&mut clipped, 1.0)?;
            opt_a.step(&mut clipped, 1e-2)?;

            let grads_before = scaled
                .iter()
                .map(|p| Ok(p.grad().expect("grad").to_vec1::<f32>()?))
                .collect::<Result<Vec<_>>>()?;
            let clip = clip_scale(&scaled, 1.0)?;
            opt_b.step_with_scale(&mut scaled, 1e-2, clip.scale())?;
            assert_eq!(clip.total_norm()?, norm);
            assert!(matches!(clip.scale(), GradScale::Host(c) if *c < 1.0));
            assert_eq!(values(&clipped)?, values(&scaled)?, "step {step}");
            let grads_after = scaled
                .iter()
                .map(|p| Ok(p.grad().expect("grad").to_vec1::<f32>()?))
                .collect::<Result<Vec<_>>>()?;
            assert_eq!(grads_before, grads_after, "gradients are not written");
        }
        // A device-style (tensor) scale gives the same update as the host one.
        let mut host = params(2, 0)?;
        let mut tensor = params(2, 0)?;
        let coef = clip_coefficient(1.0, 40.0)?;
        Optimizer::new(cfg)?.step_and_refresh_with_scale(
            &mut host,
            1e-2,
            DType::F32,
            &GradScale::Host(coef),
        )?;
        Optimizer::new(cfg)?.step_and_refresh_with_scale(
            &mut tensor,
            1e-2,
            DType::F32,
            &GradScale::Device(Tensor::new(&[coef], &Device::Cpu)?),
        )?;
        assert_eq!(values(&host)?, values(&tensor)?);
    }
    Ok(())
}

#[test]
fn clip_coefficient_rules() -> Result<()> {
    assert_eq!(clip_coefficient(1.0, 0.5)?, 1.0);
    assert_eq!(clip_coefficient(1.0, f64::NAN)?, 1.0);
    assert_eq!(clip_coefficient(1.0, f64::INFINITY)?, 1.0);
    assert_eq!(clip_coefficient(1.0, 13.0)?, 1.0f32 / (13.0f32 + 1e-6));
    assert!(matches!(
        clip_coefficient(0.0, 1.0),
        Err(Error::InvalidMaxNorm { .. })
    ));
    assert!(matches!(
        clip_scale(&Vec::<Param>::new(), -1.0),
        Err(Error::InvalidMaxNorm { .. })
    ));
    // Nothing to clip: norm 0, coefficient 1.
    let none = clip_scale(&Vec::<Param>::new(), 1.0)?;
    assert_eq!(none.total_norm()?, 0.0);
    assert!(matches!(none.scale(), GradScale::Host(c) if *c == 1.0));
    Ok(())
}
