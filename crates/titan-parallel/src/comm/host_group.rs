//! Collectives for the host backends, written once over a [`Transport`].
//!
//! Every collective is a star through the group's rank 0 (the root): members send their
//! contribution up, the root checks that shapes and dtypes agree, computes the result in
//! member order and sends it (or each member's chunk) down. So results are bitwise
//! deterministic and identical on every rank, and one rank can say precisely what went wrong
//! (who is missing, who died, who disagrees) and tell the others. Traffic at the root grows
//! with the group size: fine on loopback and for CPU runs; device backends use rings.
//!
//! Waiting is bounded: the root waits `timeout` for contributions; members wait a little
//! longer for the root, so they normally receive its diagnosis rather than time out themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Shape, Tensor};
use titan_core::rng::mix64;

use crate::comm::mailbox::RecvError;
use crate::comm::payload::{HostData, Payload};
use crate::comm::transport::{Body, Failure, Tag, Transport, PHASE_DOWN, PHASE_P2P, PHASE_UP};
use crate::comm::{Group, ProcessGroup, ReduceOp};
use crate::{Error, Result};

/// Group id of the world ("titan" in ASCII, mixed).
const WORLD_ID: u64 = 0x0074_6974_616e;

/// Per-group counters every member advances identically.
#[derive(Debug, Default)]
struct OpState {
    /// Collectives issued on this group.
    seq: u64,
    /// Splits made from this group.
    splits: u64,
    /// Point-to-point messages sent to / received from each group rank.
    sent: HashMap<usize, u64>,
    received: HashMap<usize, u64>,
}

/// What the root sends down.
enum RootResult {
    /// The same result for every member.
    Same(Payload),
    /// One result per member, in group-rank order.
    PerMember(Vec<Payload>),
}

/// A process group of a host backend.
pub(crate) struct HostGroup {
    transport: Arc<dyn Transport>,
    id: u64,
    name: String,
    /// Global rank of each member.
    members: Vec<usize>,
    /// This process's index in `members`.
    me: usize,
    state: Mutex<OpState>,
}

impl std::fmt::Debug for HostGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} group `{}` (rank {} of {})",
            self.transport.backend(),
            self.name,
            self.me,
            self.members.len()
        )
    }
}

