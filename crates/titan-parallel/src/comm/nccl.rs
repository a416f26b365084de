//! The NCCL backend (feature `nccl`): collectives on CUDA tensors through cudarc's NCCL
//! bindings, on a communication stream of their own.
//!
//! **Streams and lifetimes.** candle runs every kernel on one stream per device (the compute
//! stream) with cudarc's event tracking off, so nothing orders work across streams but this
//! module. Each world has one communication stream, forked from the compute stream and shared
//! by all of its groups: NCCL calls run in the order the rank issues them, the same order on
//! every rank (SPMD), so communicators cannot deadlock each other. A collective
//! 1. allocates its output on the compute stream and records an event there (`ready`: the
//!    input's producers and the output's allocation are done when it fires);
//! 2. makes the communication stream wait for `ready`, enqueues the NCCL call and records
//!    `done` on the communication stream;
//! 3. returns an [`NcclWork`] holding the input and the output. [`PendingWork::wait`] makes the
//!    compute stream wait for `done` and only then lets the input go: candle frees memory with
//!    `cuMemFreeAsync` on the compute stream, so a free enqueued after that wait cannot hand
//!    memory NCCL still reads to a new tensor. Dropping a work unwaited does the same wait.
//!
//! The host never blocks in a collective (only [`ProcessGroup::barrier`] and teardown do):
//! the synchronous collectives are the asynchronous ones waited at once (two events each).
//! Work must be waited on the thread that issued it (candle's compute stream is per thread).
//! `TITAN_NCCL_STREAM=compute` enqueues NCCL on the compute stream itself instead: no overlap,
//! no cross-stream ordering to get wrong (a fallback for diagnosis).
//!
//! **Failures.** NCCL cannot time out or name a missing rank by itself. Communicator creation
//! is guarded by the TCP store: every member announces itself and waits for the others with the
//! group's timeout, naming who did not come, before the blocking `ncclCommInitRank`. During
//! training a watchdog thread polls every collective's `done` event and each communicator's
//! asynchronous error. A collective still running after the timeout, or an NCCL error, aborts
//! every communicator (kernels waiting on a dead peer then return) and fails every later call
//! with [`Error::Timeout`] or [`Error::Nccl`]. The culprit is named from progress counters each
//! watchdog publishes in the store (how many collectives this rank issued on each
//! communicator): the members that never issued the stuck collective. A process that does not
//! notice the failure within 30 s (stuck elsewhere) is ended with status 1 by the
//! watchdog, so the launcher tears the job down instead of hanging.
//! `TITAN_NCCL_WATCHDOG=0` turns the watchdog off.

mod buffers;
mod runtime;
mod watchdog;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::{result as nr, sys as ns};
use candle_core::{DType, Device, Shape, Tensor};

use self::buffers::{address, cuda_of, nccl_dtype, nccl_op, output, NcclWork};
use self::runtime::{driver_err, error_text, load_library, prepare_environment, RawComm, Runtime};
use self::watchdog::{lock, watchdog, Watch, Watched};
use crate::comm::{Group, PendingWork, ProcessGroup, ReduceOp, Work};
use crate::env::DistEnv;
use crate::store::{StoreClient, StoreServer};
use crate::{Error, Result};

