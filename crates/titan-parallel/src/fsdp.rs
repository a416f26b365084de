//! Fully sharded data parallelism (torchtitan's FSDP2 `fully_shard` per unit), and HSDP.
//!
//! Each unit of the model (stem, every block, head) is one FSDP unit. Every parameter is split
//! along dim 0 over the shard group ([`ShardLayout`]); the rank keeps only its rows, as an f32
//! master in a titan-core [`Param`] named by the parameter's FQN — what the optimizer steps on.
//! The model's own parameters hold nothing between passes. Around each unit:
//!
//! - before forward / backward: all-gather the unit's shards (cast to `param_dtype` first,
//!   padded to equal size) into the parameters' compute copies;
//! - after forward: free them again unless the reshard policy keeps them for backward;
//! - after backward: reduce-scatter the unit's gradients (in `reduce_dtype`) into the shard
//!   gradients, and free the full gradients and weights.
//!
//! Collectives run per parameter, not over one flat buffer per unit: with the `torch.chunk`
//! layout ([`ShardLayout`]) rank `r`'s padded chunk starts at row `r * ceil(rows / n)`, so an
//! all-gather's output *is* the full parameter (a prefix view of it when padded) and a
//! gradient *is* the reduce-scatter's input (padded only when the rows do not divide). A flat
//! buffer would need a concatenation before and a split after every collective: on the 1B
//! model that staging moved ~15 GB per step on the GPU. A unit's per-parameter collectives
//! are issued as one group (NCCL: one kernel launch and one handshake with the peers per unit;
//! one per parameter made the collectives 2.5x slower inside a step). Per-parameter sums add
//! the same values in the same rank order: results are bitwise those of the flat form.
//!
//! Three things keep the start and the end of a pass from waiting on the network: the first
//! units of the next pass are gathered during the optimizer step ([`Fsdp::step_and_prefetch`]);
//! a unit whose backward does not read its weights (the embedding:
//! [`LayeredModel::backward_reads_params`]) is not gathered for backward; and a parameter
//! whose backward leaves row contributions ([`Param::push_row_grad`]) exchanges those rows, not
//! a dense gradient (see [`Fsdp`]'s `start_reduce`).
//!
//! With `overlap` (the default; `TITAN_FSDP_OVERLAP=0` turns it off) the collectives run
//! asynchronously on device backends (NCCL's communication stream): `before_forward(u)` /
//! `before_backward(u)` start the all-gather of the unit that runs next (`u + 1` in forward,
//! `u - 1` in backward) so it overlaps `u`'s compute, and `after_backward(u)` starts `u`'s
//! reduce-scatter and folds it into the shard gradients only at the next unit's
//! `after_backward` (the stem's own at once), so it overlaps that unit's backward. The host
//! backends complete every collective at once: same results, same order of arithmetic.
//!
//! Gradients are *summed* over ranks (torchtitan sets the gradient divide factor to 1): the
//! loss is already divided by the global number of valid tokens. With gradient accumulation
//! the reduce-scatter runs after every microbatch (torchtitan's default, so full-size gradients
//! never outlive their unit's backward) and accumulates into the shard gradients; under HSDP
//! the all-reduce across replicas runs once, after the last microbatch.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use titan_core::{BlockHooks, LayeredModel, MicrobatchInfo, Param, UnitId};

use crate::clip::clip_grad_norm_distributed;
use crate::comm::{Group, ProcessGroup, ReduceOp, Work};
use crate::shard::ShardLayout;
use crate::state::ShardMeta;
use crate::{Error, Result};

/// torchtitan's `parallelism.fsdp_reshard_after_forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReshardAfterForward {
    /// Reshard every unit but the last (the head, whose backward follows at once), unless
    /// pipeline parallelism is on (then keep: a stage runs several microbatches' forwards).
    #[default]
    Default,
    /// Reshard every unit after forward: least memory, one more all-gather per unit.
    Always,
    /// Keep gathered weights until backward: most memory, fewest all-gathers.
    Never,
}

impl FromStr for ReshardAfterForward {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Self::Default),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(Error::Config(format!(
                "parallelism.fsdp_reshard_after_forward = {other:?}: expected \"default\", \"always\" or \"never\""
            ))),
        }
    }
}

/// FSDP options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsdpConfig {
    /// Dtype of the gathered weights the model computes with (`training.mixed_precision_param`:
    /// bf16 on GPU; f32 on CPU). The model's compute dtype must match.
    pub param_dtype: DType,
    /// Dtype gradients are reduced in (`training.mixed_precision_reduce`, f32).
    pub reduce_dtype: DType,
    pub reshard_after_forward: ReshardAfterForward,
    /// Whether pipeline parallelism is on (changes what `Default` resharding means).
    pub pipeline_parallel: bool,
    /// Prefetch the next unit's all-gather and defer each reduce-scatter's wait (see the
    /// module docs). Default: on, unless `TITAN_FSDP_OVERLAP=0`.
    pub overlap: bool,
}

