//! The NCCL library, communicators and the per-world runtime (see [`super`]).

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaStream};
use candle_core::cuda_backend::cudarc::nccl::{result as nr, sys as ns};
use candle_core::Device;

use super::watchdog::{lock, Watch};
use crate::store::{StoreClient, StoreServer};
use crate::{Error, Result};

/// Longest wait of the teardown barrier (peers finishing reads of this rank's buffers).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// NCCL reads its environment when the first communicator is created. NVLink multicast (NVLS)
/// must stay off on the shared GPU machines; an explicit setting is respected.
pub(super) fn prepare_environment() {
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        // Set before any NCCL call, while this module's threads do not exist yet.
        std::env::set_var("NCCL_NVLS_ENABLE", "0");
    }
}

/// Loads libnccl (cudarc panics when it cannot) and returns its version code.
pub(super) fn load_library() -> Result<i32> {
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = catch_unwind(AssertUnwindSafe(nr::get_nccl_version));
    std::panic::set_hook(previous_hook);
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Nccl {
            op: "loading NCCL".into(),
            group: "world".into(),
            detail: format!("ncclGetVersion failed: {}", error_text(e.0, None)),
        }),
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            Err(Error::Nccl {
                op: "loading NCCL".into(),
                group: "world".into(),
                detail: format!(
                    "libnccl could not be loaded ({why}); Titan loads it at run time as libnccl.so: put NCCL's lib \
                     folder on LD_LIBRARY_PATH with an unversioned libnccl.so link (`source scripts/device-env.sh` \
                     does both on the GPU machines), or set TITAN_DIST_BACKEND=tcp"
                ),
            })
        }
    }
}

/// NCCL's name and text for a result code, and the communicator's last error if known.
pub(super) fn error_text(code: ns::ncclResult_t, comm: Option<ns::ncclComm_t>) -> String {
    // SAFETY: both functions return pointers to static or per-communicator NUL-terminated
    // strings that stay valid at least until the next NCCL call on this thread.
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let mut s = format!(
        "{code:?} ({})",
        text(unsafe { ns::ncclGetErrorString(code) })
    );
    if let Some(c) = comm {
        let last = text(unsafe { ns::ncclGetLastError(c) });
        if !last.is_empty() {
            s.push_str(": ");
            s.push_str(&last);
        }
    }
    s
}

pub(super) fn driver_err(op: &str, group: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Nccl {
        op: op.to_string(),
        group: group.to_string(),
        detail: format!("{what}: CUDA error {e}"),
    }
}

/// One NCCL communicator, shared by every group with the same members in the same order.
pub(super) struct RawComm {
    pub(super) handle: ns::ncclComm_t,
    pub(super) ctx: Arc<CudaContext>,
    /// The store key it was created under (names it in progress counters).
    pub(super) key: String,
    /// Global ranks, in communicator-rank order.
    pub(super) members: Vec<usize>,
    /// Collectives issued on it by this rank.
    pub(super) issued: AtomicU64,
    pub(super) aborted: AtomicBool,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not run
// concurrently: every call goes through `Runtime::issue` (or is `ncclCommAbort`, which NCCL
// allows from another thread) and the handle is never freed before `Drop`.
unsafe impl Send for RawComm {}
unsafe impl Sync for RawComm {}

impl std::fmt::Debug for RawComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ncclComm `{}` {:?}", self.key, self.members)
    }
}

impl RawComm {
    pub(super) fn init(
        ctx: &Arc<CudaContext>,
        key: &str,
        members: &[usize],
        me: usize,
        id: ns::ncclUniqueId,
        group: &str,
    ) -> Result<Arc<Self>> {
        const OP: &str = "creating the NCCL communicator";
        ctx.bind_to_thread()
            .map_err(|e| driver_err(OP, group, "binding the CUDA context", e))?;
        let mut handle = MaybeUninit::<ns::ncclComm_t>::uninit();
        // SAFETY: `handle` is written by NCCL on success; the id came from rank 0 of the group
        // and every member passes the same size and a distinct rank.
        unsafe { nr::comm_init_rank(handle.as_mut_ptr(), members.len() as i32, id, me as i32) }
            .map_err(|e| Error::Nccl {
                op: OP.into(),
                group: group.into(),
                detail: format!(
                    "ncclCommInitRank (rank {me} of {}) failed: {}; two ranks on one GPU, a GPU that \
                     another job holds, or a peer that crashed while connecting are the usual causes",
                    members.len(),
                    error_text(e.0, None)
                ),
            })?;
        // SAFETY: initialized by the successful call above.
        let handle = unsafe { handle.assume_init() };
        Ok(Arc::new(Self {
            handle,
            ctx: ctx.clone(),
            key: key.to_string(),
            members: members.to_vec(),
            issued: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
        }))
    }

