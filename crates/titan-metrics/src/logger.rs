//! The trainer's entry point: decides when to log, turns [`StepMetrics`] into records, sends
//! them to the console and the sinks, drives the progress bar and draws the end-of-run plot.

use std::path::{Path, PathBuf};

use crate::clock;
use crate::config::MetricsConfig;
use crate::console::{ConsoleSink, Palette};
use crate::error::{Error, Result};
use crate::jsonl::JsonlSink;
use crate::plot::{self, History};
use crate::progress::Progress;
use crate::record::MetricRecord;
use crate::sink::MetricSink;
use crate::step::{self, StepMetrics, ValidationMetrics};
use crate::tags;
use crate::tensorboard::TensorBoardSink;

/// Logs training metrics as torchtitan does, to the console and to every sink.
///
/// The console line is logged on every rank (the trainer's tracing filter picks which ranks
/// print, as torchtitan's `LOG_RANK` does); files, the progress bar and the plot come only from
/// the writing rank ([`MetricsConfig::writes_on_this_rank`]). Sinks added with
/// [`MetricsLogger::add_sink`] follow the same rule.
pub struct MetricsLogger {
    config: MetricsConfig,
    flops_per_token: f64,
    peak_flops: Option<f64>,
    palette: Palette,
    console: ConsoleSink,
    sinks: Vec<Box<dyn MetricSink>>,
    history: History,
    progress: Progress,
    tensorboard_dir: Option<PathBuf>,
    jsonl_path: Option<PathBuf>,
    finished: bool,
}

impl MetricsLogger {
    /// Build the logger and, on the writing rank, open its files. `flops_per_token` is the
    /// model's training FLOPs per token (torchtitan's `num_flops_per_token`); `peak_flops` is
    /// the device's peak ([`crate::peak_flops`]), `None` on CPU, where MFU prints `n/a`.
    pub fn new(
        config: MetricsConfig,
        flops_per_token: f64,
        peak_flops: Option<f64>,
    ) -> Result<Self> {
        validate(&config, flops_per_token, peak_flops)?;
        let palette = Palette::for_choice(config.color);
        let writes_here = config.writes_on_this_rank();
        let mut sinks: Vec<Box<dyn MetricSink>> = Vec::new();
        let mut tensorboard_dir = None;
        let mut jsonl_path = None;
        if writes_here {
            if config.enable_tensorboard {
                let mut dir = config
                    .dump_folder
                    .join(&config.save_tb_folder)
                    .join(clock::folder_stamp(clock::unix_time_secs() as u64));
                if !config.rank_0_only {
                    dir = dir.join(format!("rank_{}", config.rank));
                }
                sinks.push(Box::new(TensorBoardSink::create(&dir)?));
                tensorboard_dir = Some(dir);
            }
            if config.enable_jsonl {
                let path = config.per_rank_file("metrics", "jsonl");
                sinks.push(Box::new(JsonlSink::open(&path)?));
                jsonl_path = Some(path);
            }
        }
        let progress = Progress::new(
            config.total_steps,
            config.start_step,
            config.enable_progress && writes_here,
        );
        Ok(Self {
            config,
            flops_per_token,
            peak_flops,
            palette,
            console: ConsoleSink::new(palette),
            sinks,
            history: History::default(),
            progress,
            tensorboard_dir,
            jsonl_path,
            finished: false,
        })
    }

    /// Add a sink (a database, a web dashboard). It receives every record from now on, on the
    /// writing rank only.
    pub fn add_sink(&mut self, sink: Box<dyn MetricSink>) {
        self.sinks.push(sink);
    }

    /// torchtitan's rule: log step 1 and every `log_freq` steps.
    pub fn should_log(&self, step: u64) -> bool {
        step == 1 || step % self.config.log_freq == 0
    }

    /// Move the progress bar to `step` (call every step; logging steps do it themselves).
    pub fn set_progress(&self, step: u64) {
        self.progress.set_step(step);
    }

    /// Log one training step: console line, sinks, progress bar, plot history.
    pub fn log_step(&mut self, metrics: &StepMetrics) -> Result<()> {
        let record = step::train_record(
            metrics,
            self.config.non_data_parallel_size,
            self.flops_per_token,
            self.peak_flops,
        )?;
        let x = metrics.step as f64;
        self.history.train_loss.push((x, metrics.loss));
        if let Some(tps) = record.get(tags::THROUGHPUT_TPS) {
            self.history.throughput.push((x, tps));
        }
        self.progress.set_step(metrics.step);
        self.progress
            .set_message(format!("loss {:.4}", metrics.loss));
        self.dispatch(&record)
    }