/// Whether FSDP overlaps its collectives with compute by default: yes unless the environment
/// sets `TITAN_FSDP_OVERLAP=0` (or `false`/`off`), for A/B runs.
pub fn overlap_default() -> bool {
    !matches!(
        std::env::var("TITAN_FSDP_OVERLAP").as_deref(),
        Ok("0") | Ok("false") | Ok("off")
    )
}

impl FsdpConfig {
    /// Gather in `param_dtype`, reduce in f32, default resharding, no pipeline.
    pub fn new(param_dtype: DType) -> Self {
        Self {
            param_dtype,
            reduce_dtype: DType::F32,
            reshard_after_forward: ReshardAfterForward::Default,
            pipeline_parallel: false,
            overlap: overlap_default(),
        }
    }
}

/// Where the shards' initial values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardInit {
    /// Draw each shard with the parameter's init rule and this seed: the same values a single
    /// process would draw for those elements (titan-core's counter-based init), without ever
    /// materializing the full model.
    Seed(u64),
    /// Cut the shard out of the model's materialized masters (which are then dropped).
    TakeMasters,
    /// Zeros, to be overwritten by a checkpoint load.
    Zeros,
}

/// One parameter's shard.
#[derive(Debug)]
struct ShardedParam {
    shard: Param,
    layout: ShardLayout,
}

/// One FSDP unit.
#[derive(Debug)]
struct FsdpUnit {
    id: UnitId,
    params: Vec<ShardedParam>,
    reshard_after_forward: bool,
    /// Whether the unit's backward reads its weights ([`LayeredModel::backward_reads_params`]):
    /// if not, they are freed after forward and never gathered for backward.
    backward_reads_params: bool,
    gathered: bool,
}

/// A unit's reduce-scatter that has been started but not yet folded into the shards.
#[derive(Debug)]
struct PendingGrad {
    ui: usize,
    /// One reduction per parameter of the unit, in the unit's order.
    works: Vec<GradWork>,
    mb: MicrobatchInfo,
}

/// How one parameter's gradient travels.
#[derive(Debug)]
enum GradWork {
    /// A reduce-scatter of the dense gradient.
    Dense(Work),
    /// All-gathers of every rank's row contributions ([`Param::take_row_grads`]: ids and
    /// rows), from which each rank builds its own row shard of the gradient.
    Rows { ids: Work, rows: Work },
}

/// HSDP: a unit's all-reduces over the replicas (one per shard gradient), started but not yet
/// folded back.
#[derive(Debug)]
struct PendingReplica {
    ui: usize,
    works: Vec<Work>,
}

/// FSDP (or HSDP with a replicate group) over a layered model.
#[derive(Debug)]
pub struct Fsdp {
    shard_group: Group,
    replicate_group: Option<Group>,
    cfg: FsdpConfig,
    device: Device,
    units: Vec<FsdpUnit>,
    index: HashMap<UnitId, usize>,
    /// All-gathers started ahead of their unit (by unit index; one per parameter).
    prefetched: Vec<Option<Vec<Work>>>,
    /// Reduce-scatters started but not yet folded into the shard gradients.
    pending_grads: Vec<PendingGrad>,
    /// HSDP: replica all-reduces started but not yet folded into the shard gradients.
    pending_replica: Vec<PendingReplica>,
    /// Whether `prefetched` holds gathers [`Fsdp::step_and_prefetch`] started for the next
    /// pass (cleared when that pass begins).
    next_pass_prefetched: bool,
}

/// How many units [`Fsdp::step_and_prefetch`] gathers ahead of the next pass: the stem, and
/// the first block, whose gather the stem's short forward could not hide.
const NEXT_PASS_UNITS: usize = 2;

