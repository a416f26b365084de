//! Runs forward and backward over a [`LayeredModel`], calling the block hooks and applying the
//! activation checkpointing policy.

use candle_core::Tensor;

use crate::hooks::{BlockHooks, MicrobatchInfo, UnitId};
use crate::layered::{tensor_bytes, Block, LayeredModel, SaveMode, SavedState};
use crate::Result;

/// torchtitan's `activation_checkpoint` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationCheckpoint {
    /// Keep every block's saved state (`mode = "none"`).
    #[default]
    None,
    /// Keep only each block's input; recompute the block just before its backward
    /// (`mode = "full"`).
    Full,
    /// Full recompute for every `n`-th block, counting from 1 (`mode = "selective"`,
    /// `selective_ac_option = "n"`); `n = 1` is the same as [`ActivationCheckpoint::Full`].
    EveryNth(usize),
    /// Keep matmul and attention outputs, recompute elementwise work
    /// (`mode = "selective"`, `selective_ac_option = "op"`).
    Op,
}

impl ActivationCheckpoint {
    /// Parse torchtitan's `(mode, selective_ac_option)` pair.
    pub fn from_options(mode: &str, selective_ac_option: &str) -> Result<Self> {
        match mode {
            "none" => Ok(Self::None),
            "full" => Ok(Self::Full),
            "selective" => match selective_ac_option {
                "op" => Ok(Self::Op),
                n => match n.parse::<usize>() {
                    Ok(0) | Ok(1) => Ok(Self::Full),
                    Ok(n) => Ok(Self::EveryNth(n)),
                    Err(_) => crate::bail!(
                        "activation_checkpoint.selective_ac_option = {n:?}: expected \"op\" or a positive integer N (checkpoint every N-th block)"
                    ),
                },
            },
            other => crate::bail!(
                "activation_checkpoint.mode = {other:?}: expected one of \"none\", \"full\", \"selective\""
            ),
        }
    }

