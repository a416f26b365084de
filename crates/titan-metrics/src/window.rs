//! What happened since the previous log line: tokens, steps, wall time and data-loading time.
//!
//! torchtitan keeps these as fields of its metrics processor (`ntokens_since_last_log`,
//! `data_loading_times`, `time_last_log`). Here they are a value the trainer fills and hands
//! over, so the logger's arithmetic is testable without clocks.

use std::time::{Duration, Instant};

/// Totals over one log window, the input of tps, step time and data-loading share.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    /// Tokens this rank consumed (torchtitan: `labels.numel()` summed over fetched batches).
    pub tokens: u64,
    /// Optimizer steps taken in the window.
    pub steps: u64,
    /// Wall time of the window in seconds.
    pub elapsed_secs: f64,
    /// Time spent waiting for batches, summed, in seconds.
    pub data_loading_secs: f64,
    /// Number of batches fetched (the data-loading mean divides by it).
    pub batches: u64,
}

/// Accumulates a [`WindowStats`] while training runs; [`LogWindow::take`] closes the window
/// and starts the next one.
#[derive(Debug, Clone)]
pub struct LogWindow {
    started: Instant,
    totals: WindowStats,
}

impl Default for LogWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl LogWindow {
    /// A window whose clock starts now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            totals: WindowStats::default(),
        }
    }

    /// One batch was fetched: `tokens` of it, after waiting `loading` for it.
    pub fn record_batch(&mut self, tokens: u64, loading: Duration) {
        self.totals.tokens += tokens;
        self.totals.data_loading_secs += loading.as_secs_f64();
        self.totals.batches += 1;
    }

    /// One optimizer step finished.
    pub fn record_step(&mut self) {
        self.totals.steps += 1;
    }

    /// The totals so far, with the wall time since the window started.
    pub fn peek(&self) -> WindowStats {
        WindowStats {
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            ..self.totals
        }
    }

    /// Close the window: return its totals and restart the clock and counters.
    pub fn take(&mut self) -> WindowStats {
        let stats = self.peek();
        *self = Self::new();
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_totals_and_resets() {
        let mut window = LogWindow::new();
        window.record_batch(100, Duration::from_millis(5));
        window.record_batch(50, Duration::from_millis(15));
        window.record_step();
        let stats = window.take();
        assert_eq!(stats.tokens, 150);
        assert_eq!(stats.batches, 2);
        assert_eq!(stats.steps, 1);
        assert!((stats.data_loading_secs - 0.020).abs() < 1e-12);
        assert!(stats.elapsed_secs >= 0.0);
        let next = window.peek();
        assert_eq!((next.tokens, next.batches, next.steps), (0, 0, 0));
        assert_eq!(next.data_loading_secs, 0.0);
    }
}
