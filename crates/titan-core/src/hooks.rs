//! Hooks around each unit of a layered model.
//!
//! A unit is what FSDP shards and gathers as one, what activation checkpointing recomputes as
//! one and what a pipeline stage holds whole: the stem (embeddings), each transformer block,
//! and the head (final norm + output projection + loss). The executor calls the hooks in this
//! order for each microbatch:
//!
//! ```text
//! forward:  before_forward(u) -> unit forward -> after_forward(u)      for stem, blocks.., head
//! backward: before_backward(u) -> [recompute] -> unit backward -> after_backward(u)  in reverse
//! ```
//!
//! When `after_backward(u)` runs, unit `u`'s gradients for this microbatch are final: a data
//! parallel strategy may reduce them while later (earlier-numbered) units still run backward.

use crate::{Param, Result};

/// Which unit of a layered model a hook is called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitId {
    /// Token embeddings (or whatever turns inputs into the first hidden state).
    Stem,
    /// Transformer block `i` (0-based, torchtitan's `layers.{i}`).
    Block(usize),
    /// Final norm, output projection and loss.
    Head,
}

impl std::fmt::Display for UnitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitId::Stem => write!(f, "stem"),
            UnitId::Block(i) => write!(f, "layers.{i}"),
            UnitId::Head => write!(f, "head"),
        }
    }
}

/// Where in the step a hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicrobatchInfo {
    /// 0-based index of this microbatch within the optimizer step.
    pub index: usize,
    /// Number of microbatches (gradient accumulation steps) in the optimizer step.
    pub count: usize,
    /// Whether backward will run (false for validation / inference forwards).
    pub backward: bool,
}

impl MicrobatchInfo {
    /// The only microbatch of a step with backward.
    pub fn single() -> Self {
        Self {
            index: 0,
            count: 1,
            backward: true,
        }
    }
    /// A forward-only pass.
    pub fn forward_only() -> Self {
        Self {
            index: 0,
            count: 1,
            backward: false,
        }
    }
    /// Whether this is the last microbatch of the step.
    pub fn is_last(&self) -> bool {
        self.index + 1 == self.count
    }
}

/// Callbacks the executor runs around each unit. Every method defaults to doing nothing.
pub trait BlockHooks {
    /// Before the unit's forward: e.g. gather sharded parameters.
    fn before_forward(
        &mut self,
        _unit: UnitId,
        _params: &mut [&mut Param],
        _mb: MicrobatchInfo,
    ) -> Result<()> {
        Ok(())
    }
    /// After the unit's forward: e.g. free gathered parameters.
    fn after_forward(
        &mut self,
        _unit: UnitId,
        _params: &mut [&mut Param],
        _mb: MicrobatchInfo,
    ) -> Result<()> {
        Ok(())
    }
    /// Before the unit's backward (and before its recompute, under activation checkpointing).
    fn before_backward(
        &mut self,
        _unit: UnitId,
        _params: &mut [&mut Param],
        _mb: MicrobatchInfo,
    ) -> Result<()> {
        Ok(())
    }
    /// After the unit's backward: its gradients for this microbatch are final.
    fn after_backward(
        &mut self,
        _unit: UnitId,
        _params: &mut [&mut Param],
        _mb: MicrobatchInfo,
    ) -> Result<()> {
        Ok(())
    }
}

/// Hooks that do nothing: single-process training with resident parameters.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl BlockHooks for NoHooks {}

/// Runs several hook sets in order (forward hooks first to last, backward hooks too).
pub struct HookChain<'a> {
    hooks: Vec<&'a mut dyn BlockHooks>,
}

impl<'a> HookChain<'a> {
    pub fn new(hooks: Vec<&'a mut dyn BlockHooks>) -> Self {
        Self { hooks }
    }
}

impl BlockHooks for HookChain<'_> {
    fn before_forward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> Result<()> {
        self.hooks
            .iter_mut()
            .try_for_each(|h| h.before_forward(unit, params, mb))
    }
    fn after_forward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> Result<()> {
        self.hooks
            .iter_mut()
            .try_for_each(|h| h.after_forward(unit, params, mb))
    }
    fn before_backward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> Result<()> {
        self.hooks
            .iter_mut()
            .try_for_each(|h| h.before_backward(unit, params, mb))
    }
    fn after_backward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> Result<()> {
        self.hooks
            .iter_mut()
            .try_for_each(|h| h.after_backward(unit, params, mb))
    }
}