impl Fsdp {
    /// Shards every unit of `model` over `shard_group` (HSDP when `replicate_group` has more
    /// than one rank), keeping shards on `device`. The model's parameters are left without
    /// masters, compute copies or gradients. Every rank of both groups must call this with the
    /// same model architecture (checked).
    pub fn new<M: LayeredModel>(
        model: &mut M,
        shard_group: Group,
        replicate_group: Option<Group>,
        cfg: FsdpConfig,
        init: ShardInit,
        device: &Device,
    ) -> Result<Self> {
        let replicate_group = replicate_group.filter(|g| g.size() > 1);
        let (n, idx) = (shard_group.size(), shard_group.rank());
        let ids = model.units();
        let last = ids.last().copied();
        let mut units = Vec::with_capacity(ids.len());
        let mut names = HashSet::new();
        let mut index = HashMap::new();
        for id in ids {
            let backward_reads_params = model.backward_reads_params(id);
            let reshard = !backward_reads_params
                || match cfg.reshard_after_forward {
                    ReshardAfterForward::Always => true,
                    ReshardAfterForward::Never => false,
                    ReshardAfterForward::Default => !cfg.pipeline_parallel && Some(id) != last,
                };
            let mut params = Vec::new();
            for p in model.unit_params_mut(id) {
                let name = p.name().to_string();
                if !names.insert(name.clone()) {
                    return Err(Error::Sharding(format!(
                        "parameter `{name}` appears twice in the model's units: FSDP needs unique names (tied weights are not supported yet)"
                    )));
                }
                let layout = ShardLayout::new(&name, p.shape().dims(), n, idx)?;
                let value = initial_shard(p, &layout, init, device)?;
                let shard = Param::from_tensor(name, value, p.init())?;
                p.take_master();
                p.release_compute();
                p.zero_grad();
                // Row gradients (an embedding's) travel as rows: see `start_reduce`.
                p.set_takes_row_grads(n > 1);
                params.push(ShardedParam { shard, layout });
            }
            index.insert(id, units.len());
            units.push(FsdpUnit {
                id,
                params,
                reshard_after_forward: reshard,
                backward_reads_params,
                gathered: false,
            });
        }
        let prefetched = units.iter().map(|_| None).collect();
        let fsdp = Self {
            shard_group,
            replicate_group,
            cfg,
            device: device.clone(),
            units,
            index,
            prefetched,
            pending_grads: Vec::new(),
            pending_replica: Vec::new(),
            next_pass_prefetched: false,
        };
        fsdp.check_same_model()?;
        tracing::info!(
            kind = if fsdp.replicate_group.is_some() {
                "hsdp"
            } else {
                "fsdp"
            },
            shards = n,
            local_params = fsdp.local_numel(),
            global_params = fsdp.global_numel(),
            "sharded the model"
        );
        Ok(fsdp)
    }

    /// Every rank must shard the same parameters: compare counts and sizes once, up front,
    /// rather than fail obscurely in the first all-gather.
    fn check_same_model(&self) -> Result<()> {
        let count = self.units.iter().map(|u| u.params.len()).sum::<usize>() as f64;
        let numel = self.global_numel() as f64;
        for g in std::iter::once(&self.shard_group).chain(self.replicate_group.as_ref()) {
            let hi = crate::reduce::all_reduce_f64(g.as_ref(), &[count, numel], ReduceOp::Max)?;
            let lo = crate::reduce::all_reduce_f64(g.as_ref(), &[count, numel], ReduceOp::Min)?;
            if hi != lo {
                return Err(Error::Mismatch {
                    op: "Fsdp::new".into(),
                    group: g.name().to_string(),
                    detail: format!(
                        "ranks hold different models (parameters from {} to {}, elements from {} to {}): build the same model everywhere",
                        lo[0], hi[0], lo[1], hi[1]
                    ),
                });
            }
        }
        Ok(())
    }

    /// The group parameters are sharded over.
    pub fn shard_group(&self) -> &Group {
        &self.shard_group
    }
    /// The replicate group under HSDP.
    pub fn replicate_group(&self) -> Option<&Group> {
        self.replicate_group.as_ref()
    }
    pub fn config(&self) -> &FsdpConfig {
        &self.cfg
    }

    /// Real parameter elements this rank holds.
    pub fn local_numel(&self) -> usize {
        self.shards().map(|s| s.layout.local_elems()).sum()
    }
    /// Elements of the whole model.
    pub fn global_numel(&self) -> usize {
        self.shards().map(|s| s.layout.global_elems()).sum()
    }

    fn shards(&self) -> impl Iterator<Item = &ShardedParam> {
        self.units.iter().flat_map(|u| u.params.iter())
    }

    /// Every shard, empty ones included, in unit (state-dict) order.
    pub fn shard_params(&self) -> Vec<&Param> {
        self.shards().map(|s| &s.shard).collect()
    }

