//! What the trainer needs from a model, beyond running forward and backward.

use candle_core::{DType, Device, Tensor};
use titan_core::{LayeredModel, Module};
use titan_data::Batch;

use crate::Result;

/// Size and cost of a model, for the startup lines, MFU and memory estimates.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// The model family (`llama3`).
    pub name: String,
    /// The flavor (`debugmodel`, `8B`).
    pub flavor: String,
    pub num_params: u64,
    /// FLOPs per token at the run's sequence length (torchtitan's formula).
    pub flops_per_token: u64,
    /// Blocks in the model.
    pub n_blocks: usize,
    /// Saved activation bytes per token of one block with everything kept.
    pub block_activation_bytes_per_token: u64,
    /// ... with per-op selective checkpointing (matmul and attention outputs only).
    pub block_op_ac_bytes_per_token: u64,
    /// Bytes per token of a block's input (all that full checkpointing keeps).
    pub block_input_bytes_per_token: u64,
    /// Saved activation bytes per token of the stem and head.
    pub head_activation_bytes_per_token: u64,
    /// The vocabulary size, checked against the tokenizer.
    pub vocab_size: usize,
}

/// A language model the trainer can train: a [`LayeredModel`] whose loss target is a label
/// tensor, built shape-only and then materialized on a device.
pub trait TrainableModel: LayeredModel<Target = Tensor> + Module + Send {
    /// Size and cost at `seq_len`, without touching weights (`act_bytes` = bytes per
    /// activation element in the compute dtype).
    fn summary(&self, seq_len: usize, act_bytes: usize) -> ModelSummary;
    /// Prepare device-side tables (RoPE) and remember the device and compute dtype.
    fn prepare(&mut self, device: &Device, compute_dtype: DType, seq_len: usize) -> Result<()>;
    /// Draw initial weights (every parameter this process holds in full).
    fn init_weights(&mut self, seed: u64) -> Result<()>;
    /// Rebuild compute copies from masters after the optimizer changed them.
    fn refresh_compute(&mut self) -> Result<()>;
    /// Move one host batch to the device as model input.
    fn make_input(&self, batch: &Batch) -> Result<Self::Input>;
    /// The labels of one host batch as a device tensor.
    fn make_target(&self, batch: &Batch) -> Result<Tensor>;
}
