//! A bytes-per-second progress bar for saves, loads and conversions that take longer than a
//! second, drawn only when stderr is a terminal (log files and CI stay clean).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shown only after this long, so quick operations print nothing.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Progress over a known number of bytes.
pub struct ByteProgress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl ByteProgress {
    /// Progress for `label` over `total` bytes; `interactive = false` never draws (background
    /// writers must not draw over training logs).
    pub fn new(label: impl Into<String>, total: u64, interactive: bool) -> Self {
        Self {
            label: label.into(),
            total,
            done: 0,
            started: Instant::now(),
            enabled: interactive && std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    /// `n` more bytes are done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        if self.enabled && self.started.elapsed() >= SHOW_AFTER {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::with_draw_target(Some(self.total), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message(self.label.clone())
                .with_elapsed(self.started.elapsed());
            bar.set_position(self.done);
            self.bar = Some(bar);
        }
    }

    /// Clear the bar, if one was drawn.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
