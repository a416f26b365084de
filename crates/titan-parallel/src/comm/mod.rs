//! Process groups: the collectives training needs, on candle tensors.
//!
//! [`ProcessGroup`] is the one interface strategies (FSDP, DDP, meshes) talk to. Backends:
//! - in-process threads ([`local_world`], [`run_local`]): ranks are threads sharing mailboxes,
//!   for tests and CI;
//! - TCP ([`crate::init::init_process_group`]): one process per rank over sockets, for
//!   `--nproc-per-node N` on a CPU machine and for bootstrap;
//! - NCCL (feature `nccl`, [`crate::init::init_process_group_on`] with a CUDA device): device
//!   collectives on a communication stream, ordered against candle's stream with CUDA events.
//!
//! Both host backends run the same star-shaped algorithms (see [`host_group`]): results are
//! bitwise deterministic and identical on every rank; every wait is bounded by the timeout.
//!
//! The `*_async` collectives return a [`Work`] whose [`Work::wait`] gives the result: on NCCL
//! the collective runs on the communication stream while the caller queues more compute; the
//! host backends complete at once (their default implementations).

pub(crate) mod host_group;
pub(crate) mod local;
pub(crate) mod mailbox;
#[cfg(feature = "nccl")]
pub(crate) mod nccl;
pub(crate) mod payload;
pub(crate) mod tcp;
pub(crate) mod transport;

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Shape, Tensor};

use crate::Result;

pub use local::{local_world, run_local};

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum (in group-rank order on the host backends).
    Sum,
    /// Sum divided by the group size (floats only).
    Avg,
    /// Element-wise maximum (NaN wins).
    Max,
    /// Element-wise minimum (NaN wins).
    Min,
}

/// A shared handle to a process group.
pub type Group = Arc<dyn ProcessGroup>;

/// A collective in flight on a device backend, finished by [`PendingWork::wait`].
pub trait PendingWork: Send + std::fmt::Debug {
    /// Orders later work on the caller's stream after the collective and returns its result.
    fn wait(self: Box<Self>) -> Result<Tensor>;
}

/// The result of an `*_async` collective: [`Work::wait`] gives the tensor. Until then the
/// collective may still be running, so its input must not be modified. Dropping a `Work`
/// without waiting is safe (its buffers are released in stream order) but loses the result.
#[derive(Debug)]
pub struct Work(WorkState);

#[derive(Debug)]
enum WorkState {
    Done(Tensor),
    Pending(Box<dyn PendingWork>),
}

impl Work {
    /// A collective that has already completed.
    pub fn done(t: Tensor) -> Self {
        Self(WorkState::Done(t))
    }
    /// A collective still running.
    pub fn pending(p: Box<dyn PendingWork>) -> Self {
        Self(WorkState::Pending(p))
    }
    /// Whether the collective may still be running (always false on the host backends).
    pub fn is_pending(&self) -> bool {
        matches!(self.0, WorkState::Pending(_))
    }
    /// The result. On a device backend this orders the caller's stream after the collective;
    /// it does not block the host.
    pub fn wait(self) -> Result<Tensor> {
        match self.0 {
            WorkState::Done(t) => Ok(t),
            WorkState::Pending(p) => p.wait(),
        }
    }
}

/// A set of ranks that run collectives together.
///
/// Every member must call the same collectives, with the same shapes and dtypes, in the same
/// order (SPMD); a process may use a group from one thread at a time. Ranks in arguments
/// (`root`, `dst`, `src`) are ranks *within the group*; ranks in errors are global ranks, the
/// numbers in the logs. Every wait is bounded by [`ProcessGroup::timeout`]: a rank that never
/// arrives gives [`crate::Error::Timeout`] naming it, a rank that exits gives
/// [`crate::Error::PeerDied`].
pub trait ProcessGroup: Send + Sync + std::fmt::Debug {
    /// This process's rank within the group.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn size(&self) -> usize;
    /// The global rank of every member, indexed by group rank.
    fn global_ranks(&self) -> &[usize];
    /// A name for messages, e.g. `dp_shard[0, 1]`.
    fn name(&self) -> &str;
    /// The backend (`threads`, `tcp`, `nccl`).
    fn backend(&self) -> &'static str;
    /// The device scalar helpers should put their tensors on.
    fn device(&self) -> Device;

