//! How a parameter is split along dim 0 (torch's `Shard(0)` / `torch.chunk` semantics).
//!
//! With `n` shards of a parameter with `rows` rows, every shard is `ceil(rows / n)` rows on the
//! wire; shard `i` holds rows `[i c, min((i + 1) c, rows))` — possibly fewer, possibly none —
//! and the rest is zero padding that exists only inside collectives: the optimizer and the
//! checkpoint see the real rows only.

use crate::{Error, Result};

/// One shard of one parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// The parameter's full shape.
    pub global_shape: Vec<usize>,
    /// How many shards the parameter is split into.
    pub num_shards: usize,
    /// Which shard this is.
    pub index: usize,
}

impl ShardLayout {
    /// Shard `index` of `num_shards` of a parameter of `global_shape`; errors for scalars
    /// (nothing to split) and out-of-range indices.
    pub fn new(
        name: &str,
        global_shape: &[usize],
        num_shards: usize,
        index: usize,
    ) -> Result<Self> {
        if global_shape.is_empty() {
            return Err(Error::Sharding(format!(
                "parameter `{name}` is a scalar: FSDP shards parameters along dim 0; give it shape [1]"
            )));
        }
        if num_shards == 0 || index >= num_shards {
            return Err(Error::Sharding(format!(
                "parameter `{name}`: shard {index} of {num_shards} does not exist"
            )));
        }
        Ok(Self {
            global_shape: global_shape.to_vec(),
            num_shards,
            index,
        })
    }

    /// Rows (dim 0) of the full parameter.
    pub fn rows(&self) -> usize {
        self.global_shape[0]
    }
    /// Elements per row.
    pub fn row_elems(&self) -> usize {
        self.global_shape[1..].iter().product()
    }
    /// Rows of every shard on the wire (`ceil(rows / num_shards)`).
    pub fn chunk_rows(&self) -> usize {
        self.rows().div_ceil(self.num_shards)
    }
    /// First row and number of rows of shard `i`.
    pub fn rows_of(&self, i: usize) -> (usize, usize) {
        let c = self.chunk_rows();
        let start = (i * c).min(self.rows());
        (start, ((i + 1) * c).min(self.rows()) - start)
    }
    /// First row of this shard.
    pub fn offset(&self) -> usize {
        self.rows_of(self.index).0
    }
    /// Real rows of this shard.
    pub fn local_rows(&self) -> usize {
        self.rows_of(self.index).1
    }
    /// Shape of this shard.
    pub fn local_shape(&self) -> Vec<usize> {
        let mut s = self.global_shape.clone();
        s[0] = self.local_rows();
        s
    }
    /// Real elements of this shard.
    pub fn local_elems(&self) -> usize {
        self.local_rows() * self.row_elems()
    }
    /// Elements of one shard on the wire, padding included.
    pub fn padded_elems(&self) -> usize {
        self.chunk_rows() * self.row_elems()
    }
    /// Elements of the full parameter.
    pub fn global_elems(&self) -> usize {
        self.rows() * self.row_elems()
    }
    /// Flat index of this shard's first element in the full parameter (for counter-based init).
    pub fn flat_offset(&self) -> usize {
        self.offset() * self.row_elems()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_rows_pad_the_last_shards() {
        let shards: Vec<_> = (0..3)
            .map(|i| ShardLayout::new("w", &[32, 4], 3, i).unwrap())
            .collect();
        assert_eq!(
            shards.iter().map(|s| s.local_rows()).collect::<Vec<_>>(),
            vec![11, 11, 10]
        );
        assert_eq!(
            shards.iter().map(|s| s.offset()).collect::<Vec<_>>(),
            vec![0, 11, 22]
        );
        assert_eq!(shards[2].padded_elems(), 44);
        assert_eq!(shards[2].local_shape(), vec![10, 4]);
        // Fewer rows than shards: the last shards are empty.
        let tiny: Vec<_> = (0..4)
            .map(|i| ShardLayout::new("b", &[2], 4, i).unwrap())
            .collect();
        assert_eq!(
            tiny.iter().map(|s| s.local_rows()).collect::<Vec<_>>(),
            vec![1, 1, 0, 0]
        );
        assert_eq!(tiny[3].offset(), 2);
        assert!(ShardLayout::new("s", &[], 2, 0).is_err());
        assert!(ShardLayout::new("w", &[4], 2, 2).is_err());
    }
}