/// The world group over NCCL on `device`, created from the rendezvous' store.
pub(crate) fn world(
    env: &DistEnv,
    store: StoreClient,
    server: Option<Arc<StoreServer>>,
    device: &Device,
    timeout: Duration,
) -> Result<Group> {
    const OP: &str = "initializing the NCCL process group";
    let cuda = match device {
        Device::Cuda(d) => d.clone(),
        other => {
            return Err(Error::InvalidArgument {
                op: OP.into(),
                detail: format!("NCCL needs a CUDA device, got {other:?}"),
            })
        }
    };
    prepare_environment();
    let version = load_library()?;
    let compute = cuda.cuda_stream();
    let ctx = compute.context().clone();
    ctx.bind_to_thread()
        .map_err(|e| driver_err(OP, "world", "binding the CUDA context", e))?;
    let priority = comm_stream_priority()?;
    let comm_stream = comm_stream(&compute, priority)?;
    let watch = Arc::new(Watch {
        ctx: ctx.clone(),
        timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
        queue: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        observed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        comms: Mutex::new(Vec::new()),
        watching: AtomicBool::new(false),
    });
    let watchdog = if std::env::var("TITAN_NCCL_WATCHDOG").as_deref() == Ok("0") {
        tracing::warn!(
            "TITAN_NCCL_WATCHDOG=0: NCCL collectives are not timed; a lost peer hangs the job"
        );
        None
    } else {
        // Its own store connection: the training thread may hold the other one in a wait.
        let store = StoreClient::connect(&env.master_addr, env.master_port, timeout).ok();
        let w = watch.clone();
        let me = env.rank;
        watch.watching.store(true, Ordering::SeqCst);
        Some(
            std::thread::Builder::new()
                .name("titan-nccl-watchdog".into())
                .spawn(move || {
                    watchdog(w.clone(), store, me);
                    w.watching.store(false, Ordering::SeqCst);
                    lock(&w.queue).clear();
                })
                .map_err(|e| Error::io("spawning the NCCL watchdog thread", e))?,
        )
    };
    let on_compute = match std::env::var("TITAN_NCCL_STREAM").as_deref() {
        Err(_) | Ok("") | Ok("comm") => false,
        Ok("compute") => true,
        Ok(other) => {
            return Err(Error::Env {
                var: "TITAN_NCCL_STREAM".into(),
                value: other.into(),
                reason: "expected `comm` (default: a stream of its own) or `compute`".into(),
            })
        }
    };
    tracing::info!(
        rank = env.rank,
        gpu = ctx.ordinal(),
        stream = if on_compute { "compute" } else { "comm" },
        priority = priority.name(),
        nccl = %format!("{}.{}.{}", version / 10000, (version / 100) % 100, version % 100),
        nvls = %std::env::var("NCCL_NVLS_ENABLE").unwrap_or_default(),
        "NCCL backend"
    );
    let rt = Arc::new(Runtime {
        device: device.clone(),
        ctx,
        comm_stream,
        on_compute,
        store,
        _server: server,
        rank: env.rank,
        world_size: env.world_size,
        comms: Mutex::new(HashMap::new()),
        issue: Mutex::new(()),
        watch,
        watchdog: Mutex::new(watchdog),
    });
    let members: Vec<usize> = (0..env.world_size).collect();
    let comm = rt.communicator("world", "world", &members, env.rank)?;
    Ok(Arc::new(NcclGroup::new(
        rt,
        comm,
        "world".into(),
        "world".into(),
        members,
        env.rank,
    )))
}

/// A process group over one NCCL communicator (none for a group of one).
pub(crate) struct NcclGroup {
    rt: Arc<Runtime>,
    comm: Option<Arc<RawComm>>,
    name: String,
    /// Store key prefix, identical on every member.
    key: String,
    members: Vec<usize>,
    me: usize,
    splits: AtomicU64,
    barriers: AtomicU64,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nccl group `{}` (rank {} of {})",
            self.name,
            self.me,
            self.members.len()
        )
    }
}

/// A prepared collective: its contiguous input and fresh output, with their addresses.
struct Call {
    op: &'static str,
    input: Tensor,
    src: u64,
    output: Tensor,
    dst: u64,
    compute: Arc<CudaStream>,
}

impl NcclGroup {
    fn new(
        rt: Arc<Runtime>,
        comm: Option<Arc<RawComm>>,
        name: String,
        key: String,
        members: Vec<usize>,
        me: usize,
    ) -> Self {
        Self {
            rt,
            comm,
            name,
            key,
            members,
            me,
            splits: AtomicU64::new(0),
            barriers: AtomicU64::new(0),
        }
    }

    fn invalid(op: &str, detail: String) -> Error {
        Error::InvalidArgument {
            op: op.to_string(),
            detail,
        }
    }