    /// Log a validation pass: console line and sinks, and a point on the plot's loss panel.
    pub fn log_validation(&mut self, metrics: &ValidationMetrics) -> Result<()> {
        let record = step::validation_record(metrics, self.config.non_data_parallel_size)?;
        self.history
            .validation_loss
            .push((metrics.step as f64, metrics.loss));
        self.dispatch(&record)
    }

    /// End of the run: close the sinks, clear the bar and, if enabled on the writing rank,
    /// write the plot. Returns the plot's path when one was written. A sink that fails to close
    /// does not stop the plot; its error is returned afterwards. Calling it twice is harmless.
    pub fn finish(&mut self) -> Result<Option<PathBuf>> {
        if self.finished {
            return Ok(None);
        }
        self.finished = true;
        self.progress.finish();
        let mut first_error = None;
        for sink in &mut self.sinks {
            if let Err(e) = sink.close() {
                tracing::error!("{e}");
                first_error.get_or_insert(e);
            }
        }
        let wants_plot = self.config.enable_plot && self.config.writes_on_this_rank();
        let plot = if wants_plot && !self.history.is_empty() {
            let path = self.plot_path();
            plot::write_svg(&path, &self.config.plot_title, &self.history)?;
            tracing::info!("Metrics plot written to {}", path.display());
            Some(path)
        } else {
            None
        };
        first_error.map_or(Ok(plot), Err)
    }

    /// The palette console lines use (for the trainer's own coloured lines, e.g. startup).
    pub fn palette(&self) -> &Palette {
        &self.palette
    }

    /// Whether this rank writes files, the bar and the plot.
    pub fn writes_on_this_rank(&self) -> bool {
        self.config.writes_on_this_rank()
    }

    /// The folder of this run's TensorBoard event file, when TensorBoard is on here.
    pub fn tensorboard_dir(&self) -> Option<&Path> {
        self.tensorboard_dir.as_deref()
    }

    /// The JSONL file, when JSONL is on here.
    pub fn jsonl_path(&self) -> Option<&Path> {
        self.jsonl_path.as_deref()
    }

    /// Where [`MetricsLogger::finish`] writes the plot.
    pub fn plot_path(&self) -> PathBuf {
        self.config.per_rank_file("metrics_plot", "svg")
    }

    /// The points gathered for the plot so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// Console on every rank; sinks on the writing rank. Every sink gets the record even if
    /// one fails; the first failure is returned.
    fn dispatch(&mut self, record: &MetricRecord) -> Result<()> {
        if self.finished {
            return Err(Error::InvalidInput {
                field: "MetricsLogger",
                value: format!("record for step {}", record.step),
                fix: "log steps before calling MetricsLogger::finish, which closes the sinks",
            });
        }
        self.console.write(record)?;
        if !self.config.writes_on_this_rank() {
            return Ok(());
        }
        let mut first_error = None;
        for sink in &mut self.sinks {
            if let Err(e) = sink.write(record).and_then(|()| sink.flush()) {
                tracing::error!("{e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for MetricsLogger {
    fn drop(&mut self) {
        if !self.finished {
            for sink in &mut self.sinks {
                if let Err(e) = sink.close() {
                    tracing::error!("{e}");
                }
            }
        }
    }
}

fn validate(config: &MetricsConfig, flops_per_token: f64, peak_flops: Option<f64>) -> Result<()> {
    if config.log_freq == 0 {
        return Err(Error::InvalidConfig {
            key: "metrics.log_freq",
            value: "0".to_string(),
            fix: "set it to 1 or more (log every N steps)",
        });
    }
    if !(flops_per_token.is_finite() && flops_per_token > 0.0) {
        return Err(Error::InvalidInput {
            field: "flops_per_token",
            value: flops_per_token.to_string(),
            fix: "pass the model's positive training FLOPs per token (6 * non-embedding params + attention term)",
        });
    }
    if let Some(peak) = peak_flops {
        if !(peak.is_finite() && peak > 0.0) {
            return Err(Error::InvalidInput {
                field: "peak_flops",
                value: peak.to_string(),
                fix: "pass the device's positive peak FLOP/s (titan_metrics::peak_flops), or None for CPU",
            });
        }
    }
    Ok(())
}
