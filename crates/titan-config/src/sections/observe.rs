//! Observability sections: `[profiling]` and `[metrics]`.

use crate::declare::section;

section! {
    /// Profiler traces and memory snapshots.
    pub struct Profiling {
        /// Whether to enable the profiler.
        pub enable_profiling: bool = false,
        /// Trace files location, under `job.dump_folder`.
        pub save_traces_folder: String = String::from("profile_traces"),
        /// How often to collect profile traces, in iterations.
        pub profile_freq: usize = 10,
        /// Steps the profiler is active for in each profiling cycle.
        pub profiler_active: usize = 1,
        /// Warmup steps before the active steps of each profiling cycle.
        pub profiler_warmup: usize = 3,
        /// Whether to dump memory snapshots.
        pub enable_memory_snapshot: bool = false,
        /// Memory snapshot files location, under `job.dump_folder`.
        pub save_memory_snapshot_folder: String = String::from("memory_snapshot"),
    }
}

section! {
    /// Training metrics: the console log line and the metric sinks.
    pub struct Metrics {
        /// How often to log metrics, in iterations (step 1 is always logged).
        pub log_freq: usize = 10,
        /// Whether to log metrics to TensorBoard.
        pub enable_tensorboard: bool = false,
        /// Whether to disable color printing in logs.
        pub disable_color_printing: bool = false,
        /// Folder to dump TensorBoard states, under `job.dump_folder`.
        pub save_tb_folder: String = String::from("tb"),
        /// Whether to save metrics for all ranks instead of only rank 0 (or the first rank of the last pipeline stage).
        pub save_for_all_ranks: bool = false,
        /// Whether to log metrics to Weights & Biases.
        pub enable_wandb: bool = false,
        /// (Titan) Whether to write one JSON line of metrics per logged step to `metrics.jsonl` in `job.dump_folder`.
        pub enable_jsonl: bool = true,
        /// (Titan) Whether to draw an SVG plot of the run (loss, throughput) into `job.dump_folder` at the end.
        pub enable_plot: bool = true,
    }
}
