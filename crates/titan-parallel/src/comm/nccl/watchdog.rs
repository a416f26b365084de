//! The watchdog: times every NCCL collective, watches NCCL's asynchronous errors, names the
//! ranks a stuck collective waits for, and aborts (see [`super`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaEvent};

use super::runtime::RawComm;
use crate::store::StoreClient;
use crate::{Error, Result};

/// How often the watchdog looks at running collectives.
const POLL: Duration = Duration::from_millis(20);
/// How often the watchdog publishes progress and reads NCCL's asynchronous errors.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the watchdog waits, after aborting, for the process to notice the failure.
pub(super) const ABORT_GRACE: Duration = Duration::from_secs(30);

/// A collective the watchdog follows until its `done` event fires.
pub(super) struct Watched {
    pub(super) done: Arc<CudaEvent>,
    pub(super) issued_at: Instant,
    pub(super) comm: Arc<RawComm>,
    pub(super) seq: u64,
    pub(super) op: &'static str,
    pub(super) group: String,
}

#[derive(Debug, Clone)]
pub(super) enum Failure {
    Timeout {
        op: String,
        group: String,
        missing: Vec<usize>,
        waited_s: f64,
    },
    Nccl {
        op: String,
        group: String,
        detail: String,
    },
}

impl Failure {
    pub(super) fn to_error(&self) -> Error {
        match self.clone() {
            Failure::Timeout {
                op,
                group,
                missing,
                waited_s,
            } => Error::Timeout {
                op,
                group,
                missing,
                waited_s,
            },
            Failure::Nccl { op, group, detail } => Error::Nccl { op, group, detail },
        }
    }
}

/// What the training thread and the watchdog share.
pub(super) struct Watch {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) timeout_ms: AtomicU64,
    pub(super) queue: Mutex<Vec<Watched>>,
    pub(super) failure: Mutex<Option<Failure>>,
    /// The training thread has returned the failure to its caller.
    pub(super) observed: AtomicBool,
    pub(super) stop: AtomicBool,
    pub(super) comms: Mutex<Vec<Weak<RawComm>>>,
    /// A watchdog thread runs (else nothing empties `queue`, so nothing is queued).
    pub(super) watching: AtomicBool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watch {
    /// Has the watchdog time `w` until its `done` event fires.
    pub(super) fn follow(&self, w: Watched) {
        if self.watching.load(Ordering::Relaxed) {
            lock(&self.queue).push(w);
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// The recorded failure as an error, marking it seen.
    pub(super) fn check(&self) -> Result<()> {
        match lock(&self.failure).as_ref() {
            Some(f) => {
                self.observed.store(true, Ordering::SeqCst);
                Err(f.to_error())
            }
            None => Ok(()),
        }
    }

    pub(super) fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }

    /// Records the first failure and aborts every communicator.
    pub(super) fn fail(&self, f: Failure) {
        {
            let mut slot = lock(&self.failure);
            if slot.is_some() {
                return;
            }
            tracing::error!("{}", f.to_error());
            *slot = Some(f);
        }
        for c in lock(&self.comms).iter().filter_map(Weak::upgrade) {
            c.abort();
        }
    }

    pub(super) fn progress(&self) -> String {
        lock(&self.comms)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| format!("{} {}\n", c.key, c.issued.load(Ordering::SeqCst)))
            .collect()
    }
}

pub(super) fn progress_key(rank: usize) -> String {
    format!("titan/nccl/progress/{rank}")
}