    /// Aborts the communicator: kernels waiting for peers return, later calls fail.
    pub(super) fn abort(&self) {
        if self.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        // SAFETY: the handle is live (freed only here or in Drop, guarded by `aborted`).
        if let Err(e) = unsafe { nr::comm_abort(self.handle) } {
            tracing::warn!("ncclCommAbort on `{}`: {}", self.key, error_text(e.0, None));
        }
    }

    /// NCCL's asynchronous error (a network failure, a peer that went away), if any.
    pub(super) fn async_error(&self) -> Option<String> {
        if self.aborted.load(Ordering::SeqCst) {
            return None;
        }
        let mut code = ns::ncclResult_t::ncclSuccess;
        // SAFETY: live handle; `code` outlives the call.
        let r = unsafe { ns::ncclCommGetAsyncError(self.handle, &mut code) };
        match (r, code) {
            (ns::ncclResult_t::ncclSuccess, ns::ncclResult_t::ncclSuccess) => None,
            (ns::ncclResult_t::ncclSuccess, ns::ncclResult_t::ncclInProgress) => None,
            (ns::ncclResult_t::ncclSuccess, c) => Some(error_text(c, Some(self.handle))),
            (r, _) => Some(error_text(r, None)),
        }
    }
}

impl Drop for RawComm {
    fn drop(&mut self) {
        // Abort rather than destroy: ncclCommDestroy waits for peers, which may be gone. The
        // runtime drained the communication stream before letting the communicator go.
        self.abort();
    }
}

/// What every group of one world shares.
pub(super) struct Runtime {
    pub(super) device: Device,
    pub(super) ctx: Arc<CudaContext>,
    pub(super) comm_stream: Arc<CudaStream>,
    /// `TITAN_NCCL_STREAM=compute`: NCCL runs on candle's stream itself (no overlap, no
    /// cross-stream ordering at all; a fallback for diagnosing the two-stream protocol).
    pub(super) on_compute: bool,
    pub(super) store: StoreClient,
    pub(super) _server: Option<Arc<StoreServer>>,
    pub(super) rank: usize,
    pub(super) world_size: usize,
    /// Communicators by member list (a group with the same members reuses one).
    pub(super) comms: Mutex<HashMap<Vec<usize>, Arc<RawComm>>>,
    /// Serializes NCCL calls and stream work across threads.
    pub(super) issue: Mutex<()>,
    pub(super) watch: Arc<Watch>,
    pub(super) watchdog: Mutex<Option<JoinHandle<()>>>,
}

impl Runtime {
    pub(super) fn timeout(&self) -> Duration {
        self.watch.timeout()
    }

