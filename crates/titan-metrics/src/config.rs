//! Options of the metrics logger, named after torchtitan's `[metrics]` section where one exists.

use std::path::PathBuf;

use crate::console::ColorChoice;

/// What to log, where and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Log step 1 and every `log_freq` steps (`metrics.log_freq`, default 10).
    pub log_freq: u64,
    /// Write TensorBoard event files (`metrics.enable_tensorboard`, default false).
    pub enable_tensorboard: bool,
    /// Folder under `dump_folder` for event files (`metrics.save_tb_folder`, default "tb"); each
    /// run writes into a `YYYYmmdd-HHMM` folder inside it, as torchtitan does.
    pub save_tb_folder: String,
    /// Write `metrics.jsonl` in `dump_folder` (Titan extension, default true).
    pub enable_jsonl: bool,
    /// The run's output folder (`job.dump_folder`, default "./outputs").
    pub dump_folder: PathBuf,
    /// This process's global rank.
    pub rank: u64,
    /// The rank whose numbers are written: 0, or the first rank of the last pipeline stage
    /// (`(world / pp) * (pp - 1)`) where only that stage has the loss.
    pub metrics_rank: u64,
    /// Only `metrics_rank` writes files (torchtitan's `save_for_all_ranks = false`, the
    /// default). When false every rank writes, into `rank_<r>` folders and file names.
    pub rank_0_only: bool,
    /// Steps of the whole run (`training.steps`), for the progress bar.
    pub total_steps: u64,
    /// Steps already done when this process starts (non-zero when resuming), for the bar.
    pub start_step: u64,
    /// Draw a progress bar when stderr is a terminal (default true).
    pub enable_progress: bool,
    /// Write an SVG of loss and throughput to `dump_folder` at the end (default true).
    pub enable_plot: bool,
    /// Title of the plot.
    pub plot_title: String,
    /// Console colours (`metrics.disable_color_printing = true` maps to `Never`).
    pub color: ColorChoice,
    /// Devices sharing one data-parallel rank's tokens (cp * tp * pp): tps is per device.
    pub non_data_parallel_size: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            log_freq: 10,
            enable_tensorboard: false,
            save_tb_folder: "tb".to_string(),
            enable_jsonl: true,
            dump_folder: PathBuf::from("./outputs"),
            rank: 0,
            metrics_rank: 0,
            rank_0_only: true,
            total_steps: 0,
            start_step: 0,
            enable_progress: true,
            enable_plot: true,
            plot_title: "Titan training".to_string(),
            color: ColorChoice::Auto,
            non_data_parallel_size: 1,
        }
    }
}

impl MetricsConfig {
    /// Whether this rank writes files, bars and plots.
    pub fn writes_on_this_rank(&self) -> bool {
        !self.rank_0_only || self.rank == self.metrics_rank
    }

    /// `name` as written by this rank: `name.ext`, or `name_rank_<r>.ext` when every rank writes.
    pub(crate) fn per_rank_file(&self, stem: &str, extension: &str) -> PathBuf {
        let name = if self.rank_0_only {
            format!("{stem}.{extension}")
        } else {
            format!("{stem}_rank_{}.{extension}", self.rank)
        };
        self.dump_folder.join(name)
    }
}