    /// What block `i` (0-based) keeps.
    fn plan(&self, i: usize) -> BlockPlan {
        match *self {
            Self::None => BlockPlan::Keep(SaveMode::All),
            Self::Full => BlockPlan::Recompute,
            Self::EveryNth(n) if (i + 1) % n == 0 => BlockPlan::Recompute,
            Self::EveryNth(_) => BlockPlan::Keep(SaveMode::All),
            Self::Op => BlockPlan::Keep(SaveMode::MatmulOutputs),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum BlockPlan {
    Keep(SaveMode),
    Recompute,
}

/// What the executor holds for a block between its forward and its backward.
enum Stash<S> {
    Saved(S),
    Input(Tensor),
}

impl<S: SavedState> Stash<S> {
    fn bytes(&self) -> usize {
        match self {
            Stash::Saved(s) => s.bytes(),
            Stash::Input(x) => tensor_bytes(x),
        }
    }
}

/// What one forward+backward pass reports.
#[derive(Debug, Clone)]
pub struct PassReport {
    /// The microbatch's loss, already scaled (sum over microbatches = global mean loss).
    pub loss: Tensor,
    /// The most bytes of saved activations alive at once during the pass.
    pub peak_saved_bytes: usize,
}

/// Runs passes over a layered model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Executor {
    pub ac: ActivationCheckpoint,
}

impl Executor {
    pub fn new(ac: ActivationCheckpoint) -> Self {
        Self { ac }
    }

    /// Forward and backward for one microbatch; parameter gradients accumulate.
    pub fn forward_backward<M: LayeredModel>(
        &self,
        model: &mut M,
        input: &M::Input,
        target: &M::Target,
        loss_scale: f64,
        hooks: &mut dyn BlockHooks,
        mb: MicrobatchInfo,
    ) -> Result<PassReport> {
        let mb = MicrobatchInfo {
            backward: true,
            ..mb
        };
        let ctx = model.context(input)?;
        let mut live = 0usize;
        let mut peak = 0usize;

        // Forward.
        run_hook(hooks, model, UnitId::Stem, mb, Phase::BeforeForward)?;
        let (mut h, stem_saved) = model.stem_forward(input)?;
        run_hook(hooks, model, UnitId::Stem, mb, Phase::AfterForward)?;
        live += stem_saved.bytes();
        peak = peak.max(live);

        let n = model.num_blocks();
        let mut stashes: Vec<Stash<<M::Block as Block>::Saved>> = Vec::with_capacity(n);
        for i in 0..n {
            run_hook(hooks, model, UnitId::Block(i), mb, Phase::BeforeForward)?;
            let plan = self.ac.plan(i);
            let mode = match plan {
                BlockPlan::Keep(mode) => mode,
                BlockPlan::Recompute => SaveMode::All,
            };
            let (y, saved) = model.blocks()[i].forward(&h, &ctx, mode)?;
            // The block's full saved state exists until we drop it here.
            peak = peak.max(live + saved.bytes());
            let stash = match plan {
                BlockPlan::Keep(_) => Stash::Saved(saved),
                BlockPlan::Recompute => {
                    drop(saved);
                    Stash::Input(h)
                }
            };
            live += stash.bytes();
            peak = peak.max(live);
            stashes.push(stash);
            run_hook(hooks, model, UnitId::Block(i), mb, Phase::AfterForward)?;
            h = y;
        }

        run_hook(hooks, model, UnitId::Head, mb, Phase::BeforeForward)?;
        let (loss, head_saved) = model.head_forward_for_backward(&h, target, loss_scale)?;
        drop(h);
        run_hook(hooks, model, UnitId::Head, mb, Phase::AfterForward)?;
        live += head_saved.bytes();
        peak = peak.max(live);

        // Backward.
        run_hook(hooks, model, UnitId::Head, mb, Phase::BeforeBackward)?;
        live -= head_saved.bytes();
        let mut d = model.head_backward(head_saved)?;
        run_hook(hooks, model, UnitId::Head, mb, Phase::AfterBackward)?;

        for i in (0..n).rev() {
            run_hook(hooks, model, UnitId::Block(i), mb, Phase::BeforeBackward)?;
            let stash = stashes.pop().expect("one stash per block");
            live -= stash.bytes();
            let saved = match stash {
                Stash::Saved(s) => s,
                Stash::Input(x) => {
                    let (_, s) = model.blocks()[i].forward(&x, &ctx, SaveMode::All)?;
                    peak = peak.max(live + s.bytes());
                    s
                }
            };
            d = model.blocks_mut()[i].backward(saved, &d, &ctx)?;
            run_hook(hooks, model, UnitId::Block(i), mb, Phase::AfterBackward)?;
        }

        run_hook(hooks, model, UnitId::Stem, mb, Phase::BeforeBackward)?;
        live -= stem_saved.bytes();
        model.stem_backward(stem_saved, &d)?;
        run_hook(hooks, model, UnitId::Stem, mb, Phase::AfterBackward)?;
        debug_assert_eq!(live, 0);

        Ok(PassReport {
            loss,
            peak_saved_bytes: peak,
        })
    }

    /// Forward only (validation): the scaled loss. Nothing is kept for backward.
    pub fn forward_loss<M: LayeredModel>(
        &self,
        model: &mut M,
        input: &M::Input,
        target: &M::Target,
        loss_scale: f64,
        hooks: &mut dyn BlockHooks,
    ) -> Result<Tensor> {
        let mb = MicrobatchInfo::forward_only();
        let ctx = model.context(input)?;
        run_hook(hooks, model, UnitId::Stem, mb, Phase::BeforeForward)?;
        let (mut h, _) = model.stem_forward(input)?;
        run_hook(hooks, model, UnitId::Stem, mb, Phase::AfterForward)?;
        for i in 0..model.num_blocks() {
            run_hook(hooks, model, UnitId::Block(i), mb, Phase::BeforeForward)?;
            // MatmulOutputs keeps the least; the saved state is dropped at once anyway.
            let (y, _) = model.blocks()[i].forward(&h, &ctx, SaveMode::MatmulOutputs)?;
            run_hook(hooks, model, UnitId::Block(i), mb, Phase::AfterForward)?;
            h = y;
        }
        run_hook(hooks, model, UnitId::Head, mb, Phase::BeforeForward)?;
        let (loss, _) = model.head_forward(&h, target, loss_scale)?;
        run_hook(hooks, model, UnitId::Head, mb, Phase::AfterForward)?;
        Ok(loss)
    }
}

#[derive(Clone, Copy)]
enum Phase {
    BeforeForward,
    AfterForward,
    BeforeBackward,
    AfterBackward,
}

fn run_hook<M: LayeredModel>(
    hooks: &mut dyn BlockHooks,
    model: &mut M,
    unit: UnitId,
    mb: MicrobatchInfo,
    phase: Phase,
) -> Result<()> {
    let mut params = model.unit_params_mut(unit);
    match phase {
        Phase::BeforeForward => hooks.before_forward(unit, &mut params, mb),
        Phase::AfterForward => hooks.after_forward(unit, &mut params, mb),
        Phase::BeforeBackward => hooks.before_backward(unit, &mut params, mb),
        Phase::AfterBackward => hooks.after_backward(unit, &mut params, mb),
    }
}
