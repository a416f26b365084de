//! A step progress bar (step/total, elapsed, ETA) on stderr, drawn only when stderr is a
//! terminal, and a stdout writer that hides the bar while a log line prints.
//!
//! One bar per process: it is registered globally so that [`ConsoleWriter`], which a trainer
//! hands to its tracing subscriber (`.with_writer(titan_metrics::ConsoleWriter::default)`),
//! can find it without being wired to the logger. Hiding is reentrant: a line printed while the
//! bar is already hidden (the console sink hides it, then the subscriber's writer runs) just
//! prints, instead of deadlocking on indicatif's lock.

use std::cell::Cell;
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar currently drawn by this process, if any.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

thread_local! {
    /// Whether this thread is inside a suspend already.
    static SUSPENDED: Cell<bool> = const { Cell::new(false) };
}

/// Kept under 80 columns with its message (`loss 9.9841`), so the bar never wraps.
const TEMPLATE: &str =
    "{bar:25.cyan/blue} {pos}/{len} steps [{elapsed_precise} < ETA {eta_precise}] {msg}";

/// The training progress bar; drawing nothing when disabled or when stderr is not a terminal.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for steps `1..=total_steps`, resuming after `start_step` steps already done.
    /// Draws only if `enabled` and stderr is a terminal.
    pub fn new(total_steps: u64, start_step: u64, enabled: bool) -> Self {
        if !enabled || total_steps == 0 || !io::stderr().is_terminal() {
            return Self { bar: None };
        }
        Self::with_target(total_steps, start_step, ProgressDrawTarget::stderr())
    }

    /// A bar drawing to `target`, registered as the process's active bar.
    fn with_target(total_steps: u64, start_step: u64, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total_steps), target);
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(start_step.min(total_steps));
        // A resumed run jumps to start_step at once; the ETA must not count that as speed.
        bar.reset_eta();
        if let Ok(mut active) = ACTIVE_BAR.lock() {
            *active = Some(bar.clone());
        }
        Self { bar: Some(bar) }
    }

    /// Whether a bar is being drawn.
    pub fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }

    /// Move the bar to `step` (steps completed).
    pub fn set_step(&self, step: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
    }

    /// Text after the ETA, e.g. the last loss.
    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    /// Remove the bar from the terminal and unregister it.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut active) = ACTIVE_BAR.lock() {
                *active = None;
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Run `f` with the active progress bar hidden (or just run it when there is none).
pub fn suspend_bar<R>(f: impl FnOnce() -> R) -> R {
    let bar = if SUSPENDED.with(Cell::get) {
        None
    } else {
        ACTIVE_BAR.lock().ok().and_then(|active| active.clone())
    };
    match bar {
        None => f(),
        Some(bar) => {
            // Reset the flag even if `f` panics.
            struct Unsuspend;
            impl Drop for Unsuspend {
                fn drop(&mut self) {
                    SUSPENDED.with(|s| s.set(false));
                }
            }
            SUSPENDED.with(|s| s.set(true));
            let _guard = Unsuspend;
            bar.suspend(f)
        }
    }
}

/// Stdout that hides the progress bar while it writes, for a tracing subscriber's writer:
/// `tracing_subscriber::fmt().with_writer(titan_metrics::ConsoleWriter::default)`.
#[derive(Debug, Default)]
pub struct ConsoleWriter;

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        suspend_bar(|| io::stdout().lock().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        suspend_bar(|| io::stdout().lock().write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_when_disabled_or_not_a_terminal() {
        let progress = Progress::new(100, 0, false);
        assert!(!progress.is_drawn());
        progress.set_step(5);
        assert_eq!(suspend_bar(|| 7), 7);
    }

    #[test]
    fn nested_suspend_does_not_deadlock() {
        let mut progress = Progress::with_target(10, 2, ProgressDrawTarget::hidden());
        assert!(progress.is_drawn());
        progress.set_step(3);
        let value = suspend_bar(|| suspend_bar(|| 42));
        assert_eq!(value, 42);
        let mut writer = ConsoleWriter;
        suspend_bar(|| writer.write_all(b"").unwrap());
        progress.finish();
        assert!(!progress.is_drawn());
    }
}
