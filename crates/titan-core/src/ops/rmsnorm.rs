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

    /// Add + norm: returns `h = x + r` (the residual stream, in `x`'s dtype), `y = norm(h)`
    /// and `rstd` as [`RmsNorm::forward`] gives them for `h`. The fused kernel reads `x` and
    /// `r` once and normalizes the rounded `h`, so its results match add-then-norm (`h` bit
    /// for bit).
    pub fn forward_residual(&self, x: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        if let Some(out) =
            super::fused::norm::rmsnorm_forward_residual(x, r, self.weight.compute()?, self.eps)?
        {
            return Ok(out);
        }
        let h = (x + r)?;
        let (y, rstd) = self.forward(&h)?;
        Ok((h, y, rstd))
    }

    /// [`RmsNorm::backward`] with the residual's gradient folded in: accumulates `dw` and
    /// returns `d_res + dx` (in `x`'s dtype), where `x` and `rstd` are the forward's (`h` of
    /// [`RmsNorm::forward_residual`]). The fused kernel adds in f32 and rounds once; the
    /// composite rounds `dx` and then the sum (two roundings).
    pub fn backward_residual(
        &mut self,
        x: &Tensor,
        rstd: &Tensor,
        d_y: &Tensor,
        d_res: &Tensor,
    ) -> Result<Tensor> {
        if let Some((d_x, dw)) = super::fused::norm::rmsnorm_backward_residual(
            x,
            self.weight.compute()?,
            rstd,
            d_y,
            d_res,
        )? {
            self.weight.accumulate_grad(&dw)?;
            return Ok(d_x);
        }
        Ok((d_res + self.backward(x, rstd, d_y)?)?)
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::RmsNorm;
    use crate::testing::{randn, rel_err};
    use crate::Result;

    fn norm(dim: usize) -> Result<RmsNorm> {
        let mut n = RmsNorm::new("n", dim, 1e-5);
        n.weight.materialize(&Device::Cpu, 0, DType::F32)?;
        let w = (randn(1, "w", dim, 0.1, DType::F32, &Device::Cpu)? + 1.0)?;
        n.weight.set_master(w)?;
        n.weight.refresh_compute(DType::F32)?;
        Ok(n)
    }

    #[test]
    fn residual_forms_match_add_then_norm() -> Result<()> {
        let (dev, dim) = (Device::Cpu, 24);
        let t = |name: &str| randn(2, name, (3, 5, dim), 1.0, DType::F32, &dev);
        let (x, r, dy, d_res) = (t("x")?, t("r")?, t("dy")?, t("d_res")?);
        let mut a = norm(dim)?;
        let mut b = a.clone();
        let (h, y, rstd) = a.forward_residual(&x, &r)?;
        let h_ref = (&x + &r)?;
        let (y_ref, rstd_ref) = b.forward(&h_ref)?;
        assert_eq!(rel_err(&h, &h_ref)?, 0.0);
        assert!(rel_err(&y, &y_ref)? < 1e-6);
        assert!(rel_err(&rstd, &rstd_ref)? < 1e-6);
        let d_h = a.backward_residual(&h, &rstd, &dy, &d_res)?;
        let d_h_ref = (&d_res + b.backward(&h_ref, &rstd_ref, &dy)?)?;
        assert!(rel_err(&d_h, &d_h_ref)? < 1e-6);
        let (dw, dw_ref) = (a.weight.grad().unwrap(), b.weight.grad().unwrap());
        assert!(rel_err(dw, dw_ref)? < 1e-6);
        assert_eq!(d_h.dims(), x.dims());
        Ok(())
    }
}