    /// The shards the optimizer steps on: name = FQN, shape = local shard shape, master =
    /// f32 shard, grad = reduced shard gradient. Shards with no rows (a parameter with fewer
    /// rows than ranks) are left out: they have nothing to update.
    ///
    /// Their compute copies are dropped here, since the caller may change the masters. An
    /// optimizer step that rebuilds them in the same pass (titan-optim's `step_and_refresh*`,
    /// which writes the `param_dtype` copy beside the f32 update) puts current ones back, and
    /// the next all-gathers send those instead of casting every shard again (two casts per unit
    /// and step otherwise: ~9 GB of memory traffic per step for the 1B model on 2 GPUs).
    pub fn shard_params_mut(&mut self) -> Vec<&mut Param> {
        self.unit_shards_mut(0..self.units.len())
    }

    /// [`Fsdp::shard_params_mut`] of the units in `units` (by index, forward order).
    fn unit_shards_mut(&mut self, units: std::ops::Range<usize>) -> Vec<&mut Param> {
        self.units[units]
            .iter_mut()
            .flat_map(|u| u.params.iter_mut())
            .filter(|s| s.layout.local_rows() > 0)
            .map(|s| {
                s.shard.release_compute();
                &mut s.shard
            })
            .collect()
    }

    /// Runs an optimizer step over [`Fsdp::shard_params_mut`] in two calls of `step`: first
    /// the shards of the units the next pass gathers first (the stem and the first block),
    /// then, once their all-gathers are started, the rest. The gathers then run during the
    /// rest of the step instead of holding up the next forward (on 2 GPUs at the 1B shape the
    /// stem's 262 MB gather was ~1.4 ms of exposed time per step). Every shard is stepped
    /// exactly once, so the update equals one call over all shards.
    ///
    /// `step` should rebuild the compute copies of what it steps (titan-optim's
    /// `step_and_refresh*`): the gathers send those; otherwise they cast the new masters.
    /// With `next_pass = false` (the last step) or overlap off, nothing is prefetched.
    pub fn step_and_prefetch<E: From<Error>>(
        &mut self,
        next_pass: bool,
        mut step: impl FnMut(&mut [&mut Param]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let first = if next_pass && self.cfg.overlap {
            NEXT_PASS_UNITS.min(self.units.len())
        } else {
            0
        };
        if first > 0 {
            step(&mut self.unit_shards_mut(0..first))?;
            for ui in 0..first {
                self.prefetch(ui)?;
            }
            self.next_pass_prefetched = true;
        }
        let n = self.units.len();
        step(&mut self.unit_shards_mut(first..n))
    }

    /// Drops gathers [`Fsdp::step_and_prefetch`] started for a pass that will not come with
    /// these weights (a reload or re-initialization replaces them).
    fn cancel_next_pass_prefetch(&mut self) {
        if std::mem::take(&mut self.next_pass_prefetched) {
            for w in &mut self.prefetched {
                *w = None;
            }
        }
    }

    /// Forgets the shard gradients (after the optimizer step).
    pub fn zero_grad(&mut self) {
        for u in &mut self.units {
            for s in &mut u.params {
                s.shard.zero_grad();
            }
        }
    }

    /// Clips the shard gradients to a global 2-norm of `max_norm` (summed over the shard
    /// group; HSDP replicas hold identical gradients and are not counted twice). Returns the
    /// norm before clipping, identical on every rank.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        self.finish_pending()?;
        let group = self.shard_group.clone();
        let mut params = self.shard_params_mut();
        clip_grad_norm_distributed(&mut params, max_norm, &[group.as_ref()])
    }

    /// The squared global 2-norm of the shard gradients (summed over the shard group only:
    /// HSDP replicas hold identical gradients). Identical on every rank.
    pub fn grad_sq_norm(&self) -> Result<f64> {
        let sq = crate::clip::local_sq_norm(&self.shard_params())?;
        crate::reduce::sum_f64(self.shard_group.as_ref(), sq)
    }

    /// Redraws every shard with its parameter's init rule and `seed` (the values a single
    /// process would draw for those elements); clears gradients. Not during a pass.
    pub fn init_weights(&mut self, seed: u64) -> Result<()> {
        self.cancel_next_pass_prefetch();
        self.check_between_passes("init_weights")?;
        for s in self.units.iter_mut().flat_map(|u| u.params.iter_mut()) {
            let value =
                initial_shard(&mut s.shard, &s.layout, ShardInit::Seed(seed), &self.device)?;
            s.shard.set_master(value)?;
            s.shard.release_compute();
            s.shard.zero_grad();
        }
        Ok(())
    }

    fn check_between_passes(&self, what: &str) -> Result<()> {
        let busy = self.units.iter().enumerate().find(|(i, u)| {
            u.gathered
                || self.prefetched[*i].is_some()
                || self.pending_grads.iter().any(|p| p.ui == *i)
                || self.pending_replica.iter().any(|p| p.ui == *i)
        });
        match busy {
            Some((_, u)) => Err(Error::Sharding(format!(
                "{what} during a pass (unit {} is gathered or has collectives in flight): call it between steps, or release_all first",
                u.id
            ))),
            None => Ok(()),
        }
    }