    fn check_rank(&self, op: &str, what: &str, r: usize) -> Result<()> {
        super::checks::rank(&self.name, self.members.len(), op, what, r)
    }

    fn check_reduce_op(op: &str, dtype: DType, r: ReduceOp) -> Result<()> {
        if r == ReduceOp::Avg && !dtype.is_float() {
            return Err(Self::invalid(
                op,
                format!("ReduceOp::Avg needs a float tensor, got {dtype:?}"),
            ));
        }
        Ok(())
    }

    fn dim0(op: &str, t: &Tensor) -> Result<usize> {
        t.dims().first().copied().ok_or_else(|| {
            Self::invalid(
                op,
                "a 0-dimensional tensor has no dim 0: reshape it to [1] first".into(),
            )
        })
    }

    /// The contiguous input, its address, and a fresh output of `out_shape`, all on the
    /// input's device.
    fn prepare(&self, op: &'static str, t: &Tensor, out_shape: Shape) -> Result<Call> {
        self.rt.watch.check()?;
        let dev = cuda_of(op, t)?;
        let input = t.contiguous()?;
        let compute = dev.cuda_stream();
        let src = address(&input, &compute)?;
        let (output, dst) = output(&dev, out_shape, t.dtype())?;
        Ok(Call {
            op,
            input,
            src,
            output,
            dst,
            compute,
        })
    }

    /// Queues `nccl` on the communication stream after the compute stream's current work and
    /// returns the pending work (see the module docs).
    fn launch(
        &self,
        op: &'static str,
        compute: Arc<CudaStream>,
        keep: Vec<Tensor>,
        output: Option<Tensor>,
        nccl: impl FnOnce(ns::ncclComm_t, ns::cudaStream_t) -> std::result::Result<(), nr::NcclError>,
    ) -> Result<NcclWork> {
        let mut works = self.launch_many(op, compute, vec![(keep, output)], nccl)?;
        Ok(works.pop().expect("one item in, one work out"))
    }

    /// [`Self::launch`] for several buffers queued by one `nccl` call (an NCCL group): one
    /// work per item, all finished by the same event.
    fn launch_many(
        &self,
        op: &'static str,
        compute: Arc<CudaStream>,
        items: Vec<(Vec<Tensor>, Option<Tensor>)>,
        nccl: impl FnOnce(ns::ncclComm_t, ns::cudaStream_t) -> std::result::Result<(), nr::NcclError>,
    ) -> Result<Vec<NcclWork>> {
        self.rt.watch.check()?;
        let comm = self.comm.as_ref().ok_or_else(|| {
            Self::invalid(op, format!("group `{}` has no communicator", self.name))
        })?;
        let rt = &self.rt;
        let _serial = lock(&rt.issue);
        let cuda = |what: &str, e: candle_core::cuda_backend::cudarc::driver::DriverError| {
            driver_err(op, &self.name, what, e)
        };
        rt.ctx
            .bind_to_thread()
            .map_err(|e| cuda("binding the CUDA context", e))?;
        let bytes = items
            .iter()
            .filter_map(|(keep, out)| keep.first().or(out.as_ref()))
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        let traced = crate::trace::issue(op, &self.name, items.len(), bytes, &compute)?;
        let stream = if rt.on_compute {
            compute.clone()
        } else {
            let ready = rt
                .ctx
                .new_event(None)
                .map_err(|e| cuda("creating an event", e))?;
            ready
                .record(&compute)
                .map_err(|e| cuda("recording on the compute stream", e))?;
            rt.comm_stream
                .wait(&ready)
                .map_err(|e| cuda("ordering the communication stream", e))?;
            rt.comm_stream.clone()
        };
        let call = || {
            nccl(comm.handle, stream.cu_stream() as ns::cudaStream_t).map_err(|e| Error::Nccl {
                op: op.into(),
                group: self.name.clone(),
                detail: error_text(e.0, Some(comm.handle)),
            })
        };
        let trace = match traced {
            Some(t) => t.around(&stream, call)?,
            None => {
                call()?;
                None
            }
        };
        let seq = comm.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let done = match stream.record_event(None) {
            Ok(ev) => Arc::new(ev),
            Err(e) => {
                // NCCL has the buffers: they may go only once the stream is idle, else never.
                if stream.synchronize().is_err() {
                    for (keep, output) in items {
                        keep.into_iter().chain(output).for_each(std::mem::forget);
                    }
                }
                return Err(cuda("recording on the communication stream", e));
            }
        };
        rt.watch.follow(Watched {
            done: done.clone(),
            issued_at: Instant::now(),
            comm: comm.clone(),
            seq,
            op,
            group: self.name.clone(),
        });
        Ok(items
            .into_iter()
            .map(|(keep, output)| NcclWork {
                op,
                group: self.name.clone(),
                compute: compute.clone(),
                done: done.clone(),
                keep,
                output,
                watch: rt.watch.clone(),
                trace: trace.clone(),
                // On the compute stream, stream order alone keeps later work and frees after it.
                fenced: rt.on_compute,
            })
            .collect())
    }

