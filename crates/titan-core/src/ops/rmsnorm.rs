//! RMSNorm with a learnable scale: `y = x / sqrt(mean(x^2) + eps) * w`, math in f32.

use candle_core::{DType, Tensor, D};

use crate::{Init, Module, Param, ParamSpec, Result};

/// RMSNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(name: impl Into<String>, dim: usize, eps: f64) -> Self {
        Self {
            weight: Param::new(ParamSpec::new(name, dim, Init::Ones)),
            eps,
        }
    }

    /// Returns `y` (in `x`'s dtype) and the reciprocal RMS per row `(..., 1)` in f32, which
    /// backward needs together with `x`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some(out) = super::fused::norm::rmsnorm_forward(x, self.weight.compute()?, self.eps)?
        {
            return Ok(out);
        }
        let w = self.weight.compute()?.to_dtype(DType::F32)?;
        let x32 = x.to_dtype(DType::F32)?;
        let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let rstd = (ms + self.eps)?.sqrt()?.recip()?;
        let y = x32
            .broadcast_mul(&rstd)?
            .broadcast_mul(&w)?
            .to_dtype(x.dtype())?;
        Ok((y, rstd))
    }

    /// Given the forward's `x` and `rstd`, accumulates `dw` and returns `dx` (in `x`'s dtype).
    pub fn backward(&mut self, x: &Tensor, rstd: &Tensor, d_y: &Tensor) -> Result<Tensor> {
        if let Some((dx, dw)) =
            super::fused::norm::rmsnorm_backward(x, self.weight.compute()?, rstd, d_y)?
        {
            self.weight.accumulate_grad(&dw)?;
            return Ok(dx);
        }
        let w = self.weight.compute()?.to_dtype(DType::F32)?;
        let x32 = x.to_dtype(DType::F32)?;
        let dy = d_y.to_dtype(DType::F32)?;
        let xhat = x32.broadcast_mul(rstd)?;
        // dw = sum over all rows of dy * xhat.
        let dim = xhat.dim(D::Minus1)?;
        let rows = xhat.elem_count() / dim;
        let dw = (&dy * &xhat)?.reshape((rows, dim))?.sum(0)?;
        self.weight.accumulate_grad(&dw)?;
        // dx = rstd * (g - xhat * mean(g * xhat)), with g = dy * w.
        let g = dy.broadcast_mul(&w)?;
        let m = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = g.sub(&xhat.broadcast_mul(&m)?)?.broadcast_mul(rstd)?;
        Ok(dx.to_dtype(x.dtype())?)
    }
}

impl Module for RmsNorm {
    fn params(&self) -> Vec<&Param> {
        vec![&self.weight]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight]
    }
}
