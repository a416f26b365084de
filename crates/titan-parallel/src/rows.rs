//! Gradients that travel as rows: an embedding's backward leaves `(ids, rows)`
//! ([`titan_core::Param::push_row_grad`]) and the data-parallel layer exchanges those (a few
//! MB) instead of the dense table gradient (1 GB f32 for a 128K x 2048 vocabulary). FSDP builds
//! each rank's row shard from everyone's rows; DDP the whole summed gradient.

use candle_core::Tensor;
use titan_core::ops::embedding::gradient_rows;

use crate::{Error, Result};

/// Rows `[lo, lo + count)` of the gradient summed over ranks, from every rank's row
/// contributions gathered in rank order (`ids` `(n_ranks * k,)`, `rows` `(n_ranks * k,
/// row_elems)`). On the host each rank's rows go into a partial of their own and the partials
/// are summed in rank order: the arithmetic of reducing dense per-rank gradients, so FSDP and
/// DDP stay bitwise equal to each other. On CUDA one scatter-add kernel takes all rows at once:
/// its f32 atomics fix no order of additions anyway (nor do the dense embedding backward's).
pub(crate) fn summed_rows(
    ids: &Tensor,
    rows: &Tensor,
    n_ranks: usize,
    lo: usize,
    count: usize,
) -> Result<Tensor> {
    if ids.device().is_cuda() || n_ranks == 1 {
        return Ok(gradient_rows(ids, rows, lo, count)?);
    }
    let k = ids.elem_count() / n_ranks;
    let mut sum: Option<Tensor> = None;
    for q in 0..n_ranks {
        let part = gradient_rows(
            &ids.narrow(0, q * k, k)?,
            &rows.narrow(0, q * k, k)?,
            lo,
            count,
        )?;
        sum = Some(match sum {
            None => part,
            Some(acc) => (acc + part)?,
        });
    }
    sum.ok_or_else(|| Error::Sharding("a row gradient from no rank".into()))
}

/// The dense gradient `shape` (f32) of row contributions on this rank alone: for a
/// parameter that also has a dense gradient (the rare mixed case), which then stays dense.
pub(crate) fn dense(ids: &Tensor, rows: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let table_rows = shape.first().copied().unwrap_or(0);
    Ok(gradient_rows(ids, rows, 0, table_rows)?.reshape(shape)?)
}

/// Concatenates a parameter's deferred row contributions into one `(ids, rows)` pair.
pub(crate) fn concat(parts: Vec<(Tensor, Tensor)>) -> Result<(Tensor, Tensor)> {
    let (ids, rows): (Vec<Tensor>, Vec<Tensor>) = parts.into_iter().unzip();
    Ok((Tensor::cat(&ids, 0)?, Tensor::cat(&rows, 0)?))
}
