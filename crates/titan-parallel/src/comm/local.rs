//! The in-process backend: ranks are threads of one process and messages move through shared
//! mailboxes. Deterministic and dependency-free: what CI runs data-parallel tests on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::comm::host_group::HostGroup;
use crate::comm::mailbox::Mailbox;
use crate::comm::transport::{Body, Tag, Transport};
use crate::comm::Group;
use crate::{Error, Result};

/// The mailboxes of every rank of one in-process world.
#[derive(Debug)]
struct LocalHub {
    mailboxes: Vec<Mailbox>,
}

/// One rank's end of an in-process world.
#[derive(Debug)]
pub(crate) struct LocalTransport {
    rank: usize,
    hub: Arc<LocalHub>,
    timeout_ms: AtomicU64,
}

impl Transport for LocalTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.hub.mailboxes.len()
    }
    fn send(&self, dst: usize, tag: Tag, body: Body) -> std::result::Result<(), String> {
        // A rank that left recorded it in every other rank's mailbox, ours included.
        if let Some(how) = self.hub.mailboxes[self.rank].gone(dst) {
            return Err(how);
        }
        let target = self
            .hub
            .mailboxes
            .get(dst)
            .ok_or_else(|| format!("no rank {dst} in this world"))?;
        target.deliver(self.rank, tag, body);
        Ok(())
    }
    fn mailbox(&self) -> &Mailbox {
        &self.hub.mailboxes[self.rank]
    }
    fn backend(&self) -> &'static str {
        "threads"
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }
    fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for LocalTransport {
    /// Tells the other ranks this one is gone, so they fail at once instead of at the timeout.
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            "died (its thread panicked)"
        } else {
            "left the group (its communicator was dropped)"
        };
        for (r, m) in self.hub.mailboxes.iter().enumerate() {
            if r != self.rank {
                m.mark_gone(self.rank, how.to_string());
            }
        }
    }
}

/// The world groups of `size` ranks living in this process (one per rank, to be moved into
/// one thread each). Collectives wait at most `timeout` for the other ranks.
pub fn local_world(size: usize, timeout: Duration) -> Result<Vec<Group>> {
    if size == 0 {
        return Err(Error::InvalidArgument {
            op: "local_world".into(),
            detail: "a world needs at least one rank".into(),
        });
    }
    let hub = Arc::new(LocalHub {
        mailboxes: (0..size).map(|_| Mailbox::new()).collect(),
    });
    Ok((0..size)
        .map(|rank| {
            let t = LocalTransport {
                rank,
                hub: hub.clone(),
                timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
            };
            HostGroup::world(Arc::new(t))
        })
        .collect())
}

/// Runs `f` once per rank of a fresh in-process world, each on its own thread (named
/// `rank{r}`), and returns each rank's outcome in rank order (`Err` holds a rank's panic).
pub fn run_local<T, F>(size: usize, timeout: Duration, f: F) -> Result<Vec<std::thread::Result<T>>>
where
    T: Send,
    F: Fn(Group) -> T + Sync,
{
    let groups = local_world(size, timeout)?;
    let f = &f;
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(size);
        for (rank, g) in groups.into_iter().enumerate() {
            let h = std::thread::Builder::new()
                .name(format!("rank{rank}"))
                .spawn_scoped(s, move || f(g))
                .map_err(|e| Error::io(format!("spawning the thread of rank {rank}"), e))?;
            handles.push(h);
        }
        Ok(handles.into_iter().map(|h| h.join()).collect())
    })
}