    /// Collectives started and not yet finished: prefetched all-gathers and reduce-scatters
    /// not yet folded in. Zero between passes.
    pub fn in_flight(&self) -> usize {
        self.prefetched.iter().filter(|w| w.is_some()).count()
            + self.pending_grads.len()
            + self.pending_replica.len()
    }

    /// Folds every reduce-scatter (and HSDP replica all-reduce) still in flight into the shard
    /// gradients. The last unit's `after_backward` does this already; call it if a pass ends
    /// some other way.
    pub fn finish_pending(&mut self) -> Result<()> {
        self.fold_reduce_scatters()?;
        self.fold_replica_sums()
    }

    /// Folds the reduce-scatters in flight into the shard gradients (under HSDP, after a pass's
    /// last microbatch, this starts each such unit's all-reduce over the replicas).
    fn fold_reduce_scatters(&mut self) -> Result<()> {
        for p in std::mem::take(&mut self.pending_grads) {
            self.finish_reduce(p)?;
        }
        Ok(())
    }

    /// HSDP: replaces each shard gradient with its finished sum over the replicas.
    fn fold_replica_sums(&mut self) -> Result<()> {
        for p in std::mem::take(&mut self.pending_replica) {
            for (s, work) in self.units[p.ui].params.iter_mut().zip(p.works) {
                let summed = work.wait()?.to_dtype(DType::F32)?;
                s.shard.set_grad(Some(summed))?;
            }
        }
        Ok(())
    }

    /// What this rank holds of the parameter named `name`.
    pub fn shard_meta(&self, name: &str) -> Option<ShardMeta> {
        self.shard_metas().into_iter().find(|m| m.name == name)
    }

    fn replica_index(&self) -> usize {
        self.replicate_group.as_ref().map_or(0, |g| g.rank())
    }

    /// What this rank holds of every parameter, in state-dict order (empty shards included,
    /// so every rank lists every parameter).
    pub fn shard_metas(&self) -> Vec<ShardMeta> {
        let replica = self.replica_index();
        self.shards()
            .map(|s| ShardMeta {
                name: s.shard.name().to_string(),
                global_shape: s.layout.global_shape.clone(),
                offset: s.layout.offset(),
                rows: s.layout.local_rows(),
                replica,
            })
            .collect()
    }

    /// The f32 master shards with their metadata, for a checkpoint save.
    pub fn sharded_state(&self) -> Result<Vec<(ShardMeta, Tensor)>> {
        self.shard_metas()
            .into_iter()
            .zip(self.shards())
            .map(|(meta, s)| Ok((meta, master_of(&s.shard)?.clone())))
            .collect()
    }

    /// Replaces every shard with what `read` returns for its metadata (a checkpoint load:
    /// `read` cuts rows `[offset, offset + rows)` of the saved parameter, whatever layout it
    /// was saved in). Shapes are checked; gradients are cleared.
    pub fn load_sharded(
        &mut self,
        mut read: impl FnMut(&ShardMeta) -> Result<Tensor>,
    ) -> Result<()> {
        self.cancel_next_pass_prefetch();
        self.check_between_passes("load_sharded")?;
        let metas = self.shard_metas();
        let device = self.device.clone();
        for (meta, s) in metas
            .iter()
            .zip(self.units.iter_mut().flat_map(|u| u.params.iter_mut()))
        {
            let t = read(meta)?;
            if t.dims() != meta.local_shape().as_slice() {
                return Err(Error::Sharding(format!(
                    "loading `{}`: got shape {:?} for rows {}..{} of {:?}, expected {:?}",
                    meta.name,
                    t.dims(),
                    meta.offset,
                    meta.offset + meta.rows,
                    meta.global_shape,
                    meta.local_shape()
                )));
            }
            s.shard.set_master(t.to_device(&device)?)?;
            s.shard.release_compute();
            s.shard.zero_grad();
        }
        Ok(())
    }

