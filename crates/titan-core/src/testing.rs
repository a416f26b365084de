//! Helpers for numerical tests of modules: deterministic random tensors and error measures.
//! Public so that model crates test their modules the same way.

use candle_core::{DType, Device, Shape, Tensor};

use crate::rng::CounterRng;
use crate::Result;

/// A deterministic standard-normal tensor times `std`, in `dtype`.
pub fn randn(seed: u64, name: &str, shape: impl Into<Shape>, std: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let rng = CounterRng::for_param(seed, name);
    let v: Vec<f64> = (0..shape.elem_count() as u64).map(|i| std * rng.normal(i, 0)).collect();
    Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
}

/// Deterministic integers in `0..high` as u32.
pub fn randint(seed: u64, name: &str, n: usize, high: u32, device: &Device) -> Result<Tensor> {
    let rng = CounterRng::for_param(seed, name);
    let v: Vec<u32> = (0..n as u64).map(|i| ((rng.uniform(i, 0) * high as f64) as u32).min(high - 1)).collect();
    Ok(Tensor::from_vec(v, n, device)?)
}

/// `||a - b||_2 / ||b||_2`, computed in f64 on the host.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if a.len() != b.len() {
        crate::bail!("rel_err: {} elements vs {}", a.len(), b.len());
    }
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    Ok(if den == 0.0 { num.sqrt() } else { (num / den).sqrt() })
}

/// Whether two tensors hold bitwise identical values (same dtype and shape).
pub fn bitwise_eq(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return Ok(false);
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()))
}