    /// Element-wise reduction; every rank gets the same result.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor>;
    /// Concatenation of every rank's tensor along dim 0, in group-rank order. Shapes must be
    /// equal on every rank (pad uneven shards first).
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;
    /// Reduction of every rank's tensor, then chunk `rank` of `size` equal chunks along dim 0.
    fn reduce_scatter(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor>;
    /// Rank `root`'s tensor on every rank (others pass a tensor of the same shape and dtype).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Point-to-point send to group rank `dst` (matched by the `dst`'s `recv` in order).
    fn send(&self, t: &Tensor, dst: usize) -> Result<()>;
    /// Receive the next tensor group rank `src` sent to this rank.
    fn recv(&self, shape: &Shape, dtype: DType, src: usize, device: &Device) -> Result<Tensor>;
    /// Returns once every member has called it.
    fn barrier(&self) -> Result<()>;

    /// [`ProcessGroup::all_reduce`] that may still be running when it returns.
    fn all_reduce_async(&self, t: &Tensor, op: ReduceOp) -> Result<Work> {
        self.all_reduce(t, op).map(Work::done)
    }
    /// [`ProcessGroup::all_gather`] that may still be running when it returns (FSDP's
    /// prefetch of the next unit).
    fn all_gather_async(&self, t: &Tensor) -> Result<Work> {
        self.all_gather(t).map(Work::done)
    }
    /// [`ProcessGroup::reduce_scatter`] that may still be running when it returns (FSDP's
    /// gradient reduction overlapping the next unit's backward).
    fn reduce_scatter_async(&self, t: &Tensor, op: ReduceOp) -> Result<Work> {
        self.reduce_scatter(t, op).map(Work::done)
    }
    /// Several [`ProcessGroup::all_gather_async`]s issued together, results in order. Device
    /// backends fuse them (NCCL: one group, one kernel launch and one handshake with the peers
    /// for all of them; FSDP gathers a unit's parameters this way).
    fn all_gather_many_async(&self, ts: &[Tensor]) -> Result<Vec<Work>> {
        ts.iter().map(|t| self.all_gather_async(t)).collect()
    }
    /// Several [`ProcessGroup::reduce_scatter_async`]s issued together, results in order (see
    /// [`ProcessGroup::all_gather_many_async`]).
    fn reduce_scatter_many_async(&self, ts: &[Tensor], op: ReduceOp) -> Result<Vec<Work>> {
        ts.iter()
            .map(|t| self.reduce_scatter_async(t, op))
            .collect()
    }
    /// All-reduces each of `ts` *in its own storage*, issued together (NCCL: one group), and
    /// returns the pending works (each yields its tensor, reduced, once waited). Until a work
    /// is waited nothing may read or write its tensor. `None` where the backend cannot write
    /// in place (the host backends, or a tensor it cannot address in place): the caller then
    /// uses [`ProcessGroup::all_reduce`]. DDP reduces gradients this way: no bucket copies,
    /// and the result is already where the optimizer reads it, so nothing has to be folded
    /// back into parameters the next unit's hook cannot reach.
    fn all_reduce_in_place_many_async(
        &self,
        ts: &[Tensor],
        op: ReduceOp,
    ) -> Result<Option<Vec<Work>>> {
        let _ = (ts, op);
        Ok(None)
    }

    /// MPI-style split, collective over this group: members with the same `color` form a new
    /// group ordered by (`key`, old rank); `None` joins no group (and gets `None`).
    fn split(&self, color: Option<u32>, key: u32, name: &str) -> Result<Option<Group>>;
    /// Split by an explicit partition of this group's ranks, known to every member (no
    /// traffic). Every member must call it with the same partition; a rank listed in no part
    /// gets `None`. Within a part, the order of the list is the new group's rank order.
    fn split_by_ranks(&self, parts: &[Vec<usize>], name: &str) -> Result<Option<Group>>;

    /// How long a collective waits for the other ranks.
    fn timeout(&self) -> Duration;
    /// Changes the timeout of this process's communicator: every group split from the same
    /// world (torchtitan switches from `comm.init_timeout_seconds` to
    /// `comm.train_timeout_seconds` after the first step).
    fn set_timeout(&self, timeout: Duration);

    /// This process's global rank.
    fn global_rank(&self) -> usize {
        self.global_ranks()[self.rank()]
    }
}

/// Argument checks every backend applies the same way.
pub(crate) mod checks {
    use std::collections::HashSet;

    use crate::{Error, Result};

    /// `r` (named `what` in the message) must be a rank of `group`, which has `size` ranks.
    pub(crate) fn rank(group: &str, size: usize, op: &str, what: &str, r: usize) -> Result<()> {
        if r >= size {
            return Err(Error::InvalidArgument {
                op: op.to_string(),
                detail: format!("{what} {r} is not a rank of group `{group}` (size {size})"),
            });
        }
        Ok(())
    }

    /// The parts of a `split_by_ranks`: ranks of `group`, none listed twice.
    pub(crate) fn parts(group: &str, size: usize, op: &str, parts: &[Vec<usize>]) -> Result<()> {
        let mut seen = HashSet::new();
        for part in parts {
            for &r in part {
                rank(group, size, op, "rank", r)?;
                if !seen.insert(r) {
                    return Err(Error::InvalidArgument {
                        op: op.to_string(),
                        detail: format!("rank {r} is listed in more than one part of {parts:?}"),
                    });
                }
            }
        }
        Ok(())
    }
}