/// The members of `w`'s communicator that had not issued collective number `w.seq` on it, by
/// their published progress. A store that no longer answers means rank 0 (its host) is gone.
pub(super) fn laggards(store: Option<&StoreClient>, w: &Watched, me: usize) -> Vec<usize> {
    let Some(store) = store else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    for &m in w.comm.members.iter().filter(|&&m| m != me) {
        match store.get(&progress_key(m)) {
            Ok(Some(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                let issued = text
                    .lines()
                    .filter_map(|l| l.rsplit_once(' '))
                    .find(|(k, _)| *k == w.comm.key)
                    .and_then(|(_, n)| n.parse::<u64>().ok())
                    .unwrap_or(0);
                if issued < w.seq {
                    missing.push(m);
                }
            }
            Ok(None) => missing.push(m),
            Err(_) => return vec![0],
        }
    }
    missing
}

pub(super) fn watchdog(watch: Arc<Watch>, store: Option<StoreClient>, me: usize) {
    if let Err(e) = watch.ctx.bind_to_thread() {
        tracing::warn!("NCCL watchdog: cannot bind the CUDA context ({e}); not watching");
        return;
    }
    let mut last_beat = Instant::now()
        .checked_sub(HEARTBEAT)
        .unwrap_or_else(Instant::now);
    let mut published = String::new();
    while !watch.stop.load(Ordering::SeqCst) {
        std::thread::sleep(POLL);
        if watch.failed() {
            let since = Instant::now();
            while !watch.observed.load(Ordering::SeqCst) && !watch.stop.load(Ordering::SeqCst) {
                if since.elapsed() > ABORT_GRACE {
                    let text = lock(&watch.failure)
                        .as_ref()
                        .map(|f| f.to_error().to_string())
                        .unwrap_or_default();
                    eprintln!(
                        "titan-parallel: {text}\ntitan-parallel: the process did not return from the failed \
                         collective within {}s of aborting NCCL: exiting with status 1",
                        ABORT_GRACE.as_secs()
                    );
                    std::process::exit(1);
                }
                std::thread::sleep(POLL);
            }
            return;
        }
        let timeout = watch.timeout();
        let mut found: Option<Failure> = None;
        {
            let mut queue = lock(&watch.queue);
            let mut stuck = None;
            queue.retain(|w| match w.done.try_is_complete() {
                Ok(true) => false,
                Ok(false) => {
                    if stuck.is_none() && w.issued_at.elapsed() > timeout {
                        stuck = Some(Watched {
                            done: w.done.clone(),
                            issued_at: w.issued_at,
                            comm: w.comm.clone(),
                            seq: w.seq,
                            op: w.op,
                            group: w.group.clone(),
                        });
                    }
                    true
                }
                Err(e) => {
                    found.get_or_insert(Failure::Nccl {
                        op: w.op.into(),
                        group: w.group.clone(),
                        detail: format!("the collective failed on the GPU: CUDA error {e}"),
                    });
                    true
                }
            });
            drop(queue);
            if let (None, Some(w)) = (&found, stuck) {
                let missing = laggards(store.as_ref(), &w, me);
                let who = if missing.is_empty() {
                    "every member issued it, so one is stuck inside it or its GPU failed"
                } else {
                    "the ranks named never issued it"
                };
                found = Some(Failure::Timeout {
                    op: format!("{} #{} (NCCL; {who})", w.op, w.seq),
                    group: w.group.clone(),
                    missing,
                    waited_s: w.issued_at.elapsed().as_secs_f64(),
                });
            }
        }
        if found.is_none() && last_beat.elapsed() >= HEARTBEAT {
            last_beat = Instant::now();
            for c in lock(&watch.comms).iter().filter_map(Weak::upgrade) {
                if let Some(detail) = c.async_error() {
                    found = Some(Failure::Nccl {
                        op: "a collective".into(),
                        group: format!("{:?}", c.members),
                        detail: format!(
                            "NCCL reported {detail}; a peer probably died or lost its connection (see the other ranks' logs)"
                        ),
                    });
                    break;
                }
            }
            let progress = watch.progress();
            if progress != published {
                if let Some(s) = &store {
                    // Best effort: only diagnoses depend on it.
                    if s.set(&progress_key(me), progress.as_bytes()).is_ok() {
                        published = progress;
                    }
                }
            }
        }
        if let Some(f) = found {
            watch.fail(f);
        }
    }
}
