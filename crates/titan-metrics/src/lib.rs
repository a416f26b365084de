//! Titan's training metrics: torchtitan's log line, MFU, TensorBoard and JSONL files, a
//! progress bar and an end-of-run plot.
//!
//! This crate owns how training numbers are derived (tokens/s per device, TFLOP/s, MFU, step
//! time, data-loading share, memory in GiB), formatted (torchtitan v0.2.2's console lines,
//! digit for digit) and stored (TensorBoard event files written by hand, JSON Lines, SVG). It
//! must NOT know about models, tensors, devices or candle: the trainer hands it plain numbers
//! (FLOPs per token, a device name, byte counts, losses).
//!
//! ```
//! # fn main() -> titan_metrics::Result<()> {
//! use titan_metrics::{peak_flops, MetricsConfig, MetricsLogger, StepMetrics, WindowStats};
//! let dump = std::env::temp_dir().join(format!("titan-metrics-doc-{}", std::process::id()));
//! let config = MetricsConfig { log_freq: 10, dump_folder: dump.clone(), total_steps: 10,
//!                              ..MetricsConfig::default() };
//! let mut logger = MetricsLogger::new(config, 36.8e6, peak_flops("cpu"))?;
//! for step in 1..=10 {
//!     if logger.should_log(step) {
//!         logger.log_step(&StepMetrics {
//!             step, loss: 8.0 / step as f64, max_loss: 8.5 / step as f64, grad_norm: 1.0,
//!             lr: 8e-4, tokens_seen: step * 16_384,
//!             window: WindowStats { tokens: 16_384, steps: 1, elapsed_secs: 0.5,
//!                                   data_loading_secs: 0.01, batches: 1 },
//!             memory: None, extra: Vec::new(),
//!         })?; // logs "step:  1  loss:  8.00000  grad_norm:  1.0000  memory:   n/a  tps: 32,768 ..."
//!     }
//! }
//! let plot = logger.finish()?;
//! assert!(plot.is_some_and(|p| p.exists()));
//! # std::fs::remove_dir_all(dump).ok();
//! # Ok(()) }
//! ```

pub mod clock;
pub mod config;
pub mod console;
pub mod error;
pub mod jsonl;
pub mod logger;
pub mod memory;
pub mod peak_flops;
pub mod plot;
pub mod progress;
pub mod pyfmt;
pub mod record;
pub mod sink;
pub mod step;
pub mod tags;
pub mod tensorboard;
pub mod window;

pub use config::MetricsConfig;
pub use console::{log_startup, ColorChoice, ConsoleSink, Palette, StartupInfo};
pub use error::{Error, Result};
pub use jsonl::JsonlSink;
pub use logger::MetricsLogger;
pub use memory::{MemoryReport, MemoryStats};
pub use peak_flops::{peak_flops, peak_flops_from_table};
pub use plot::History;
pub use progress::{suspend_bar, ConsoleWriter, Progress};
pub use record::{MetricRecord, RecordKind};
pub use sink::MetricSink;
pub use step::{throughput, StepMetrics, Throughput, ValidationMetrics};
pub use tensorboard::{EventFileWriter, TensorBoardSink};
pub use window::{LogWindow, WindowStats};