    /// Every full parameter (f32), gathered over the shard group: for exports and tests.
    /// Collective: every rank of the shard group must call it.
    pub fn gather_full_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for s in self.shards() {
            let flat = padded_flat(master_of(&s.shard)?, s.layout.padded_elems())?;
            // As in `gather`: the real rows are the prefix of the padded chunks.
            let full = self
                .shard_group
                .all_gather(&flat)?
                .narrow(0, 0, s.layout.global_elems())?
                .reshape(s.layout.global_shape.as_slice())?;
            out.push((s.shard.name().to_string(), full));
        }
        Ok(out)
    }

    /// Frees any gathered weights and pending full gradients left in `model` (after a pass
    /// that failed midway), so the next pass starts clean.
    pub fn release_all<M: LayeredModel>(&mut self, model: &mut M) {
        // Dropping in-flight work is safe: its buffers are released in stream order.
        self.pending_grads.clear();
        self.pending_replica.clear();
        self.next_pass_prefetched = false;
        for w in &mut self.prefetched {
            *w = None;
        }
        for u in &mut self.units {
            for p in model.unit_params_mut(u.id) {
                p.release_compute();
                p.zero_grad();
            }
            u.gathered = false;
        }
    }

    fn unit_index(&self, unit: UnitId, params: &[&mut Param]) -> Result<usize> {
        let ui = *self.index.get(&unit).ok_or_else(|| {
            Error::Sharding(format!(
                "unit {unit} was not sharded: build Fsdp from the same model that runs"
            ))
        })?;
        let u = &self.units[ui];
        let same = u.params.len() == params.len()
            && u.params
                .iter()
                .zip(params.iter())
                .all(|(s, p)| s.shard.name() == p.name());
        if !same {
            return Err(Error::Sharding(format!(
                "unit {unit}: the model passed parameters {:?} but FSDP sharded {:?}",
                params.iter().map(|p| p.name()).collect::<Vec<_>>(),
                u.params.iter().map(|s| s.shard.name()).collect::<Vec<_>>()
            )));
        }
        Ok(ui)
    }

    /// Starts the all-gathers of unit `ui`'s shards (each in `param_dtype`, padded to the chunk
    /// size), one per parameter, issued together (one NCCL group: one launch and one handshake
    /// with the peers per unit instead of one per parameter). A shard's compute copy, when the
    /// optimizer step left one (see [`Fsdp::shard_params_mut`]), is that cast already.
    fn start_gather(&self, ui: usize) -> Result<Vec<Work>> {
        let group = self.shard_group.as_ref();
        let dtype = self.cfg.param_dtype;
        let flats = self.units[ui]
            .params
            .iter()
            .map(|s| {
                let m = match s.shard.compute() {
                    Ok(c) if c.dtype() == dtype => c.clone(),
                    _ => master_of(&s.shard)?.to_dtype(dtype)?,
                };
                padded_flat(&m, s.layout.padded_elems())
            })
            .collect::<Result<Vec<_>>>()?;
        if self.cfg.overlap {
            group.all_gather_many_async(&flats)
        } else {
            flats
                .iter()
                .map(|f| Ok(Work::done(group.all_gather(f)?)))
                .collect()
        }
    }

    /// Starts gathering unit `ui` ahead of its hook, if it will need it and has not started.
    fn prefetch(&mut self, ui: usize) -> Result<()> {
        if !self.cfg.overlap
            || ui >= self.units.len()
            || self.units[ui].gathered
            || self.prefetched[ui].is_some()
        {
            return Ok(());
        }
        self.prefetched[ui] = Some(self.start_gather(ui)?);
        Ok(())
    }

    /// All-gathers unit `ui`'s shards into the parameters' compute copies (finishing the
    /// prefetch if one was started).
    fn gather(&mut self, ui: usize, params: &mut [&mut Param]) -> Result<()> {
        let works = match self.prefetched[ui].take() {
            Some(w) => w,
            None => self.start_gather(ui)?,
        };
        let unit = &self.units[ui];
        for ((s, p), work) in unit.params.iter().zip(params.iter_mut()).zip(works) {
            // Rank r's chunk starts at row r * chunk_rows: the real rows are the prefix.
            let full = work
                .wait()?
                .narrow(0, 0, s.layout.global_elems())?
                .reshape(s.layout.global_shape.as_slice())?;
            p.set_compute(full)?;
        }
        self.units[ui].gathered = true;
        Ok(())
    }

    fn release(&mut self, ui: usize, params: &mut [&mut Param]) {
        for p in params.iter_mut() {
            p.release_compute();
        }
        self.units[ui].gathered = false;
    }

    /// Starts the reductions of unit `ui`'s gradients (taken from `params`), one per parameter,
    /// issued together as the all-gathers are: a reduce-scatter of each dense gradient, and for
    /// a parameter whose backward left row contributions ([`Param::push_row_grad`]: an
    /// embedding's token ids and output-gradient rows) an all-gather of those rows instead.
    /// Every rank then scatter-adds everyone's rows into its own row shard: on the 1B model
    /// that moves 2 x 33 MB of bf16 rows instead of reduce-scattering a 1 GB f32 table
    /// gradient at the very end of the backward, where nothing hides it. Every rank must push
    /// as many rows as the others (the same microbatch shape: data parallelism's case).
    fn start_reduce(&self, ui: usize, params: &mut [&mut Param]) -> Result<Vec<GradWork>> {
        let n = self.shard_group.size();
        let rdt = self.cfg.reduce_dtype;
        let group = self.shard_group.as_ref();
        let unit = &self.units[ui];
        let mut dense = Vec::new();
        let mut rows = Vec::new();
        let mut kinds = Vec::with_capacity(params.len());
        for (s, p) in unit.params.iter().zip(params.iter_mut()) {
            let row_grads = p.take_row_grads();
            let grad = p.take_grad();
            if !row_grads.is_empty() && grad.is_none() {
                let (ids, r) = crate::rows::concat(row_grads)?;
                rows.push(ids);
                rows.push(r);
                kinds.push(false);
                continue;
            }
            let mut g = match grad {
                Some(g) => g.to_dtype(rdt)?,
                // Every rank must contribute the same layout; no gradient is a zero gradient.
                None => Tensor::zeros(s.layout.global_shape.as_slice(), rdt, &self.device)?,
            };
            // Rows beside a dense gradient: add them in (the rare mixed case stays dense).
            if !row_grads.is_empty() {
                let (ids, r) = crate::rows::concat(row_grads)?;
                let add = crate::rows::dense(&ids, &r, &s.layout.global_shape)?;
                g = (g + add.to_dtype(rdt)?)?;
            }
            // Padded at the end only: chunk r is rank r's rows (then zeros).
            dense.push(padded_flat(&g, n * s.layout.padded_elems())?);
            kinds.push(true);
        }
        let (mut dense_works, mut row_works) = if self.cfg.overlap {
            (
                group.reduce_scatter_many_async(&dense, ReduceOp::Sum)?,
                group.all_gather_many_async(&rows)?,
            )
        } else {
            (
                dense
                    .iter()
                    .map(|f| Ok(Work::done(group.reduce_scatter(f, ReduceOp::Sum)?)))
                    .collect::<Result<Vec<_>>>()?,
                rows.iter()
                    .map(|t| Ok(Work::done(group.all_gather(t)?)))
                    .collect::<Result<Vec<_>>>()?,
            )
        };
        dense_works.reverse();
        row_works.reverse();
        let mut out = Vec::with_capacity(kinds.len());
        for is_dense in kinds {
            let missing = || Error::Sharding("a gradient collective went missing".into());
            out.push(if is_dense {
                GradWork::Dense(dense_works.pop().ok_or_else(missing)?)
            } else {
                let ids = row_works.pop().ok_or_else(missing)?;
                let rows = row_works.pop().ok_or_else(missing)?;
                GradWork::Rows { ids, rows }
            });
        }
        Ok(out)
    }

    /// Folds a finished reduce-scatter into its unit's shard gradients (and, after the last
    /// microbatch, sums them over the HSDP replicas).
    fn finish_reduce(&mut self, p: PendingGrad) -> Result<()> {
        let PendingGrad { ui, works, mb } = p;
        let rdt = self.cfg.reduce_dtype;
        let n_ranks = self.shard_group.size();
        let unit = &mut self.units[ui];
        for (s, work) in unit.params.iter_mut().zip(works) {
            let g = match work {
                GradWork::Dense(work) => work
                    .wait()?
                    .narrow(0, 0, s.layout.local_elems())?
                    .reshape(s.layout.local_shape().as_slice())?
                    .to_dtype(DType::F32)?,
                GradWork::Rows { ids, rows } => {
                    let (ids, rows) = (ids.wait()?, rows.wait()?);
                    crate::rows::summed_rows(
                        &ids,
                        &rows,
                        n_ranks,
                        s.layout.offset(),
                        s.layout.local_rows(),
                    )?
                    .reshape(s.layout.local_shape().as_slice())?
                }
            };
            s.shard.accumulate_grad(&g)?;
        }
        if mb.is_last() {
            if let Some(rep) = &self.replicate_group {
                let works = start_replica_sums(
                    &unit.params,
                    rep.as_ref(),
                    rdt,
                    &self.device,
                    self.cfg.overlap,
                )?;
                self.pending_replica.push(PendingReplica { ui, works });
            }
        }
        Ok(())
    }
}

