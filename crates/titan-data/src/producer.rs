//! The synchronous batch maker: reads documents of this rank's block, tokenizes, packs and cuts
//! batches, and can report its state after any batch. The loader runs it on a background thread
//! (prefetch) or inline.

use std::ops::Range;
use std::sync::Arc;

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::pack::{document_positions, Packer};
use crate::source::{DocumentReader, DocumentSource};
use crate::state::LoaderState;
use crate::synthetic::SyntheticTokens;
use crate::tokenizer::Tokenizer;

/// Everything fixed for a loader's life; producers are built from it plus a state.
pub(crate) struct Plan {
    pub(crate) dataset: String,
    pub(crate) seq_len: usize,
    pub(crate) batch_size: usize,
    pub(crate) dp_rank: usize,
    pub(crate) dp_world_size: usize,
    pub(crate) infinite: bool,
    pub(crate) emit_positions: bool,
    pub(crate) eos_id: Option<u32>,
    pub(crate) vocab_limit: Option<usize>,
    pub(crate) input: PlanInput,
}

pub(crate) enum PlanInput {
    Text {
        source: Arc<dyn DocumentSource>,
        tokenizer: Arc<Tokenizer>,
        /// This rank's records.
        shard: Range<u64>,
    },
    Synthetic(SyntheticTokens),
}

pub(crate) struct Producer {
    plan: Arc<Plan>,
    epoch: u64,
    sample_idx: u64,
    exhausted: bool,
    packer: Packer,
    reader: Option<Box<dyn DocumentReader>>,
}

impl Producer {
    pub(crate) fn new(plan: Arc<Plan>, state: &LoaderState) -> Self {
        let packer = Packer::new(plan.seq_len, state.token_buffer.clone());
        Producer {
            plan,
            epoch: state.epoch,
            sample_idx: state.sample_idx,
            exhausted: state.exhausted,
            packer,
            reader: None,
        }
    }

    pub(crate) fn state(&self) -> LoaderState {
        LoaderState {
            dataset: self.plan.dataset.clone(),
            dp_rank: self.plan.dp_rank,
            dp_world_size: self.plan.dp_world_size,
            epoch: self.epoch,
            sample_idx: self.sample_idx,
            token_buffer: self.packer.leftover().to_vec(),
            exhausted: self.exhausted,
        }
    }

    /// The next batch; `None` once a finite dataset is used up (its last batch may be short;
    /// tokens that do not fill a window are dropped, as in torchtitan).
    pub(crate) fn next_batch(&mut self) -> Result<Option<Batch>> {
        let plan = Arc::clone(&self.plan);
        let (rows, seq_len) = (plan.batch_size, plan.seq_len);
        let mut inputs = Vec::with_capacity(rows * seq_len);
        let mut labels = Vec::with_capacity(rows * seq_len);
        let mut filled = 0;
        while filled < rows {
            let got = match &plan.input {
                PlanInput::Synthetic(synthetic) => {
                    self.synthetic_window(synthetic, &mut inputs, &mut labels)
                }
                PlanInput::Text { .. } => self.text_window(&mut inputs, &mut labels)?,
            };
            if !got {
                break;
            }
            filled += 1;
        }
        if filled == 0 {
            return Ok(None);
        }
        let positions = plan.emit_positions.then(|| {
            let mut positions = Vec::with_capacity(inputs.len());
            for row in inputs.chunks(seq_len) {
                document_positions(row, plan.eos_id, &mut positions);
            }
            positions
        });
        Ok(Some(Batch {
            inputs,
            labels,
            positions,
            batch_size: filled,
            seq_len,
        }))
    }

    fn synthetic_window(
        &mut self,
        synthetic: &SyntheticTokens,
        inputs: &mut Vec<u32>,
        labels: &mut Vec<i64>,
    ) -> bool {
        let mut window = Vec::with_capacity(self.plan.seq_len + 1);
        synthetic.window(self.sample_idx, self.plan.seq_len + 1, &mut window);
        self.sample_idx += 1;
        inputs.extend_from_slice(&window[..self.plan.seq_len]);
        labels.extend(window[1..].iter().map(|&t| i64::from(t)));
        true
    }

    fn text_window(&mut self, inputs: &mut Vec<u32>, labels: &mut Vec<i64>) -> Result<bool> {
        while !self.packer.has_window() {
            if !self.read_document()? {
                return Ok(false);
            }
        }
        self.packer.pop_window(inputs, labels);
        Ok(true)
    }

    /// Tokenizes the next document of this rank's block into the packer; false when a finite
    /// dataset has none left.
    fn read_document(&mut self) -> Result<bool> {
        let plan = Arc::clone(&self.plan);
        let PlanInput::Text {
            source,
            tokenizer,
            shard,
        } = &plan.input
        else {
            return Ok(false);
        };
        let shard_len = shard.end - shard.start;
        loop {
            if self.exhausted {
                return Ok(false);
            }
            if self.sample_idx >= shard_len {
                if plan.infinite {
                    self.sample_idx = 0;
                    self.epoch += 1;
                    self.reader = None;
                    tracing::warn!(
                        "Dataset {} is being re-looped (epoch {})",
                        plan.dataset,
                        self.epoch
                    );
                    continue;
                }
                tracing::warn!("Dataset {} has run out of data", plan.dataset);
                self.exhausted = true;
                return Ok(false);
            }
            let record = shard.start + self.sample_idx;
            if self.reader.is_none() {
                self.reader = Some(source.open_at(record)?);
            }
            let Some(reader) = self.reader.as_mut() else {
                continue;
            };
            let Some(text) = reader.next_document()? else {
                return Err(Error::SourceEnded {
                    source_name: source.describe(),
                    record,
                    records: source.num_records(),
                });
            };
            let buffer = self.packer.buffer_mut();
            let before = buffer.len();
            tokenizer.encode_into(&text, true, true, buffer)?;
            if let Some(limit) = plan.vocab_limit {
                if let Some(&id) = buffer[before..].iter().find(|&&id| id as usize >= limit) {
                    return Err(Error::TokenOutOfVocab {
                        id,
                        vocab_size: limit,
                        context: format!(
                            " (record {record} of dataset '{}' at {}, tokenizer {} with {} ids)",
                            plan.dataset,
                            source.describe(),
                            tokenizer.origin(),
                            tokenizer.vocab_size()
                        ),
                    });
                }
            }
            self.sample_idx += 1;
            return Ok(true);
        }
    }
}