    /// Runs `each` for every item inside one NCCL group (one kernel launch for all), closing
    /// the group even when an item fails.
    fn grouped(
        n: usize,
        mut each: impl FnMut(usize) -> std::result::Result<(), nr::NcclError>,
    ) -> std::result::Result<(), nr::NcclError> {
        nr::group_start()?;
        let mut first_err = None;
        for i in 0..n {
            if let Err(e) = each(i) {
                first_err = Some(e);
                break;
            }
        }
        let end = nr::group_end();
        match first_err {
            Some(e) => Err(e),
            None => end.map(|_| ()),
        }
    }

    /// All-gathers of several tensors in one NCCL group (one kernel launch; a single
    /// all-gather is a group of one).
    fn all_gather_many_work(&self, ts: &[Tensor]) -> Result<Vec<NcclWork>> {
        const OP: &str = "all_gather";
        let mut args = Vec::with_capacity(ts.len());
        let mut items = Vec::with_capacity(ts.len());
        let mut compute = None;
        for t in ts {
            let dt = nccl_dtype(OP, t.dtype())?;
            let d0 = Self::dim0(OP, t)?;
            let mut dims = t.dims().to_vec();
            dims[0] = d0 * self.members.len();
            let c = self.prepare(OP, t, Shape::from(dims))?;
            args.push((c.src, c.dst, c.input.elem_count(), dt));
            compute = Some(c.compute);
            items.push((vec![c.input], Some(c.output)));
        }
        let Some(compute) = compute else {
            return Ok(Vec::new());
        };
        self.launch_many(OP, compute, items, |comm, s| {
            Self::grouped(args.len(), |i| {
                let (src, dst, count, dt) = args[i];
                // SAFETY: `src` holds `count` elements, `dst` `count * size`; the work keeps
                // both alive until the compute stream has waited for the collective.
                unsafe {
                    nr::all_gather(src as *const c_void, dst as *mut c_void, count, dt, comm, s)
                }
                .map(|_| ())
            })
        })
    }

    /// In-place all-reduces of several tensors in one NCCL group; `None` if one of them is
    /// not a contiguous CUDA tensor NCCL can address in place.
    fn all_reduce_in_place_many_work(
        &self,
        ts: &[Tensor],
        op: ReduceOp,
    ) -> Result<Option<Vec<NcclWork>>> {
        const OP: &str = "all_reduce";
        self.rt.watch.check()?;
        let mut args = Vec::with_capacity(ts.len());
        let mut items = Vec::with_capacity(ts.len());
        let mut compute = None;
        for t in ts {
            if !t.is_contiguous() || !t.device().is_cuda() {
                return Ok(None);
            }
            let dt = nccl_dtype(OP, t.dtype())?;
            Self::check_reduce_op(OP, t.dtype(), op)?;
            let stream = cuda_of(OP, t)?.cuda_stream();
            let at = address(t, &stream)?;
            args.push((at, t.elem_count(), dt));
            compute = Some(stream);
            // The output is the tensor itself: the work keeps it alive until waited.
            items.push((Vec::new(), Some(t.clone())));
        }
        let Some(compute) = compute else {
            return Ok(Some(Vec::new()));
        };
        let red = nccl_op(op);
        let works = self.launch_many(OP, compute, items, |comm, s| {
            Self::grouped(args.len(), |i| {
                let (at, count, dt) = args[i];
                // SAFETY: `at` addresses `count` elements of a tensor the work keeps alive
                // until the compute stream has waited for it; NCCL reduces in place when the
                // send and receive buffers are the same.
                unsafe {
                    nr::all_reduce(
                        at as *const c_void,
                        at as *mut c_void,
                        count,
                        dt,
                        red,
                        comm,
                        s,
                    )
                }
                .map(|_| ())
            })
        })?;
        Ok(Some(works))
    }

