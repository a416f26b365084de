//! The shape of a model the executor can run: a stem, a stack of blocks and a head.
//!
//! Each piece has an explicit `forward` that returns its output and a saved-state value holding
//! exactly what its backward needs, and a `backward(saved, d_out)` that returns the gradient of
//! its input and accumulates its parameters' gradients. Nothing is recorded behind the caller's
//! back: dropping a saved value frees those activations, which is all activation checkpointing
//! and pipeline schedules need.

use candle_core::Tensor;

use crate::hooks::UnitId;
use crate::{Module, Param, Result};

/// Activations a module kept for its backward.
pub trait SavedState: Send {
    /// Bytes of tensor storage this state keeps alive.
    fn bytes(&self) -> usize;
}

/// Bytes of one tensor's elements (views count their whole element count).
pub fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Bytes of an optional tensor.
pub fn opt_tensor_bytes(t: &Option<Tensor>) -> usize {
    t.as_ref().map(tensor_bytes).unwrap_or(0)
}

/// What a block keeps from its forward for its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveMode {
    /// Everything backward reads.
    All,
    /// torchtitan's per-op selective checkpointing: attention's outputs and every other matmul
    /// output in forward order are kept; the other matmuls and the cheap elementwise work
    /// (norms, RoPE, SwiGLU) are recomputed in backward. How a block maps this onto its own
    /// ops is the block's call (see its saved-state type).
    MatmulOutputs,
}

/// One repeated unit of a layered model (a transformer block).
pub trait Block: Module + Send {
    /// Per-microbatch context every block reads (RoPE tables, attention masks).
    type Ctx;
    /// What forward keeps for backward.
    type Saved: SavedState;

    /// Forward: the output hidden state and the saved state for backward.
    fn forward(&self, x: &Tensor, ctx: &Self::Ctx, mode: SaveMode)
        -> Result<(Tensor, Self::Saved)>;

    /// Backward: accumulates parameter gradients and returns the gradient of the input.
    fn backward(&mut self, saved: Self::Saved, d_out: &Tensor, ctx: &Self::Ctx) -> Result<Tensor>;
}

/// A model made of a stem, blocks and a head, runnable by [`crate::Executor`].
pub trait LayeredModel: Send {
    /// What the stem consumes (token ids, positions).
    type Input;
    /// What the loss compares against (labels).
    type Target;
    /// The blocks.
    type Block: Block;
    /// What the stem keeps for its backward.
    type StemSaved: SavedState;
    /// What the head keeps for its backward.
    type HeadSaved: SavedState;

    /// Build the per-microbatch context the blocks share.
    fn context(&self, input: &Self::Input) -> Result<<Self::Block as Block>::Ctx>;

    /// Stem forward: inputs to the first hidden state.
    fn stem_forward(&self, input: &Self::Input) -> Result<(Tensor, Self::StemSaved)>;
    /// Stem backward: accumulate the stem's parameter gradients.
    fn stem_backward(&mut self, saved: Self::StemSaved, d_h: &Tensor) -> Result<()>;

    /// The blocks, in order.
    fn blocks(&self) -> &[Self::Block];
    /// The blocks, mutably.
    fn blocks_mut(&mut self) -> &mut [Self::Block];

    /// Head forward: the loss (a scalar tensor, already multiplied by `loss_scale`) and the
    /// head's saved state. `loss_scale` is 1 / (valid tokens in the global batch), so that
    /// summing the microbatches' losses gives the global mean token loss.
    fn head_forward(
        &self,
        h: &Tensor,
        target: &Self::Target,
        loss_scale: f64,
    ) -> Result<(Tensor, Self::HeadSaved)>;
    /// Head forward in a pass whose head backward follows ([`crate::Executor::forward_backward`];
    /// forward-only passes call [`LayeredModel::head_forward`]). A head may do part of its
    /// backward here when that saves memory, e.g. turn the logits into their gradient in place
    /// so the two never coexist. The default is [`LayeredModel::head_forward`].
    fn head_forward_for_backward(
        &self,
        h: &Tensor,
        target: &Self::Target,
        loss_scale: f64,
    ) -> Result<(Tensor, Self::HeadSaved)> {
        self.head_forward(h, target, loss_scale)
    }
    /// Head backward: the gradient of the last hidden state (of the scaled loss).
    fn head_backward(&mut self, saved: Self::HeadSaved) -> Result<Tensor>;

    /// The parameters of one unit (what hooks receive).
    fn unit_params_mut(&mut self, unit: UnitId) -> Vec<&mut Param>;

    /// Whether `unit`'s backward reads the unit's own parameters. A sharding layer does not
    /// gather the weights of a unit whose backward does not (an embedding's backward is a
    /// scatter-add of the incoming gradient at the token ids: it never reads the table).
    /// Default: it does.
    fn backward_reads_params(&self, unit: UnitId) -> bool {
        let _ = unit;
        true
    }

    /// Number of blocks.
    fn num_blocks(&self) -> usize {
        self.blocks().len()
    }

    /// Every unit in forward order.
    fn units(&self) -> Vec<UnitId> {
        let mut u = vec![UnitId::Stem];
        u.extend((0..self.num_blocks()).map(UnitId::Block));
        u.push(UnitId::Head);
        u
    }
}
