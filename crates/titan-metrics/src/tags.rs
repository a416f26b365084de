//! Metric tag names, spelled exactly as torchtitan v0.2.2 logs them to TensorBoard, so curves
//! from both trainers land on the same charts.

pub const GLOBAL_AVG_LOSS: &str = "loss_metrics/global_avg_loss";
pub const GLOBAL_MAX_LOSS: &str = "loss_metrics/global_max_loss";
pub const GRAD_NORM: &str = "grad_norm";
pub const THROUGHPUT_TPS: &str = "throughput(tps)";
pub const TFLOPS: &str = "tflops";
pub const MFU_PCT: &str = "mfu(%)";
pub const END_TO_END_SECS: &str = "time_metrics/end_to_end(s)";
pub const DATA_LOADING_SECS: &str = "time_metrics/data_loading(s)";
pub const DATA_LOADING_PCT: &str = "time_metrics/data_loading(%)";
pub const MAX_ACTIVE_GIB: &str = "memory/max_active(GiB)";
pub const MAX_ACTIVE_PCT: &str = "memory/max_active(%)";
pub const MAX_RESERVED_GIB: &str = "memory/max_reserved(GiB)";
pub const MAX_RESERVED_PCT: &str = "memory/max_reserved(%)";
pub const NUM_ALLOC_RETRIES: &str = "memory/num_alloc_retries";
pub const NUM_OOMS: &str = "memory/num_ooms";
/// v0.2.2 passes these two as `extra_metrics` from the trainer.
pub const N_TOKENS_SEEN: &str = "n_tokens_seen";
pub const LR: &str = "lr";

pub const VALIDATION_LOSS: &str = "validation_metrics/loss";
pub const VALIDATION_THROUGHPUT_TPS: &str = "validation_metrics/throughput(tps)";
pub const VALIDATION_MAX_ACTIVE_GIB: &str = "validation_metrics/memory/max_active(GiB)";
pub const VALIDATION_MAX_ACTIVE_PCT: &str = "validation_metrics/memory/max_active(%)";
pub const VALIDATION_MAX_RESERVED_GIB: &str = "validation_metrics/memory/max_reserved(GiB)";
pub const VALIDATION_MAX_RESERVED_PCT: &str = "validation_metrics/memory/max_reserved(%)";
