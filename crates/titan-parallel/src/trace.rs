//! A GPU timeline of one training step: when each collective ran on the communication stream,
//! where the compute stream was when it asked for the result, and how long it then waited.
//!
//! Finding exposed communication needs the device's own clock (host timers see only the
//! queue), and this image has no Nsight Systems. So while a trace is open ([`begin`] ..
//! [`end`]), every NCCL collective records timing events (issued on the compute stream, start
//! and end on the communication stream, and the compute stream's position when the result was
//! waited for), and code on the compute stream drops named [`mark`]s (FSDP marks each unit's
//! hooks; the trainer each phase). [`end`] synchronizes once and turns the events into
//! milliseconds since [`begin`]: a [`Timeline`] with a summary and a Chrome trace-event JSON
//! (chrome://tracing, ui.perfetto.dev) to look at.
//!
//! Only the NCCL backend on CUDA records (feature `nccl`); elsewhere [`begin`] returns `false`
//! and nothing is recorded. Events cost a few microseconds each: trace one step, not a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use candle_core::Device;

use crate::Result;

/// One collective as the device ran it (milliseconds since the trace began).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectiveSpan {
    pub op: &'static str,
    pub group: String,
    /// How many collectives ran as one (an NCCL group; 1 otherwise).
    pub calls: usize,
    /// Bytes of the collectives' inputs on this rank.
    pub bytes: usize,
    /// Where the compute stream was when the collective was issued (its inputs were ready).
    pub issued_ms: f64,
    /// When the communication stream started it and when it finished.
    pub start_ms: f64,
    pub end_ms: f64,
    /// Where the compute stream was when it started waiting for the result, if it did within
    /// the trace.
    pub waited_ms: Option<f64>,
}

impl CollectiveSpan {
    /// How long the compute stream stood still for this collective.
    pub fn stall_ms(&self) -> f64 {
        self.waited_ms.map_or(0.0, |w| (self.end_ms - w).max(0.0))
    }
}

/// A named point on the compute stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub label: String,
    pub at_ms: f64,
}

/// What one trace recorded, in device time since [`begin`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    pub marks: Vec<Mark>,
    pub collectives: Vec<CollectiveSpan>,
    /// When the compute stream reached [`end`].
    pub end_ms: f64,
}

impl Timeline {
    /// Total time the compute stream waited for collectives.
    pub fn stall_ms(&self) -> f64 {
        self.collectives.iter().map(CollectiveSpan::stall_ms).sum()
    }

    /// Time the communication stream was busy (the union of the collectives' spans).
    pub fn comm_busy_ms(&self) -> f64 {
        union_ms(self.collectives.iter().map(|c| (c.start_ms, c.end_ms)))
    }

    /// One line per collective kind and group: count, bytes, busy time, achieved rate and the
    /// compute stream's stall; then the totals.
    pub fn summary(&self) -> Vec<String> {
        let mut by: BTreeMap<(String, &str), Vec<&CollectiveSpan>> = BTreeMap::new();
        for c in &self.collectives {
            by.entry((c.group.clone(), c.op)).or_default().push(c);
        }
        let mut lines = Vec::new();
        for ((group, op), cs) in by {
            let bytes: usize = cs.iter().map(|c| c.bytes).sum();
            let calls: usize = cs.iter().map(|c| c.calls).sum();
            let busy = union_ms(cs.iter().map(|c| (c.start_ms, c.end_ms)));
            let stall: f64 = cs.iter().map(|c| c.stall_ms()).sum();
            lines.push(format!(
                "{op} on `{group}`: {calls} calls in {} launches, {:.1} MB, busy {busy:.2} ms ({:.0} GB/s), compute stalled {stall:.2} ms",
                cs.len(),
                bytes as f64 / 1e6,
                if busy > 0.0 { bytes as f64 / busy / 1e6 } else { 0.0 }
            ));
        }
        lines.push(format!(
            "step {:.2} ms on the compute stream; communication busy {:.2} ms; compute stalled on it {:.2} ms",
            self.end_ms,
            self.comm_busy_ms(),
            self.stall_ms()
        ));
        lines
    }