    /// Reduce-scatters of several tensors in one NCCL group (a single one is a group of one).
    fn reduce_scatter_many_work(&self, ts: &[Tensor], op: ReduceOp) -> Result<Vec<NcclWork>> {
        const OP: &str = "reduce_scatter";
        let n = self.members.len();
        let mut args = Vec::with_capacity(ts.len());
        let mut items = Vec::with_capacity(ts.len());
        let mut compute = None;
        for t in ts {
            let dt = nccl_dtype(OP, t.dtype())?;
            Self::check_reduce_op(OP, t.dtype(), op)?;
            let d0 = Self::dim0(OP, t)?;
            if d0 % n != 0 {
                return Err(Self::invalid(
                    OP,
                    format!("dim 0 has size {d0}, not a multiple of the group size {n}: pad the input to a multiple of {n} rows"),
                ));
            }
            let mut dims = t.dims().to_vec();
            dims[0] = d0 / n;
            let c = self.prepare(OP, t, Shape::from(dims))?;
            args.push((c.src, c.dst, c.output.elem_count(), dt));
            compute = Some(c.compute);
            items.push((vec![c.input], Some(c.output)));
        }
        let Some(compute) = compute else {
            return Ok(Vec::new());
        };
        let red = nccl_op(op);
        self.launch_many(OP, compute, items, |comm, s| {
            Self::grouped(args.len(), |i| {
                let (src, dst, count, dt) = args[i];
                // SAFETY: `src` holds `count * size` elements, `dst` `count`; the work keeps
                // both alive until the compute stream has waited for the collective.
                unsafe {
                    nr::reduce_scatter(
                        src as *const c_void,
                        dst as *mut c_void,
                        count,
                        dt,
                        red,
                        comm,
                        s,
                    )
                }
                .map(|_| ())
            })
        })
    }

    fn all_reduce_work(&self, t: &Tensor, op: ReduceOp) -> Result<NcclWork> {
        const OP: &str = "all_reduce";
        let dt = nccl_dtype(OP, t.dtype())?;
        Self::check_reduce_op(OP, t.dtype(), op)?;
        let c = self.prepare(OP, t, t.shape().clone())?;
        let (src, dst, count, red) = (c.src, c.dst, c.input.elem_count(), nccl_op(op));
        self.launch(c.op, c.compute, vec![c.input], Some(c.output), |comm, s| {
            // SAFETY: `src` and `dst` address `count` elements of live tensors that the work
            // keeps until the compute stream has waited for the collective.
            unsafe {
                nr::all_reduce(
                    src as *const c_void,
                    dst as *mut c_void,
                    count,
                    dt,
                    red,
                    comm,
                    s,
                )
            }
            .map(|_| ())
        })
    }

    fn all_gather_work(&self, t: &Tensor) -> Result<NcclWork> {
        Self::one(self.all_gather_many_work(std::slice::from_ref(t))?)
    }

    fn reduce_scatter_work(&self, t: &Tensor, op: ReduceOp) -> Result<NcclWork> {
        Self::one(self.reduce_scatter_many_work(std::slice::from_ref(t), op)?)
    }

    /// The work of a one-tensor group.
    fn one(mut works: Vec<NcclWork>) -> Result<NcclWork> {
        works.pop().ok_or_else(|| Error::Nccl {
            op: "collective".into(),
            group: String::new(),
            detail: "a one-tensor collective returned no work".into(),
        })
    }
}

