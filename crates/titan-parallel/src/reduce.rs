//! Scalar reductions across ranks: the global loss, valid-token counts, maxima for logs.
//!
//! torchtitan divides each microbatch's summed token loss by the *global* number of valid
//! tokens, so the logged loss is the sum of every data-parallel rank's (scaled) loss, and the
//! token count itself is summed over the `dp` group before the step.

use candle_core::{DType, Tensor};

use crate::comm::{ProcessGroup, ReduceOp};
use crate::Result;

/// Reduces a few f64 values at once (one collective), identically on every rank.
pub fn all_reduce_f64(group: &dyn ProcessGroup, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
    if group.size() == 1 || values.is_empty() {
        return Ok(values.to_vec());
    }
    let t = Tensor::from_slice(values, values.len(), &group.device())?;
    Ok(group
        .all_reduce(&t, op)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

/// Sum of `value` over the group.
pub fn sum_f64(group: &dyn ProcessGroup, value: f64) -> Result<f64> {
    Ok(all_reduce_f64(group, &[value], ReduceOp::Sum)?[0])
}

/// Maximum of `value` over the group (e.g. the slowest rank's step time, peak memory).
pub fn max_f64(group: &dyn ProcessGroup, value: f64) -> Result<f64> {
    Ok(all_reduce_f64(group, &[value], ReduceOp::Max)?[0])
}

/// Exact sum of a count over the group (e.g. valid tokens of the global batch).
pub fn sum_u64(group: &dyn ProcessGroup, value: u64) -> Result<u64> {
    if group.size() == 1 {
        return Ok(value);
    }
    let t = Tensor::from_slice(&[value as i64], 1, &group.device())?;
    Ok(group.all_reduce(&t, ReduceOp::Sum)?.to_vec1::<i64>()?[0] as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::comm::run_local;

    #[test]
    fn scalars_reduce_over_ranks() {
        let out = run_local(3, Duration::from_secs(10), |g| {
            let r = g.rank() as f64;
            (
                sum_f64(g.as_ref(), 0.5 + r).unwrap(),
                max_f64(g.as_ref(), r).unwrap(),
                sum_u64(g.as_ref(), (1u64 << 40) + g.rank() as u64).unwrap(),
                all_reduce_f64(g.as_ref(), &[r, -r], ReduceOp::Min).unwrap(),
            )
        })
        .unwrap();
        for o in out {
            let (s, m, c, v) = o.unwrap_or_else(|_| panic!("a rank panicked"));
            assert_eq!(s, 4.5);
            assert_eq!(m, 2.0);
            assert_eq!(c, 3 * (1u64 << 40) + 3);
            assert_eq!(v, vec![0.0, -2.0]);
        }
    }
}