/// Starts summing the unit's shard gradients over the HSDP replicas (one all-reduce per
/// parameter, in `rdt`; no staging buffer). Asynchronous with `overlap`, so on NCCL the sum
/// runs during the next unit's backward ([`Fsdp::fold_replica_sums`] waits for it).
fn start_replica_sums(
    params: &[ShardedParam],
    group: &dyn ProcessGroup,
    rdt: DType,
    device: &Device,
    overlap: bool,
) -> Result<Vec<Work>> {
    params
        .iter()
        .map(|s| {
            let g = match s.shard.grad() {
                Some(g) => g.to_dtype(rdt)?,
                None => Tensor::zeros(s.layout.local_shape().as_slice(), rdt, device)?,
            };
            if overlap {
                group.all_reduce_async(&g, ReduceOp::Sum)
            } else {
                Ok(Work::done(group.all_reduce(&g, ReduceOp::Sum)?))
            }
        })
        .collect()
}

fn master_of(p: &Param) -> Result<&Tensor> {
    p.master()
        .ok_or_else(|| Error::Sharding(format!("shard `{}` lost its master values", p.name())))
}

/// `t` flattened and zero-padded to `len` elements.
fn padded_flat(t: &Tensor, len: usize) -> Result<Tensor> {
    let flat = t.flatten_all()?;
    let have = flat.elem_count();
    if have == len {
        return Ok(flat);
    }
    if have > len {
        return Err(Error::Sharding(format!(
            "a shard of {have} elements does not fit its {len}-element slot"
        )));
    }
    Ok(Tensor::cat(
        &[flat, Tensor::zeros(len - have, t.dtype(), t.device())?],
        0,
    )?)
}

