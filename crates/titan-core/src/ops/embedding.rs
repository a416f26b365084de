//! Token embedding lookup with an f32-accumulated backward.

use candle_core::{DType, Tensor};

use crate::{Init, Module, Param, ParamSpec, Result};

/// An embedding table `(vocab_size, dim)`.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Param,
}

impl Embedding {
    pub fn new(name: impl Into<String>, vocab_size: usize, dim: usize, init: Init) -> Self {
        Self {
            weight: Param::new(ParamSpec::new(name, (vocab_size, dim), init)),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.weight.shape().dims()[0]
    }
    pub fn dim(&self) -> usize {
        self.weight.shape().dims()[1]
    }

    /// `ids (batch, seq)` (u32) to `(batch, seq, dim)`. Ids must be below `vocab_size`
    /// (checked by the caller on the host, where it costs nothing).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let w = self.weight.compute()?;
        if let Some(out) = super::fused::embedding::embedding_forward(ids, w)? {
            return Ok(out);
        }
        let mut shape = ids.dims().to_vec();
        shape.push(self.dim());
        Ok(w.index_select(&ids.flatten_all()?, 0)?.reshape(shape)?)
    }

    /// Scatter-adds `d_out` rows into the f32 weight gradient.
    pub fn backward(&mut self, ids: &Tensor, d_out: &Tensor) -> Result<()> {
        let dim = self.dim();
        if let Some(dw) =
            super::fused::embedding::embedding_backward(ids, d_out, self.vocab_size(), dim)?
        {
            return self.weight.accumulate_grad(&dw);
        }
        let flat_ids = ids.flatten_all()?;
        let d = d_out
            .reshape((flat_ids.dim(0)?, dim))?
            .to_dtype(DType::F32)?;
        let zeros = Tensor::zeros((self.vocab_size(), dim), DType::F32, d.device())?;
        let dw = zeros.index_add(&flat_ids, &d, 0)?;
        self.weight.accumulate_grad(&dw)
    }
}

impl Module for Embedding {
    fn params(&self) -> Vec<&Param> {
        vec![&self.weight]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight]
    }
}