impl ProcessGroup for NcclGroup {
    fn rank(&self) -> usize {
        self.me
    }
    fn size(&self) -> usize {
        self.members.len()
    }
    fn global_ranks(&self) -> &[usize] {
        &self.members
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn device(&self) -> Device {
        self.rt.device.clone()
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.all_reduce_async(t, op)?.wait()
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        self.all_gather_async(t)?.wait()
    }
    fn reduce_scatter(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.reduce_scatter_async(t, op)?.wait()
    }

    fn all_reduce_async(&self, t: &Tensor, op: ReduceOp) -> Result<Work> {
        if self.members.len() == 1 {
            nccl_dtype("all_reduce", t.dtype())?;
            Self::check_reduce_op("all_reduce", t.dtype(), op)?;
            return Ok(Work::done(t.clone()));
        }
        let w = self.all_reduce_work(t, op)?;
        Ok(Work::pending(Box::new(w)))
    }
    fn all_gather_async(&self, t: &Tensor) -> Result<Work> {
        if self.members.len() == 1 {
            Self::dim0("all_gather", t)?;
            return Ok(Work::done(t.clone()));
        }
        let w = self.all_gather_work(t)?;
        Ok(Work::pending(Box::new(w)))
    }
    fn reduce_scatter_async(&self, t: &Tensor, op: ReduceOp) -> Result<Work> {
        if self.members.len() == 1 {
            Self::dim0("reduce_scatter", t)?;
            Self::check_reduce_op("reduce_scatter", t.dtype(), op)?;
            return Ok(Work::done(t.clone()));
        }
        let w = self.reduce_scatter_work(t, op)?;
        Ok(Work::pending(Box::new(w)))
    }
    fn all_gather_many_async(&self, ts: &[Tensor]) -> Result<Vec<Work>> {
        if self.members.len() == 1 {
            return ts.iter().map(|t| self.all_gather_async(t)).collect();
        }
        Ok(self
            .all_gather_many_work(ts)?
            .into_iter()
            .map(|w| Work::pending(Box::new(w)))
            .collect())
    }
    fn all_reduce_in_place_many_async(
        &self,
        ts: &[Tensor],
        op: ReduceOp,
    ) -> Result<Option<Vec<Work>>> {
        if self.members.len() == 1 {
            for t in ts {
                nccl_dtype("all_reduce", t.dtype())?;
                Self::check_reduce_op("all_reduce", t.dtype(), op)?;
            }
            return Ok(Some(ts.iter().map(|t| Work::done(t.clone())).collect()));
        }
        Ok(self.all_reduce_in_place_many_work(ts, op)?.map(|works| {
            works
                .into_iter()
                .map(|w| Work::pending(Box::new(w)))
                .collect()
        }))
    }
    fn reduce_scatter_many_async(&self, ts: &[Tensor], op: ReduceOp) -> Result<Vec<Work>> {
        if self.members.len() == 1 {
            return ts
                .iter()
                .map(|t| self.reduce_scatter_async(t, op))
                .collect();
        }
        Ok(self
            .reduce_scatter_many_work(ts, op)?
            .into_iter()
            .map(|w| Work::pending(Box::new(w)))
            .collect())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        const OP: &str = "broadcast";
        self.check_rank(OP, "root", root)?;
        if self.members.len() == 1 {
            return Ok(t.clone());
        }
        let dt = nccl_dtype(OP, t.dtype())?;
        let c = self.prepare(OP, t, t.shape().clone())?;
        let (src, dst, count) = (c.src, c.dst, c.input.elem_count());
        let w = self.launch(c.op, c.compute, vec![c.input], Some(c.output), |comm, s| {
            // SAFETY: `src` (read on the root only) and `dst` hold `count` elements of tensors
            // the work keeps alive until the compute stream has waited for it.
            unsafe {
                nr::broadcast(
                    src as *const c_void,
                    dst as *mut c_void,
                    count,
                    dt,
                    root as i32,
                    comm,
                    s,
                )
            }
            .map(|_| ())
        })?;
        Box::new(w).wait()
    }

    fn send(&self, t: &Tensor, dst: usize) -> Result<()> {
        const OP: &str = "send";
        self.check_rank(OP, "destination", dst)?;
        if dst == self.me {
            return Err(Self::invalid(OP, "a rank cannot send to itself".into()));
        }
        let dt = nccl_dtype(OP, t.dtype())?;
        self.rt.watch.check()?;
        let dev = cuda_of(OP, t)?;
        let input = t.contiguous()?;
        let compute = dev.cuda_stream();
        let src = address(&input, &compute)?;
        let count = input.elem_count();
        let mut w = self.launch(OP, compute, vec![input], None, |comm, s| {
            // SAFETY: `src` holds `count` elements of a tensor kept until the compute stream
            // has waited for the send.
            unsafe { nr::send(src as *const c_void, count, dt, dst as i32, comm, s) }.map(|_| ())
        })?;
        w.fence()
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
        let dt = nccl_dtype(OP, dtype)?;
        self.rt.watch.check()?;
        let dev = match device {
            Device::Cuda(d) => d.clone(),
            other => {
                return Err(Self::invalid(
                    OP,
                    format!("the NCCL backend receives into CUDA memory, got {other:?}"),
                ))
            }
        };
        let (out, dst) = output(&dev, shape.clone(), dtype)?;
        let count = shape.elem_count();
        let w = self.launch(OP, dev.cuda_stream(), Vec::new(), Some(out), |comm, s| {
            // SAFETY: `dst` holds `count` elements of a tensor the work keeps until the compute
            // stream has waited for the receive.
            unsafe { nr::recv(dst as *mut c_void, count, dt, src as i32, comm, s) }.map(|_| ())
        })?;
        Box::new(w).wait()
    }

    fn barrier(&self) -> Result<()> {
        const OP: &str = "barrier";
        self.rt.watch.check()?;
        let timeout = self.rt.timeout();
        // Collectives this rank queued before the barrier are finished when it returns.
        self.rt.drain(timeout).map_err(|detail| Error::Nccl {
            op: OP.into(),
            group: self.name.clone(),
            detail,
        })?;
        if self.members.len() == 1 {
            return Ok(());
        }
        let n = self.barriers.fetch_add(1, Ordering::SeqCst) + 1;
        self.rt.store_barrier(
            &format!("titan/nccl/{}/barrier{n}", self.key),
            OP,
            &self.name,
            &self.members,
            self.me,
            timeout,
        )
    }

    fn split(&self, color: Option<u32>, key: u32, name: &str) -> Result<Option<Group>> {
        const OP: &str = "split";
        self.rt.watch.check()?;
        let n = self.splits.fetch_add(1, Ordering::SeqCst) + 1;
        let base = format!("titan/nccl/{}/split{n}", self.key);
        let slot = |g: usize| format!("{base}/{g}");
        let mut mine = color.map_or(-1i64, i64::from).to_le_bytes().to_vec();
        mine.extend_from_slice(&key.to_le_bytes());
        self.rt.store.set(&slot(self.members[self.me]), &mine)?;
        let start = Instant::now();
        let keys: Vec<String> = self.members.iter().map(|&g| slot(g)).collect();
        let absent = self.rt.store.wait(&keys, self.rt.timeout())?;
        if !absent.is_empty() {
            return Err(Error::Timeout {
                op: OP.into(),
                group: self.name.clone(),
                missing: self
                    .members
                    .iter()
                    .copied()
                    .filter(|&g| absent.contains(&slot(g)))
                    .collect(),
                waited_s: start.elapsed().as_secs_f64(),
            });
        }
        let Some(color) = color else { return Ok(None) };
        let mut same = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let v = self.rt.store.get(k)?.unwrap_or_default();
            if v.len() != 12 {
                return Err(Error::Store {
                    addr: self.rt.store.addr().to_string(),
                    detail: format!("`{k}` holds {} bytes, not a split color and key", v.len()),
                });
            }
            let c = i64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]));
            let kk = u32::from_le_bytes(v[8..].try_into().unwrap_or([0; 4]));
            if c == i64::from(color) {
                same.push((kk, i));
            }
        }
        same.sort();
        let members: Vec<usize> = same.iter().map(|&(_, i)| self.members[i]).collect();
        let me = members
            .iter()
            .position(|&g| g == self.members[self.me])
            .unwrap_or(0);
        let child_key = format!("{}/c{n}.{color}", self.key);
        let child_name = format!("{name}{members:?}");
        let comm = self
            .rt
            .communicator(&child_key, &child_name, &members, me)?;
        Ok(Some(Arc::new(NcclGroup::new(
            self.rt.clone(),
            comm,
            child_name,
            child_key,
            members,
            me,
        ))))
    }

    fn split_by_ranks(&self, parts: &[Vec<usize>], name: &str) -> Result<Option<Group>> {
        const OP: &str = "split_by_ranks";
        super::checks::parts(&self.name, self.members.len(), OP, parts)?;
        self.rt.watch.check()?;
        let n = self.splits.fetch_add(1, Ordering::SeqCst) + 1;
        let Some(idx) = parts.iter().position(|p| p.contains(&self.me)) else {
            return Ok(None);
        };
        let members: Vec<usize> = parts[idx].iter().map(|&r| self.members[r]).collect();
        let me = parts[idx].iter().position(|&r| r == self.me).unwrap_or(0);
        let child_key = format!("{}/s{n}.{idx}", self.key);
        let child_name = format!("{name}{members:?}");
        let comm = self
            .rt
            .communicator(&child_key, &child_name, &members, me)?;
        Ok(Some(Arc::new(NcclGroup::new(
            self.rt.clone(),
            comm,
            child_name,
            child_key,
            members,
            me,
        ))))
    }

    fn timeout(&self) -> Duration {
        self.rt.timeout()
    }
    fn set_timeout(&self, timeout: Duration) {
        self.rt
            .watch
            .timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Scheduling priority of the communication stream (`TITAN_NCCL_PRIORITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamPriority {
    /// The device's highest stream priority (the default, as PyTorch FSDP2's all-gather and
    /// reduce-scatter streams): when a collective and compute kernels wait for SMs at the same
    /// time, the block scheduler places the collective's blocks first, so the collective the
    /// next unit needs is not queued behind a whole GEMM.
    High,
    /// The same priority as the compute stream.
    Normal,
}

impl StreamPriority {
    fn name(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
        }
    }
}

fn comm_stream_priority() -> Result<StreamPriority> {
    match std::env::var("TITAN_NCCL_PRIORITY").as_deref() {
        Err(_) | Ok("") | Ok("high") => Ok(StreamPriority::High),
        Ok("normal") => Ok(StreamPriority::Normal),
        Ok(other) => Err(Error::Env {
            var: "TITAN_NCCL_PRIORITY".into(),
            value: other.into(),
            reason: "expected `high` (default) or `normal`".into(),
        }),
    }
}

/// The world's communication stream, ordered after the compute stream's current work.
fn comm_stream(compute: &Arc<CudaStream>, priority: StreamPriority) -> Result<Arc<CudaStream>> {
    const OP: &str = "initializing the NCCL process group";
    let fail = |what: &str, e| driver_err(OP, "world", what, e);
    match priority {
        StreamPriority::Normal => compute
            .fork()
            .map_err(|e| fail("creating the communication stream", e)),
        StreamPriority::High => {
            let (_least, greatest) =
                candle_core::cuda_backend::cudarc::driver::result::stream::get_priority_range()
                    .map_err(|e| fail("reading the stream priority range", e))?;
            let stream = compute
                .context()
                .new_stream_with_priority(greatest)
                .map_err(|e| fail("creating the communication stream", e))?;
            stream
                .join(compute)
                .map_err(|e| fail("ordering the communication stream", e))?;
            Ok(stream)
        }
    }
}
