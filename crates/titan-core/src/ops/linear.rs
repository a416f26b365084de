//! Bias-free linear layer `y = x W^T` (torchtitan's `nn.Linear(bias=False)`).

use candle_core::{DType, Tensor};

use crate::{Init, Module, Param, ParamSpec, Result};

/// A linear layer with weight `(out_features, in_features)`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Param,
}

/// Flatten `(..., d)` to `(rows, d)` and return the leading dims.
pub(crate) fn flatten_rows(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims();
    let (lead, last) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    Ok((x.reshape((rows, last[0]))?, lead.to_vec()))
}

pub(crate) fn unflatten_rows(x: &Tensor, lead: &[usize]) -> Result<Tensor> {
    let mut shape = lead.to_vec();
    shape.push(x.dim(1)?);
    Ok(x.reshape(shape)?)
}

impl Linear {
    /// A shape-only linear layer named `name` (the weight's FQN).
    pub fn new(
        name: impl Into<String>,
        in_features: usize,
        out_features: usize,
        init: Init,
    ) -> Self {
        Self {
            weight: Param::new(ParamSpec::new(name, (out_features, in_features), init)),
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape().dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.shape().dims()[0]
    }

    /// `(..., in) -> (..., out)`. The caller keeps `x` for [`Linear::backward`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.compute()?;
        let (x2, lead) = flatten_rows(x)?;
        let y = x2.matmul(&w.t()?)?;
        unflatten_rows(&y, &lead)
    }

    /// Accumulates `dW = d_y^T x` and returns `d_x = d_y W`.
    pub fn backward(&mut self, x: &Tensor, d_y: &Tensor) -> Result<Tensor> {
        let d_x = self.backward_input(d_y)?;
        self.backward_weight(x, d_y)?;
        Ok(d_x)
    }

    /// [`Linear::backward`] for a layer whose input also fed other layers: accumulates `dW`
    /// and returns `acc + d_y W`, where `acc` is the input gradient from those layers (on
    /// the fused path the product is added into `acc` in place by the GEMM itself, with one
    /// rounding, instead of a separate add pass; `acc` must be a gradient this caller owns).
    pub fn backward_acc(&mut self, x: &Tensor, d_y: &Tensor, acc: Tensor) -> Result<Tensor> {
        self.backward_weight(x, d_y)?;
        self.backward_input_acc(d_y, acc)
    }

    /// Only `acc + d_y W` (see [`Linear::backward_acc`]).
    pub fn backward_input_acc(&self, d_y: &Tensor, acc: Tensor) -> Result<Tensor> {
        let w = self.weight.compute()?;
        let (dy2, _) = flatten_rows(d_y)?;
        let (acc2, lead) = flatten_rows(&acc)?;
        if let Some(sum) = super::fused::gemm::accumulate_input_grad(&dy2, w, &acc2)? {
            return unflatten_rows(&sum, &lead);
        }
        Ok((acc + self.backward_input(d_y)?)?)
    }

    /// Only `d_x = d_y W`.
    pub fn backward_input(&self, d_y: &Tensor) -> Result<Tensor> {
        let w = self.weight.compute()?;
        let (dy2, lead) = flatten_rows(d_y)?;
        let dy2 = dy2.to_dtype(w.dtype())?;
        unflatten_rows(&dy2.matmul(w)?, &lead)
    }

    /// Only the weight gradient `dW += d_y^T x`.
    pub fn backward_weight(&mut self, x: &Tensor, d_y: &Tensor) -> Result<()> {
        let (x2, _) = flatten_rows(x)?;
        let (dy2, _) = flatten_rows(d_y)?;
        let dy2 = dy2.to_dtype(x2.dtype())?;
        // bf16 on CUDA: one cuBLAS GEMM accumulating in f32 into the gradient itself.
        if super::fused::gemm::accumulate_weight_grad(&x2, &dy2, &mut self.weight)? {
            return Ok(());
        }
        let dw = dy2.t()?.matmul(&x2)?;
        self.weight.accumulate_grad(&dw.to_dtype(DType::F32)?)
    }
}

impl Module for Linear {
    fn params(&self) -> Vec<&Param> {
        vec![&self.weight]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight]
    }
}