impl HostGroup {
    /// The group of every rank of `transport`'s world.
    pub fn world(transport: Arc<dyn Transport>) -> Group {
        let n = transport.size();
        let me = transport.rank();
        Arc::new(HostGroup {
            transport,
            id: WORLD_ID,
            name: "world".into(),
            members: (0..n).collect(),
            me,
            state: Mutex::new(OpState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_seq(&self) -> u64 {
        let mut s = self.lock();
        s.seq += 1;
        s.seq
    }

    fn next_split(&self) -> u64 {
        let mut s = self.lock();
        s.splits += 1;
        s.splits
    }

    fn child(&self, split_no: u64, part: u64, name: &str, members: Vec<usize>) -> Group {
        let me_global = self.members[self.me];
        let me = members.iter().position(|&g| g == me_global).unwrap_or(0);
        let id = mix64(self.id ^ mix64(split_no ^ mix64(part.wrapping_add(0x5eed))));
        Arc::new(HostGroup {
            transport: self.transport.clone(),
            id,
            name: format!("{name}{members:?}"),
            members,
            me,
            state: Mutex::new(OpState::default()),
        })
    }

    fn size_n(&self) -> usize {
        self.members.len()
    }

    fn tag(&self, seq: u64, phase: u32) -> Tag {
        Tag {
            group: self.id,
            seq,
            phase,
        }
    }

    /// How much longer than the root a member waits, so the root's diagnosis arrives first.
    fn grace(timeout: Duration) -> Duration {
        (timeout / 2).max(Duration::from_millis(100))
    }

    fn peer_died(&self, op: &str, rank: usize, how: String) -> Error {
        Error::PeerDied {
            op: op.to_string(),
            group: self.name.clone(),
            rank,
            how,
        }
    }

    fn invalid(op: &str, detail: String) -> Error {
        Error::InvalidArgument {
            op: op.to_string(),
            detail,
        }
    }

    /// One star-shaped collective: contributions up to the root, `compute` there, results down.
    fn exchange(
        &self,
        op: &str,
        mine: Payload,
        compute: impl FnOnce(&[Payload]) -> std::result::Result<RootResult, Failure>,
    ) -> Result<Payload> {
        let seq = self.next_seq();
        let (up, down) = (self.tag(seq, PHASE_UP), self.tag(seq, PHASE_DOWN));
        let n = self.size_n();
        let timeout = self.transport.timeout();
        let start = Instant::now();
        let mailbox = self.transport.mailbox();

        if n == 1 {
            return match compute(&[mine]).map_err(|f| f.into_error(op, &self.name))? {
                RootResult::Same(p) => Ok(p),
                RootResult::PerMember(v) => v
                    .into_iter()
                    .next()
                    .ok_or_else(|| Self::invalid(op, "no result".into())),
            };
        }

        if self.me != 0 {
            let root = self.members[0];
            if let Err(how) = self.transport.send(root, up, Body::Data(mine)) {
                // The root may have aborted this operation and left before we arrived: its
                // diagnosis (naming the rank actually at fault) beats "the root is gone".
                if let Ok(Body::Abort(f)) = mailbox.recv(root, down, Instant::now()) {
                    return Err(f.into_error(op, &self.name));
                }
                return Err(self.peer_died(op, root, how));
            }
            let deadline = start + timeout + Self::grace(timeout);
            return match mailbox.recv(root, down, deadline) {
                Ok(Body::Data(p)) => Ok(p),
                Ok(Body::Abort(f)) => Err(f.into_error(op, &self.name)),
                Err(RecvError::Timeout) => Err(Error::Timeout {
                    op: op.to_string(),
                    group: self.name.clone(),
                    missing: vec![root],
                    waited_s: start.elapsed().as_secs_f64(),
                }),
                Err(RecvError::Gone(how)) => Err(self.peer_died(op, root, how)),
            };
        }

        // Root: collect in member order, so the reduction order is fixed.
        let deadline = start + timeout;
        let mut parts = Vec::with_capacity(n);
        parts.push(mine);
        let mut failure = None;
        for i in 1..n {
            match mailbox.recv(self.members[i], up, deadline) {
                Ok(Body::Data(p)) => parts.push(p),
                Ok(Body::Abort(f)) => {
                    failure = Some(f);
                    break;
                }
                Err(RecvError::Timeout) => {
                    let missing = (i..n)
                        .map(|j| self.members[j])
                        .filter(|&g| !mailbox.has(g, up))
                        .collect::<Vec<_>>();
                    failure = Some(Failure::Timeout {
                        missing,
                        waited_ms: start.elapsed().as_millis() as u64,
                    });
                    break;
                }
                Err(RecvError::Gone(how)) => {
                    failure = Some(Failure::PeerGone {
                        rank: self.members[i],
                        how,
                    });
                    break;
                }
            }
        }
        let result = match failure {
            Some(f) => Err(f),
            None => compute(&parts),
        };
        match result {
            Err(f) => {
                for &g in &self.members[1..] {
                    // Best effort: a member that is gone needs no news.
                    let _ = self.transport.send(g, down, Body::Abort(f.clone()));
                }
                Err(f.into_error(op, &self.name))
            }
            Ok(RootResult::Same(p)) => {
                let mut first_err = None;
                for &g in &self.members[1..] {
                    if let Err(how) = self.transport.send(g, down, Body::Data(p.clone())) {
                        first_err.get_or_insert(self.peer_died(op, g, how));
                    }
                }
                first_err.map_or(Ok(p), Err)
            }
            Ok(RootResult::PerMember(results)) => {
                let mut it = results.into_iter();
                let own = it
                    .next()
                    .ok_or_else(|| Self::invalid(op, "no result for the root".into()))?;
                let mut first_err = None;
                for (&g, p) in self.members[1..].iter().zip(it) {
                    if let Err(how) = self.transport.send(g, down, Body::Data(p)) {
                        first_err.get_or_insert(self.peer_died(op, g, how));
                    }
                }
                first_err.map_or(Ok(own), Err)
            }
        }
    }

    /// Checks that every contribution has the root's dtype and shape.
    fn check_uniform(&self, parts: &[Payload]) -> std::result::Result<(), Failure> {
        let first = &parts[0];
        for (i, p) in parts.iter().enumerate().skip(1) {
            if p.shape != first.shape || p.dtype() != first.dtype() {
                return Err(Failure::Mismatch {
                    detail: format!(
                        "global rank {} passed {} but global rank {} passed {}",
                        self.members[0],
                        first.describe(),
                        self.members[i],
                        p.describe()
                    ),
                });
            }
        }
        Ok(())
    }

    fn check_reduce_op(op_name: &str, t: &Tensor, op: ReduceOp) -> Result<()> {
        if op == ReduceOp::Avg && !t.dtype().is_float() {
            return Err(Self::invalid(
                op_name,
                format!("ReduceOp::Avg needs a float tensor, got {:?}", t.dtype()),
            ));
        }
        Ok(())
    }

    fn check_has_dim0(op: &str, t: &Tensor) -> Result<usize> {
        t.dims().first().copied().ok_or_else(|| {
            Self::invalid(
                op,
                "a 0-dimensional tensor has no dim 0: reshape it to [1] first".into(),
            )
        })
    }

    fn check_rank(&self, op: &str, what: &str, r: usize) -> Result<()> {
        super::checks::rank(&self.name, self.size_n(), op, what, r)
    }

    fn mismatch(&self, op: &str, detail: String) -> Error {
        Error::Mismatch {
            op: op.to_string(),
            group: self.name.clone(),
            detail,
        }
    }
}

fn reduce_failure(detail: String) -> Failure {
    Failure::Mismatch { detail }
}

impl ProcessGroup for HostGroup {
    fn rank(&self) -> usize {
        self.me
    }
    fn size(&self) -> usize {
        self.size_n()
    }
    fn global_ranks(&self) -> &[usize] {
        &self.members
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn backend(&self) -> &'static str {
        self.transport.backend()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        const OP: &str = "all_reduce";
        Self::check_reduce_op(OP, t, op)?;
        let mine = Payload::from_tensor(t, OP)?;
        let out = self.exchange(OP, mine, |parts| {
            self.check_uniform(parts)?;
            let data: Vec<&HostData> = parts.iter().map(|p| &p.data).collect();
            let reduced =
                HostData::reduce(&data, op, 0, parts[0].data.len()).map_err(reduce_failure)?;
            Ok(RootResult::Same(Payload {
                shape: parts[0].shape.clone(),
                data: reduced,
            }))
        })?;
        out.into_tensor(t.device())
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        const OP: &str = "all_gather";
        Self::check_has_dim0(OP, t)?;
        let mine = Payload::from_tensor(t, OP)?;
        let n = self.size_n();
        let out = self.exchange(OP, mine, |parts| {
            self.check_uniform(parts)?;
            let data: Vec<&HostData> = parts.iter().map(|p| &p.data).collect();
            let mut shape = parts[0].shape.clone();
            shape[0] *= n;
            Ok(RootResult::Same(Payload {
                shape,
                data: HostData::concat(&data).map_err(reduce_failure)?,
            }))
        })?;
        out.into_tensor(t.device())
    }

    fn reduce_scatter(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        const OP: &str = "reduce_scatter";
        Self::check_reduce_op(OP, t, op)?;
        let d0 = Self::check_has_dim0(OP, t)?;
        let n = self.size_n();
        if d0 % n != 0 {
            return Err(Self::invalid(
                OP,
                format!("dim 0 has size {d0}, not a multiple of the group size {n}: pad the input to a multiple of {n} rows"),
            ));
        }
        let mine = Payload::from_tensor(t, OP)?;
        let out = self.exchange(OP, mine, |parts| {
            self.check_uniform(parts)?;
            let data: Vec<&HostData> = parts.iter().map(|p| &p.data).collect();
            let chunk = parts[0].data.len() / n;
            let mut shape = parts[0].shape.clone();
            shape[0] /= n;
            let results = (0..n)
                .map(|i| {
                    HostData::reduce(&data, op, i * chunk, chunk).map(|d| Payload {
                        shape: shape.clone(),
                        data: d,
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(reduce_failure)?;
            Ok(RootResult::PerMember(results))
        })?;
        out.into_tensor(t.device())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        const OP: &str = "broadcast";
        self.check_rank(OP, "root", root)?;
        let seq = self.next_seq();
        let down = self.tag(seq, PHASE_DOWN);
        if self.size_n() == 1 {
            return Ok(t.clone());
        }
        if self.me == root {
            let mine = Payload::from_tensor(t, OP)?;
            let mut first_err = None;
            for (i, &g) in self.members.iter().enumerate() {
                if i != root {
                    if let Err(how) = self.transport.send(g, down, Body::Data(mine.clone())) {
                        first_err.get_or_insert(self.peer_died(OP, g, how));
                    }
                }
            }
            return first_err.map_or(Ok(t.clone()), Err);
        }
        let src = self.members[root];
        let start = Instant::now();
        let timeout = self.transport.timeout();
        let p = match self.transport.mailbox().recv(src, down, start + timeout) {
            Ok(Body::Data(p)) => p,
            Ok(Body::Abort(f)) => return Err(f.into_error(OP, &self.name)),
            Err(RecvError::Timeout) => {
                return Err(Error::Timeout {
                    op: OP.into(),
                    group: self.name.clone(),
                    missing: vec![src],
                    waited_s: start.elapsed().as_secs_f64(),
                })
            }
            Err(RecvError::Gone(how)) => return Err(self.peer_died(OP, src, how)),
        };
        if p.shape != t.dims() || p.dtype() != t.dtype() {
            return Err(self.mismatch(
                OP,
                format!(
                    "root (global rank {src}) sent {} but global rank {} expects {:?}{:?}",
                    p.describe(),
                    self.members[self.me],
                    t.dtype(),
                    t.dims()
                ),
            ));
        }
        p.into_tensor(t.device())
    }

    fn send(&self, t: &Tensor, dst: usize) -> Result<()> {
        const OP: &str = "send";
        self.check_rank(OP, "destination", dst)?;
        if dst == self.me {
            return Err(Self::invalid(OP, "a rank cannot send to itself".into()));
        }
        let payload = Payload::from_tensor(t, OP)?;
        let seq = {
            let mut s = self.lock();
            let c = s.sent.entry(dst).or_insert(0);
            *c += 1;
            *c
        };
        let g = self.members[dst];
        self.transport
            .send(g, self.tag(seq, PHASE_P2P), Body::Data(payload))
            .map_err(|how| self.peer_died(OP, g, how))
    }

    fn recv(&self, shape: &Shape, dtype: DType, src: usize, device: &Device) -> Result<Tensor> {
        const OP: &str = "recv";
        self.check_rank(OP, "source", src)?;
        if src == self.me {
            return Err(Self::invalid(
                OP,
                "a rank cannot receive from itself".into(),
            ));
        }
        let seq = {
            let mut s = self.lock();
            let c = s.received.entry(src).or_insert(0);
            *c += 1;
            *c
        };
        let g = self.members[src];
        let start = Instant::now();
        let timeout = self.transport.timeout();
        let p = match self
            .transport
            .mailbox()
            .recv(g, self.tag(seq, PHASE_P2P), start + timeout)
        {
            Ok(Body::Data(p)) => p,
            Ok(Body::Abort(f)) => return Err(f.into_error(OP, &self.name)),
            Err(RecvError::Timeout) => {
                return Err(Error::Timeout {
                    op: OP.into(),
                    group: self.name.clone(),
                    missing: vec![g],
                    waited_s: start.elapsed().as_secs_f64(),
                })
            }
            Err(RecvError::Gone(how)) => return Err(self.peer_died(OP, g, how)),
        };
        if p.shape != shape.dims() || p.dtype() != dtype {
            return Err(self.mismatch(
                OP,
                format!(
                    "global rank {g} sent {} but the receiver expects {dtype:?}{:?}",
                    p.describe(),
                    shape.dims()
                ),
            ));
        }
        p.into_tensor(device)
    }

    fn barrier(&self) -> Result<()> {
        let empty = Payload {
            shape: vec![0],
            data: HostData::F32(Vec::new()),
        };
        self.exchange("barrier", empty.clone(), |_| Ok(RootResult::Same(empty)))?;
        Ok(())
    }

    fn split(&self, color: Option<u32>, key: u32, name: &str) -> Result<Option<Group>> {
        const OP: &str = "split";
        let mine = Payload {
            shape: vec![2],
            data: HostData::I64(vec![color.map_or(-1, i64::from), i64::from(key)]),
        };
        let all = self.exchange(OP, mine, |parts| {
            self.check_uniform(parts)?;
            let data: Vec<&HostData> = parts.iter().map(|p| &p.data).collect();
            Ok(RootResult::Same(Payload {
                shape: vec![2 * parts.len()],
                data: HostData::concat(&data).map_err(reduce_failure)?,
            }))
        })?;
        let split_no = self.next_split();
        let HostData::I64(v) = all.data else {
            return Err(self.mismatch(OP, "split colors arrived with a non-i64 dtype".into()));
        };
        let Some(color) = color else { return Ok(None) };
        let mut same: Vec<(i64, usize)> = v
            .chunks_exact(2)
            .enumerate()
            .filter(|(_, ck)| ck[0] == i64::from(color))
            .map(|(i, ck)| (ck[1], i))
            .collect();
        same.sort();
        let members = same.into_iter().map(|(_, i)| self.members[i]).collect();
        Ok(Some(self.child(split_no, u64::from(color), name, members)))
    }

    fn split_by_ranks(&self, parts: &[Vec<usize>], name: &str) -> Result<Option<Group>> {
        const OP: &str = "split_by_ranks";
        super::checks::parts(&self.name, self.size_n(), OP, parts)?;
        let split_no = self.next_split();
        let Some(idx) = parts.iter().position(|p| p.contains(&self.me)) else {
            return Ok(None);
        };
        let members = parts[idx].iter().map(|&r| self.members[r]).collect();
        Ok(Some(self.child(split_no, idx as u64, name, members)))
    }

    fn timeout(&self) -> Duration {
        self.transport.timeout()
    }
    fn set_timeout(&self, timeout: Duration) {
        self.transport.set_timeout(timeout);
    }
}