    /// Chrome trace-event JSON: compute-stream marks as instants and the stretches between
    /// consecutive marks as spans (track "compute"), collectives as spans (track "comm"), stalls
    /// as spans (track "stalls"). Times in microseconds; `rank` is the process id.
    pub fn chrome_json(&self, rank: usize) -> String {
        let mut out = String::from("{\"traceEvents\":[\n");
        let mut first = true;
        let mut push = |out: &mut String, ev: String| {
            if !first {
                out.push_str(",\n");
            }
            first = false;
            out.push_str(&ev);
        };
        for (tid, name) in [(1, "compute"), (2, "comm"), (3, "stalls")] {
            push(
                &mut out,
                format!(
                    "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{rank},\"tid\":{tid},\"args\":{{\"name\":\"{name}\"}}}}"
                ),
            );
        }
        for (i, m) in self.marks.iter().enumerate() {
            let until = self.marks.get(i + 1).map_or(self.end_ms, |n| n.at_ms);
            push(
                &mut out,
                span(&m.label, "compute", rank, 1, m.at_ms, until - m.at_ms),
            );
        }
        for c in &self.collectives {
            let name = format!(
                "{} x{} {} ({:.1} MB)",
                c.op,
                c.calls,
                c.group,
                c.bytes as f64 / 1e6
            );
            push(
                &mut out,
                span(&name, "comm", rank, 2, c.start_ms, c.end_ms - c.start_ms),
            );
            if let Some(w) = c.waited_ms.filter(|_| c.stall_ms() > 0.0) {
                let name = format!("wait {}", c.op);
                push(&mut out, span(&name, "stall", rank, 3, w, c.stall_ms()));
            }
        }
        out.push_str("\n]}\n");
        out
    }
}

fn span(name: &str, cat: &str, pid: usize, tid: u32, at_ms: f64, dur_ms: f64) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\"ph\":\"X\",\"name\":\"{}\",\"cat\":\"{cat}\",\"pid\":{pid},\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3}}}",
        name.replace('\\', "\\\\").replace('"', "\\\""),
        at_ms * 1e3,
        dur_ms.max(0.0) * 1e3
    );
    s
}

