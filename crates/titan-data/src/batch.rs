//! What the loader hands the trainer.

/// Label value for positions the loss must ignore (PyTorch's `ignore_index`). Pretraining
/// packing never produces it; it is part of the contract for future masked datasets.
pub const IGNORE_INDEX: i64 = -100;

/// One local batch, row-major `(batch_size, seq_len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Input token ids.
    pub inputs: Vec<u32>,
    /// Next-token targets; [`IGNORE_INDEX`] marks positions without a target.
    pub labels: Vec<i64>,
    /// Position of each token inside its document (block-causal attention); present when the
    /// loader was asked for them.
    pub positions: Option<Vec<u32>>,
    /// Rows in this batch: the configured local batch size, except possibly the last batch of
    /// a finite dataset.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
}

impl Batch {
    /// Input tokens of row `row`.
    pub fn input_row(&self, row: usize) -> &[u32] {
        &self.inputs[row * self.seq_len..(row + 1) * self.seq_len]
    }

    /// Labels of row `row`.
    pub fn label_row(&self, row: usize) -> &[i64] {
        &self.labels[row * self.seq_len..(row + 1) * self.seq_len]
    }

    /// `batch_size * seq_len`.
    pub fn num_tokens(&self) -> usize {
        self.batch_size * self.seq_len
    }
}
