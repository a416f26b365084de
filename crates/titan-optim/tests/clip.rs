//! Global grad-norm clipping: norm, coefficient, the split (local + total) form.

use candle_core::{Device, Tensor};
use titan_core::{Init, Param};
use titan_optim::{clip_grad_norm, clip_with_total_norm, local_sq_norm, Error, Result};

fn with_grad(name: &str, grad: Option<&[f32]>) -> Result<Param> {
    let n = grad.map_or(1, |g| g.len());
    let mut p = Param::from_tensor(
        name,
        Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?,
        Init::Zeros,
    )?;
    if let Some(g) = grad {
        p.set_grad(Some(Tensor::new(g, &Device::Cpu)?))?;
    }
    Ok(p)
}

fn grad(p: &Param) -> Vec<f32> {
    p.grad().expect("grad").to_vec1::<f32>().expect("1-d f32")
}

#[test]
fn norm_is_global_and_clipping_scales_all_grads() -> Result<()> {
    // |(3, 4)|^2 + |(12)|^2 = 25 + 144 = 169 -> norm 13.
    let mut a = with_grad("a", Some(&[3.0, 4.0]))?;
    let mut b = with_grad("b", Some(&[12.0]))?;
    let mut none = with_grad("none", None)?;
    assert_eq!(local_sq_norm(&[&a, &b, &none])?, 169.0);
    let norm = clip_grad_norm(&mut [&mut a, &mut b, &mut none], 1.0)?;
    assert_eq!(norm, 13.0, "the pre-clip norm is returned");
    let coef = 1.0f32 / (13.0f32 + 1e-6);
    assert_eq!(grad(&a), vec![3.0 * coef, 4.0 * coef]);
    assert_eq!(grad(&b), vec![12.0 * coef]);
    assert!(none.grad().is_none());
    // The clipped grads have norm max_norm (up to the 1e-6 guard and f32 rounding).
    let after = local_sq_norm(&[&a, &b])?.sqrt();
    assert!((after - 1.0).abs() < 1e-6, "{after}");
    Ok(())
}

#[test]
fn grads_below_max_norm_are_untouched() -> Result<()> {
    let mut a = with_grad("a", Some(&[0.3, 0.4]))?;
    let norm = clip_grad_norm(&mut [&mut a], 1.0)?;
    assert!((norm - 0.5).abs() < 1e-7);
    assert_eq!(grad(&a), vec![0.3, 0.4]);
    // Exactly at max_norm the coefficient is just below 1 (1e-6 guard): PyTorch scales.
    let mut b = with_grad("b", Some(&[3.0, 4.0]))?;
    clip_grad_norm(&mut [&mut b], 5.0)?;
    let coef = 5.0f32 / (5.0f32 + 1e-6);
    assert!(coef < 1.0);
    assert_eq!(grad(&b), vec![3.0 * coef, 4.0 * coef]);
    Ok(())
}

#[test]
fn split_form_matches_single_process_form() -> Result<()> {
    // Two "ranks" each hold part of the gradients; the reduced norm clips both alike.
    let mut r0 = [
        with_grad("l0", Some(&[1.0, -2.0, 0.5]))?,
        with_grad("l1", Some(&[0.25]))?,
    ];
    let mut r1 = [with_grad("l2", Some(&[4.0, 4.0]))?];
    let mut all = [r0[0].clone(), r0[1].clone(), r1[0].clone()];
    let total = (local_sq_norm(&r0)? + local_sq_norm(&r1)?).sqrt();
    clip_with_total_norm(&mut r0, 2.0, total)?;
    clip_with_total_norm(&mut r1, 2.0, total)?;
    let single = clip_grad_norm(&mut all, 2.0)?;
    assert_eq!(total, single);
    assert_eq!(grad(&r0[0]), grad(&all[0]));
    assert_eq!(grad(&r0[1]), grad(&all[1]));
    assert_eq!(grad(&r1[0]), grad(&all[2]));
    Ok(())
}

#[test]
fn non_finite_norm_is_returned_and_grads_left_alone() -> Result<()> {
    let mut a = with_grad("a", Some(&[f32::NAN, 1.0]))?;
    let mut b = with_grad("b", Some(&[2.0]))?;
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0)?;
    assert!(norm.is_nan());
    assert_eq!(grad(&b), vec![2.0]);
    let mut c = with_grad("c", Some(&[f32::INFINITY]))?;
    let norm = clip_grad_norm(&mut [&mut c], 1.0)?;
    assert!(norm.is_infinite());
    assert_eq!(grad(&c), vec![f32::INFINITY]);
    Ok(())
}

#[test]
fn invalid_max_norm_is_an_error() -> Result<()> {
    let mut a = with_grad("a", Some(&[1.0]))?;
    for max_norm in [0.0, -1.0, f64::NAN] {
        let err = clip_grad_norm(&mut [&mut a], max_norm).unwrap_err();
        assert!(matches!(err, Error::InvalidMaxNorm { .. }), "{err}");
    }
    // +inf disables clipping.
    clip_grad_norm(&mut [&mut a], f64::INFINITY)?;
    assert_eq!(grad(&a), vec![1.0]);
    Ok(())
}