/// Length of the union of intervals.
fn union_ms(spans: impl Iterator<Item = (f64, f64)>) -> f64 {
    let mut v: Vec<(f64, f64)> = spans.filter(|(a, b)| b > a).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (a, b) in v {
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map_or(0.0, |(a, b)| b - a)
}

/// Opens a trace on `device`'s compute stream. `false` (and nothing recorded) where tracing is
/// not available: a CPU device or a build without feature `nccl`. Opening a trace while one is
/// open restarts it.
pub fn begin(device: &Device) -> Result<bool> {
    imp::begin(device)
}

/// Whether a trace is open (cheap: one atomic load).
pub fn is_active() -> bool {
    imp::is_active()
}

/// Drops a named mark at the compute stream's current position (no-op unless a trace is open;
/// `label` is only built then).
pub fn mark(device: &Device, label: impl FnOnce() -> String) -> Result<()> {
    if !is_active() {
        return Ok(());
    }
    imp::mark(device, label())
}

/// Closes the trace: waits for the device to reach this point and returns the timeline
/// (`None` if no trace was open).
pub fn end(device: &Device) -> Result<Option<Timeline>> {
    imp::end(device)
}

#[cfg(feature = "nccl")]
pub(crate) use imp::{issue, CollectiveEvents};

#[cfg(feature = "nccl")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};

    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext, CudaEvent, CudaStream};
    use candle_core::Device;

    use super::{CollectiveSpan, Mark, Timeline};
    use crate::{Error, Result};

    static ACTIVE: AtomicBool = AtomicBool::new(false);
    static OPEN: Mutex<Option<Open>> = Mutex::new(None);

    struct Open {
        ctx: Arc<CudaContext>,
        base: CudaEvent,
        marks: Vec<(String, CudaEvent)>,
        collectives: Vec<Arc<CollectiveEvents>>,
    }

    /// The timing events of one traced collective (created by the NCCL backend).
    pub(crate) struct CollectiveEvents {
        op: &'static str,
        group: String,
        calls: usize,
        bytes: usize,
        issued: CudaEvent,
        start: CudaEvent,
        end: CudaEvent,
        waited: Mutex<Option<CudaEvent>>,
    }

    fn err(what: &str, e: impl std::fmt::Display) -> Error {
        Error::Nccl {
            op: "trace".into(),
            group: "-".into(),
            detail: format!("{what}: {e}"),
        }
    }

    fn open() -> MutexGuard<'static, Option<Open>> {
        OPEN.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timed(stream: &CudaStream) -> Result<CudaEvent> {
        stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| err("recording a timing event", e))
    }

    fn compute_stream(device: &Device) -> Option<Arc<CudaStream>> {
        match device {
            Device::Cuda(d) => Some(d.cuda_stream()),
            _ => None,
        }
    }

    pub(super) fn is_active() -> bool {
        ACTIVE.load(Ordering::Acquire)
    }

    pub(super) fn begin(device: &Device) -> Result<bool> {
        let Some(stream) = compute_stream(device) else {
            return Ok(false);
        };
        let base = timed(&stream)?;
        *open() = Some(Open {
            ctx: stream.context().clone(),
            base,
            marks: Vec::new(),
            collectives: Vec::new(),
        });
        ACTIVE.store(true, Ordering::Release);
        Ok(true)
    }

    pub(super) fn mark(device: &Device, label: String) -> Result<()> {
        let Some(stream) = compute_stream(device) else {
            return Ok(());
        };
        let mut g = open();
        if let Some(o) = g.as_mut() {
            o.marks.push((label, timed(&stream)?));
        }
        Ok(())
    }

    /// Starts tracing a collective about to be queued: `issued` on the compute stream.
    /// `None` when no trace is open.
    pub(crate) fn issue(
        op: &'static str,
        group: &str,
        calls: usize,
        bytes: usize,
        compute: &CudaStream,
    ) -> Result<Option<CollectiveEventsBuilder>> {
        if !is_active() {
            return Ok(None);
        }
        Ok(Some(CollectiveEventsBuilder {
            op,
            group: group.to_string(),
            calls,
            bytes,
            issued: timed(compute)?,
        }))
    }

    /// A traced collective between its issue and its launch.
    pub(crate) struct CollectiveEventsBuilder {
        op: &'static str,
        group: String,
        calls: usize,
        bytes: usize,
        issued: CudaEvent,
    }

    impl CollectiveEventsBuilder {
        /// Records the start on the communication stream, runs `launch`, records the end.
        /// Once `launch` has queued work, nothing here may fail: an end event that cannot be
        /// recorded only drops this collective from the trace.
        pub(crate) fn around(
            self,
            comm: &CudaStream,
            launch: impl FnOnce() -> Result<()>,
        ) -> Result<Option<Arc<CollectiveEvents>>> {
            let start = timed(comm)?;
            launch()?;
            let Ok(end) = timed(comm) else {
                return Ok(None);
            };
            let ev = Arc::new(CollectiveEvents {
                op: self.op,
                group: self.group,
                calls: self.calls,
                bytes: self.bytes,
                issued: self.issued,
                start,
                end,
                waited: Mutex::new(None),
            });
            if let Some(o) = open().as_mut() {
                o.collectives.push(ev.clone());
            }
            Ok(Some(ev))
        }
    }

    impl CollectiveEvents {
        /// The compute stream is about to wait for this collective.
        pub(crate) fn waiting(&self, compute: &CudaStream) {
            let mut w = self.waited.lock().unwrap_or_else(|p| p.into_inner());
            if w.is_none() && is_active() {
                *w = timed(compute).ok();
            }
        }
    }

    pub(super) fn end(device: &Device) -> Result<Option<Timeline>> {
        let Some(stream) = compute_stream(device) else {
            return Ok(None);
        };
        ACTIVE.store(false, Ordering::Release);
        let Some(o) = open().take() else {
            return Ok(None);
        };
        let last = timed(&stream)?;
        o.ctx
            .bind_to_thread()
            .map_err(|e| err("binding the CUDA context", e))?;
        last.synchronize()
            .map_err(|e| err("waiting for the traced work", e))?;
        let at = |e: &CudaEvent| -> Result<f64> {
            e.synchronize()
                .map_err(|e| err("waiting for a timing event", e))?;
            o.base
                .elapsed_ms(e)
                .map(f64::from)
                .map_err(|e| err("reading a timing event", e))
        };
        let mut t = Timeline {
            end_ms: at(&last)?,
            ..Timeline::default()
        };
        for (label, e) in &o.marks {
            t.marks.push(Mark {
                label: label.clone(),
                at_ms: at(e)?,
            });
        }
        for c in &o.collectives {
            let waited = c.waited.lock().unwrap_or_else(|p| p.into_inner());
            t.collectives.push(CollectiveSpan {
                op: c.op,
                group: c.group.clone(),
                calls: c.calls,
                bytes: c.bytes,
                issued_ms: at(&c.issued)?,
                start_ms: at(&c.start)?,
                end_ms: at(&c.end)?,
                waited_ms: waited.as_ref().map(&at).transpose()?,
            });
        }
        Ok(Some(t))
    }
}