/// This rank's initial shard of `p`.
fn initial_shard(
    p: &mut Param,
    layout: &ShardLayout,
    init: ShardInit,
    device: &Device,
) -> Result<Tensor> {
    let shape = layout.local_shape();
    match init {
        ShardInit::Seed(seed) => {
            let mut values = vec![0f32; layout.local_elems()];
            p.init()
                .fill(seed, p.name(), layout.flat_offset() as u64, &mut values);
            Ok(Tensor::from_vec(values, shape.as_slice(), device)?)
        }
        ShardInit::Zeros => Ok(Tensor::zeros(shape.as_slice(), DType::F32, device)?),
        ShardInit::TakeMasters => {
            let master = p.master().ok_or_else(|| {
                Error::Sharding(format!(
                    "parameter `{}` has no master values to shard: initialize the model first, or use ShardInit::Seed",
                    p.name()
                ))
            })?;
            if layout.local_rows() == 0 {
                return Ok(Tensor::zeros(shape.as_slice(), DType::F32, device)?);
            }
            // `copy` so the shard does not keep the full tensor's storage alive.
            let rows = master.narrow(0, layout.offset(), layout.local_rows())?;
            Ok(rows.to_dtype(DType::F32)?.to_device(device)?.copy()?)
        }
    }
}

impl BlockHooks for Fsdp {
    fn before_forward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        _mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        let ui = self.unit_index(unit, params)?;
        crate::trace::mark(&self.device, || format!("forward {unit}"))?;
        self.next_pass_prefetched = false;
        // Normally empty here: the previous pass's last unit folded everything in.
        self.finish_pending()?;
        if !(self.units[ui].gathered && params.iter().all(|p| p.has_compute())) {
            self.gather(ui, params)?;
        }
        // The next unit's weights travel while this one computes.
        self.prefetch(ui + 1)?;
        Ok(())
    }

    fn after_forward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        let ui = self.unit_index(unit, params)?;
        // Forward-only passes always reshard: no backward will free the weights.
        if !mb.backward || self.units[ui].reshard_after_forward {
            self.release(ui, params);
        }
        Ok(())
    }

    fn before_backward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        _mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        let ui = self.unit_index(unit, params)?;
        crate::trace::mark(&self.device, || format!("backward {unit}"))?;
        if self.units[ui].backward_reads_params
            && !(self.units[ui].gathered && params.iter().all(|p| p.has_compute()))
        {
            self.gather(ui, params)?;
        }
        if let Some(prev) = ui.checked_sub(1) {
            if self.units[prev].backward_reads_params {
                self.prefetch(prev)?;
            }
        }
        Ok(())
    }

    fn after_backward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        let ui = self.unit_index(unit, params)?;
        let works = self.start_reduce(ui, params)?;
        self.release(ui, params);
        // What ran during this unit's backward is folded in now: the replica sums started one
        // unit ago (HSDP), then the previous unit's reduce-scatter (which starts its replica
        // sum, to run during the next unit's backward).
        self.fold_replica_sums()?;
        self.fold_reduce_scatters()?;
        self.pending_grads.push(PendingGrad { ui, works, mb });
        // Without overlap, and after the last unit of the backward pass, nothing may wait.
        if !self.cfg.overlap || ui == 0 {
            self.finish_pending()?;
        }
        Ok(())
    }
}
