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

    /// Scatter-adds `d_out` rows into the f32 weight gradient (or hands `(ids, d_out)` to a
    /// consumer that takes row gradients, [`Param::set_takes_row_grads`]).
    pub fn backward(&mut self, ids: &Tensor, d_out: &Tensor) -> Result<()> {
        let dim = self.dim();
        let flat_ids = ids.flatten_all()?;
        let d = d_out.reshape((flat_ids.dim(0)?, dim))?;
        if self.weight.push_row_grad(&flat_ids, &d)? {
            return Ok(());
        }
        let vocab = self.vocab_size();
        if let Some(dw) =
            super::fused::embedding::embedding_backward_rows(&flat_ids, &d, 0, vocab, dim)?
        {
            return self.weight.accumulate_grad(&dw);
        }
        // Ids are below the vocabulary (checked by the caller): every row lands.
        let zeros = Tensor::zeros((vocab, dim), DType::F32, d.device())?;
        let dw = zeros.index_add(&flat_ids, &d.to_dtype(DType::F32)?, 0)?;
        self.weight.accumulate_grad(&dw)
    }
}

/// Rows `[lo, lo + rows)` of the f32 gradient of a table looked up at `ids` (u32 `(n,)`) with
/// output gradient `d` `(n, dim)`: `dw[ids[r] - lo] += d[r]` for the ids in the range, others
/// skipped. `lo = 0, rows = vocab` is the whole table's gradient; a row shard's comes from every
/// rank's ids and rows (FSDP).
pub fn gradient_rows(ids: &Tensor, d: &Tensor, lo: usize, rows: usize) -> Result<Tensor> {
    let (_, dim) = d.dims2()?;
    if let Some(dw) = super::fused::embedding::embedding_backward_rows(ids, d, lo, rows, dim)? {
        return Ok(dw);
    }
    let d = d.to_dtype(DType::F32)?;
    let zeros = Tensor::zeros((rows, dim), DType::F32, d.device())?;
    // Only the ids in range: pick their rows, add them at `id - lo` (in order, as index_add).
    let host = ids.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let (picked, at): (Vec<u32>, Vec<u32>) = host
        .iter()
        .enumerate()
        .filter(|(_, &id)| (id as usize) >= lo && (id as usize) < lo + rows)
        .map(|(r, &id)| (r as u32, (id as usize - lo) as u32))
        .unzip();
    if picked.is_empty() {
        return Ok(zeros);
    }
    let k = picked.len();
    let picked = Tensor::from_vec(picked, k, d.device())?;
    let at = Tensor::from_vec(at, k, d.device())?;
    Ok(zeros.index_add(&at, &d.index_select(&picked, 0)?, 0)?)
}

impl Module for Embedding {
    fn params(&self) -> Vec<&Param> {
        vec![&self.weight]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight]
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::Init;

    fn lookup() -> Result<(Tensor, Tensor)> {
        let ids = Tensor::new(&[3u32, 0, 5, 3, 9, 5, 1], &Device::Cpu)?;
        let d = Tensor::arange(0f32, 7.0 * 4.0, &Device::Cpu)?.reshape((7, 4))?;
        Ok((ids, d))
    }

    #[test]
    fn row_shards_are_slices_of_the_dense_gradient() -> Result<()> {
        let (ids, d) = lookup()?;
        let mut emb = Embedding::new("tok", 10, 4, Init::Zeros);
        emb.backward(&ids, &d)?;
        let dense = emb.weight.grad().unwrap().clone();
        let mut parts = Vec::new();
        for (lo, rows) in [(0, 4), (4, 4), (8, 2)] {
            parts.push(gradient_rows(&ids, &d, lo, rows)?);
        }
        let joined = Tensor::cat(&parts, 0)?;
        assert_eq!(joined.to_vec2::<f32>()?, dense.to_vec2::<f32>()?);
        // A range no id falls in is all zeros.
        let none = gradient_rows(&ids, &d, 6, 3)?;
        assert_eq!(none.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn a_consumer_that_takes_rows_gets_them_instead_of_a_dense_gradient() -> Result<()> {
        let (ids, d) = lookup()?;
        let mut emb = Embedding::new("tok", 10, 4, Init::Zeros);
        emb.weight.set_takes_row_grads(true);
        emb.backward(&ids.reshape((1, 7))?, &d.reshape((1, 7, 4))?)?;
        assert!(emb.weight.grad().is_none());
        let rows = emb.weight.take_row_grads();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.to_vec1::<u32>()?, ids.to_vec1::<u32>()?);
        assert_eq!(rows[0].1.to_vec2::<f32>()?, d.to_vec2::<f32>()?);
        // Wrong shapes are refused with the parameter's name.
        let err = emb
            .weight
            .push_row_grad(&ids, &Tensor::zeros((7, 3), DType::F32, &Device::Cpu)?)
            .unwrap_err();
        assert!(err.to_string().contains("`tok`"), "{err}");
        emb.weight.push_row_grad(&ids, &d)?;
        emb.weight.zero_grad();
        assert!(!emb.weight.has_row_grads());
        Ok(())
    }
}
