//! What a rank holds of each parameter, for checkpoints: enough for a checkpointer to save
//! per-rank shards and to cut any other layout out of them on load (2 ranks → 4, → 1).

/// One rank's piece of one parameter: rows `[offset, offset + rows)` of dim 0 of the full
/// tensor, every other dimension whole. Padding is never part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMeta {
    /// Fully qualified name (torchtitan's state-dict key, e.g. `layers.0.attention.wq.weight`).
    pub name: String,
    /// Shape of the full parameter.
    pub global_shape: Vec<usize>,
    /// First row (along dim 0) this rank holds.
    pub offset: usize,
    /// Rows this rank holds (0 when the parameter has fewer rows than shards).
    pub rows: usize,
    /// Index of this rank's replica (HSDP and DDP keep identical copies on every replica): only
    /// replica 0 needs to write; any replica may read.
    pub replica: usize,
}

impl ShardMeta {
    /// Shape of the piece this rank holds.
    pub fn local_shape(&self) -> Vec<usize> {
        let mut s = self.global_shape.clone();
        if let Some(d0) = s.first_mut() {
            *d0 = self.rows;
        }
        s
    }

    /// Whether the piece is the whole parameter.
    pub fn is_full(&self) -> bool {
        self.offset == 0 && self.global_shape.first().is_none_or(|&d0| d0 == self.rows)
    }

    /// Whether this rank should write the piece (replica 0, and not empty).
    pub fn writes_checkpoint(&self) -> bool {
        self.replica == 0 && (self.rows > 0 || self.global_shape.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shape_and_writer() {
        let m = ShardMeta {
            name: "w".into(),
            global_shape: vec![10, 4],
            offset: 5,
            rows: 5,
            replica: 0,
        };
        assert_eq!(m.local_shape(), vec![5, 4]);
        assert!(!m.is_full() && m.writes_checkpoint());
        let empty = ShardMeta {
            rows: 0,
            offset: 10,
            ..m.clone()
        };
        assert!(!empty.writes_checkpoint());
        let replica = ShardMeta { replica: 1, ..m };
        assert!(!replica.writes_checkpoint());
    }
}
