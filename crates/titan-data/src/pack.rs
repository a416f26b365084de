//! torchtitan 0.2.2 packing: documents (each `[BOS] + ids + [EOS]`) are concatenated into one
//! token buffer, cut into windows of `seq_len + 1` tokens; a window `x` gives `input = x[..-1]`
//! and `label = x[1..]`, so labels cross document boundaries (EOS -> next BOS), exactly as
//! torchtitan's `HuggingFaceTextDataset.__iter__`. Leftover tokens stay in the buffer for the
//! next window (and in the checkpoint).

/// Token buffer plus the window cutter.
#[derive(Debug, Clone)]
pub(crate) struct Packer {
    window: usize,
    buffer: Vec<u32>,
    /// Tokens before `start` were already cut into windows (dropped lazily to avoid O(n) shifts).
    start: usize,
}

impl Packer {
    pub(crate) fn new(seq_len: usize, leftover: Vec<u32>) -> Self {
        Packer {
            window: seq_len + 1,
            buffer: leftover,
            start: 0,
        }
    }

    /// The buffer to append a document's tokens to.
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u32> {
        if self.start > 0 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        &mut self.buffer
    }

    pub(crate) fn has_window(&self) -> bool {
        self.buffer.len() - self.start >= self.window
    }

    /// Cuts the next window into `inputs` (its first `seq_len` tokens) and `labels` (its last
    /// `seq_len`). Call only when [`Packer::has_window`].
    pub(crate) fn pop_window(&mut self, inputs: &mut Vec<u32>, labels: &mut Vec<i64>) {
        let window = &self.buffer[self.start..self.start + self.window];
        inputs.extend_from_slice(&window[..self.window - 1]);
        labels.extend(window[1..].iter().map(|&t| i64::from(t)));
        self.start += self.window;
    }

    /// Tokens not yet cut into a window (saved in checkpoints).
    pub(crate) fn leftover(&self) -> &[u32] {
        &self.buffer[self.start..]
    }
}

/// Per-token position inside its document, for block-causal attention. As in torchtitan 0.2.2's
/// `get_document_mask_mod`, a new document starts after every EOS in the input; each row starts
/// a document at position 0.
pub fn document_positions(inputs: &[u32], eos_id: Option<u32>, out: &mut Vec<u32>) {
    let mut position = 0u32;
    let mut previous_was_eos = false;
    for &token in inputs {
        if previous_was_eos {
            position = 0;
        }
        out.push(position);
        position += 1;
        previous_was_eos = Some(token) == eos_id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_nothing_and_shift_labels_by_one() {
        let mut packer = Packer::new(3, vec![]);
        packer
            .buffer_mut()
            .extend([10, 11, 12, 13, 14, 15, 16, 17, 18]);
        let (mut inputs, mut labels) = (vec![], vec![]);
        assert!(packer.has_window());
        packer.pop_window(&mut inputs, &mut labels);
        assert_eq!(inputs, vec![10, 11, 12]);
        assert_eq!(labels, vec![11, 12, 13]);
        packer.pop_window(&mut inputs, &mut labels);
        assert_eq!(inputs[3..], [14, 15, 16]);
        assert_eq!(labels[3..], [15, 16, 17]);
        assert!(!packer.has_window());
        assert_eq!(packer.leftover(), &[18]);
        packer.buffer_mut().extend([19, 20, 21]);
        assert_eq!(packer.leftover(), &[18, 19, 20, 21]);
    }

    #[test]
    fn positions_restart_after_each_eos() {
        let eos = 2;
        let mut out = vec![];
        document_positions(&[5, 6, 2, 1, 7, 2, 2, 1], Some(eos), &mut out);
        assert_eq!(out, vec![0, 1, 2, 0, 1, 2, 0, 0]);
        out.clear();
        document_positions(&[5, 6, 7], None, &mut out);
        assert_eq!(out, vec![0, 1, 2]);
    }
}