    /// Waits (bounded) until the communication stream has finished what was queued on it.
    pub(super) fn drain(&self, timeout: Duration) -> std::result::Result<(), String> {
        let _ = self.ctx.bind_to_thread();
        let stream = if self.on_compute {
            self.device
                .as_cuda_device()
                .map_err(|e| e.to_string())?
                .cuda_stream()
        } else {
            self.comm_stream.clone()
        };
        let ev = stream
            .record_event(None)
            .map_err(|e| format!("recording an event: {e}"))?;
        let start = Instant::now();
        loop {
            match ev.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Ok(false) => {
                    return Err(format!(
                        "collectives still running after {:.1}s",
                        timeout.as_secs_f64()
                    ))
                }
                Err(e) => return Err(format!("CUDA error {e}")),
            }
        }
    }

    /// The communicator of `members` (creating it, collectively over them, if this process has
    /// none): rank 0 of the group publishes a fresh unique id under `key`, the others fetch it,
    /// everyone announces itself and waits for the rest, all with bounded waits.
    pub(super) fn communicator(
        &self,
        key: &str,
        group: &str,
        members: &[usize],
        me: usize,
    ) -> Result<Option<Arc<RawComm>>> {
        const OP: &str = "creating the NCCL communicator";
        if members.len() < 2 {
            return Ok(None);
        }
        if let Some(c) = lock(&self.comms).get(members) {
            return Ok(Some(c.clone()));
        }
        let timeout = self.timeout();
        let start = Instant::now();
        let timed_out = |what: &str, missing: Vec<usize>| Error::Timeout {
            op: format!("{OP} ({what})"),
            group: group.to_string(),
            missing,
            waited_s: start.elapsed().as_secs_f64(),
        };
        let id_key = format!("titan/nccl/{key}/id");
        let id = if me == 0 {
            let id = nr::get_uniqueid().map_err(|e| Error::Nccl {
                op: OP.into(),
                group: group.into(),
                detail: format!("ncclGetUniqueId failed: {}", error_text(e.0, None)),
            })?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            self.store.set(&id_key, &bytes)?;
            id
        } else {
            if !self
                .store
                .wait(std::slice::from_ref(&id_key), timeout)?
                .is_empty()
            {
                return Err(timed_out("waiting for its unique id", vec![members[0]]));
            }
            let bytes = self.store.get(&id_key)?.unwrap_or_default();
            if bytes.len() != 128 {
                return Err(Error::Store {
                    addr: self.store.addr().to_string(),
                    detail: format!(
                        "`{id_key}` holds {} bytes, not an NCCL unique id",
                        bytes.len()
                    ),
                });
            }
            let mut internal = [0 as std::ffi::c_char; 128];
            for (d, s) in internal.iter_mut().zip(&bytes) {
                *d = *s as std::ffi::c_char;
            }
            ns::ncclUniqueId { internal }
        };
        // Everyone present before the blocking ncclCommInitRank, or a named error.
        let here = |g: usize| format!("titan/nccl/{key}/here/{g}");
        self.store.set(&here(members[me]), b"1")?;
        let keys: Vec<String> = members.iter().map(|&g| here(g)).collect();
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        let absent = self.store.wait(&keys, left)?;
        if !absent.is_empty() {
            let missing = members
                .iter()
                .copied()
                .filter(|&g| absent.contains(&here(g)))
                .collect();
            return Err(timed_out("waiting for every member", missing));
        }
        let comm = RawComm::init(&self.ctx, key, members, me, id, group)?;
        lock(&self.comms).insert(members.to_vec(), comm.clone());
        lock(&self.watch.comms).push(Arc::downgrade(&comm));
        tracing::debug!(group, ?members, "NCCL communicator created");
        Ok(Some(comm))
    }

    /// A store barrier over `members` under `key` (bounded; names who did not come).
    pub(super) fn store_barrier(
        &self,
        key: &str,
        op: &str,
        group: &str,
        members: &[usize],
        me: usize,
        timeout: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        let k = |g: usize| format!("{key}/{g}");
        self.store.set(&k(members[me]), b"1")?;
        let keys: Vec<String> = members.iter().map(|&g| k(g)).collect();
        let absent = self.store.wait(&keys, timeout)?;
        if absent.is_empty() {
            return Ok(());
        }
        Err(Error::Timeout {
            op: op.to_string(),
            group: group.to_string(),
            missing: members
                .iter()
                .copied()
                .filter(|&g| absent.contains(&k(g)))
                .collect(),
            waited_s: start.elapsed().as_secs_f64(),
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let created = !lock(&self.comms).is_empty();
        if created && !self.watch.failed() {
            // Let queued collectives finish: the aborts below would cancel them.
            if let Err(e) = self.drain(self.timeout()) {
                tracing::warn!("NCCL teardown: {e}");
            }
            // Peers may still read buffers of ours (NVLink reads) until their side is done.
            let members: Vec<usize> = (0..self.world_size).collect();
            let wait = self.timeout().min(SHUTDOWN_WAIT);
            if let Err(e) = self.store_barrier(
                "titan/nccl/bye",
                "NCCL teardown",
                "world",
                &members,
                self.rank,
                wait,
            ) {
                tracing::warn!("{e}");
            }
        }
        self.watch.stop.store(true, Ordering::SeqCst);
        if let Some(h) = lock(&self.watchdog).take() {
            let _ = h.join();
        }
        lock(&self.watch.queue).clear();
        // The communicators go with `comms` (aborted in RawComm::drop).
    }
}