#[cfg(not(feature = "nccl"))]
mod imp {
    use candle_core::Device;

    use super::Timeline;
    use crate::Result;

    pub(super) fn is_active() -> bool {
        false
    }
    pub(super) fn begin(_device: &Device) -> Result<bool> {
        Ok(false)
    }
    pub(super) fn mark(_device: &Device, _label: String) -> Result<()> {
        Ok(())
    }
    pub(super) fn end(_device: &Device) -> Result<Option<Timeline>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coll(op: &'static str, start: f64, end: f64, waited: Option<f64>) -> CollectiveSpan {
        CollectiveSpan {
            op,
            group: "world".into(),
            calls: 1,
            bytes: 1_000_000,
            issued_ms: start,
            start_ms: start,
            end_ms: end,
            waited_ms: waited,
        }
    }

    #[test]
    fn stalls_and_busy_time_add_up() {
        let t = Timeline {
            marks: vec![
                Mark {
                    label: "fwd 0".into(),
                    at_ms: 0.0,
                },
                Mark {
                    label: "fwd 1".into(),
                    at_ms: 2.0,
                },
            ],
            collectives: vec![
                // Overlapping spans count once; a wait after the end costs nothing.
                coll("all_gather", 0.0, 1.0, Some(0.5)),
                coll("all_gather", 0.5, 1.5, Some(3.0)),
                coll("reduce_scatter", 4.0, 6.0, Some(5.0)),
                coll("reduce_scatter", 7.0, 8.0, None),
            ],
            end_ms: 9.0,
        };
        assert!((t.comm_busy_ms() - 4.5).abs() < 1e-12);
        assert!((t.stall_ms() - 1.5).abs() < 1e-12);
        let s = t.summary();
        assert_eq!(s.len(), 3);
        assert!(
            s[0].starts_with("all_gather on `world`: 2 calls in 2 launches, 2.0 MB, busy 1.50 ms"),
            "{}",
            s[0]
        );
        assert!(s[0].ends_with("compute stalled 0.50 ms"), "{}", s[0]);
        assert!(s[2].contains("communication busy 4.50 ms"), "{}", s[2]);
        let json = t.chrome_json(1);
        assert!(json.contains("\"name\":\"fwd 1\",\"cat\":\"compute\",\"pid\":1,\"tid\":1,\"ts\":2000.000,\"dur\":7000.000"));
        assert!(json.contains("\"name\":\"wait reduce_scatter\""));
        // Valid JSON shape: balanced braces and brackets.
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }

    #[test]
    fn without_a_gpu_nothing_is_recorded() {
        let cpu = Device::Cpu;
        assert!(!begin(&cpu).unwrap());
        assert!(!is_active());
        mark(&cpu, || {
            unreachable!("labels are only built while a trace is open")
        })
        .unwrap();
        assert_eq!(end(&cpu).unwrap(), None);
    }
}
