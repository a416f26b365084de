//! Where a rank's incoming messages wait until the operation that expects them asks.
//!
//! Messages are keyed by (sender, tag), so operations of different groups may interleave on
//! the wire in any order. A sender that leaves or dies is recorded, so waiting for it fails at
//! once instead of at the timeout (messages it sent before are still delivered).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::comm::transport::{Body, Tag};

/// Why a receive gave up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RecvError {
    /// The deadline passed.
    Timeout,
    /// The sender is gone; how.
    Gone(String),
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<(usize, Tag), VecDeque<Body>>,
    gone: HashMap<usize, String>,
}

/// A rank's incoming messages.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    state: Mutex<State>,
    arrived: Condvar,
}

impl Mailbox {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps inconsistent (each update is
        // one insert or push), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message from global rank `src` arrived.
    pub fn deliver(&self, src: usize, tag: Tag, body: Body) {
        self.lock()
            .queues
            .entry((src, tag))
            .or_default()
            .push_back(body);
        self.arrived.notify_all();
    }

    /// Global rank `src` will send nothing more; `how` says why (the first reason is kept).
    pub fn mark_gone(&self, src: usize, how: String) {
        self.lock().gone.entry(src).or_insert(how);
        self.arrived.notify_all();
    }

    /// Why `src` is gone, if it is.
    pub fn gone(&self, src: usize) -> Option<String> {
        self.lock().gone.get(&src).cloned()
    }

    /// Whether a message from `src` with `tag` is waiting.
    pub fn has(&self, src: usize, tag: Tag) -> bool {
        self.lock()
            .queues
            .get(&(src, tag))
            .is_some_and(|q| !q.is_empty())
    }

    /// The next message from `src` with `tag`, waiting until `deadline`.
    pub fn recv(&self, src: usize, tag: Tag, deadline: Instant) -> Result<Body, RecvError> {
        let mut state = self.lock();
        loop {
            if let Some(q) = state.queues.get_mut(&(src, tag)) {
                if let Some(body) = q.pop_front() {
                    if q.is_empty() {
                        state.queues.remove(&(src, tag));
                    }
                    return Ok(body);
                }
            }
            if let Some(how) = state.gone.get(&src) {
                return Err(RecvError::Gone(how.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            state = self
                .arrived
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::comm::payload::{HostData, Payload};

    fn tag(seq: u64) -> Tag {
        Tag {
            group: 1,
            seq,
            phase: 0,
        }
    }

    fn data(x: f32) -> Body {
        Body::Data(Payload {
            shape: vec![1],
            data: HostData::F32(vec![x]),
        })
    }

    #[test]
    fn delivers_by_tag_then_reports_gone_and_timeout() {
        let m = Mailbox::new();
        m.deliver(3, tag(2), data(2.0));
        m.deliver(3, tag(1), data(1.0));
        let soon = Instant::now() + Duration::from_millis(20);
        let Body::Data(p) = m.recv(3, tag(1), soon).unwrap() else {
            panic!("expected data")
        };
        assert_eq!(p.data, HostData::F32(vec![1.0]));
        assert_eq!(m.recv(4, tag(1), soon), Err(RecvError::Timeout));
        m.mark_gone(3, "died".into());
        // A message sent before leaving is still delivered; then the departure shows.
        assert!(m.recv(3, tag(2), soon).is_ok());
        assert_eq!(m.recv(3, tag(2), soon), Err(RecvError::Gone("died".into())));
    }
}
