//! The numbers the trainer hands over at a log step, and the metrics derived from them
//! (tps, TFLOP/s, MFU, step time, data-loading share, memory in GiB), in torchtitan's order.

use crate::error::{Error, Result};
use crate::memory::MemoryStats;
use crate::record::{MetricRecord, RecordKind};
use crate::tags;
use crate::window::WindowStats;

/// What the trainer knows at a log step of training.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    /// Global average loss: loss summed over all ranks' valid tokens / global valid tokens.
    pub loss: f64,
    /// Largest per-rank mean loss (torchtitan's `global_max_loss`).
    pub max_loss: f64,
    /// Gradient norm (after clipping, as torchtitan logs it).
    pub grad_norm: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Tokens seen by the whole job since step 1 (torchtitan's `n_tokens_seen`).
    pub tokens_seen: u64,
    /// Tokens, steps and times since the previous log.
    pub window: WindowStats,
    /// Peak device memory since the previous log; `None` where there is no allocator to ask (CPU).
    pub memory: Option<MemoryStats>,
    /// More tagged values to log after the standard ones (e.g. `lr/AdamW/1`).
    pub extra: Vec<(String, f64)>,
}

/// What the trainer knows after a validation pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationMetrics {
    pub step: u64,
    /// Token-weighted mean validation loss.
    pub loss: f64,
    /// Tokens and time of the validation pass, for its tps.
    pub window: Option<WindowStats>,
    pub memory: Option<MemoryStats>,
}

impl ValidationMetrics {
    /// Validation loss alone, without throughput or memory.
    pub fn new(step: u64, loss: f64) -> Self {
        Self {
            step,
            loss,
            window: None,
            memory: None,
        }
    }
}

/// Tokens per second per device, TFLOP/s and MFU of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub tps: f64,
    pub tflops: f64,
    /// `None` when the device has no known peak (CPU).
    pub mfu_pct: Option<f64>,
}

/// torchtitan's formulas: `tps = tokens / (elapsed * non_data_parallel_size)`,
/// `tflops = flops_per_token * tps / 1e12`, `mfu = 100 * flops_per_token * tps / peak`.
pub fn throughput(
    tokens: u64,
    elapsed_secs: f64,
    non_data_parallel_size: u64,
    flops_per_token: f64,
    peak_flops: Option<f64>,
) -> Result<Throughput> {
    check_elapsed(elapsed_secs)?;
    let tps = tokens as f64 / (elapsed_secs * non_data_parallel_size.max(1) as f64);
    Ok(Throughput {
        tps,
        tflops: flops_per_token * tps / 1e12,
        mfu_pct: peak_flops.map(|peak| 100.0 * flops_per_token * tps / peak),
    })
}

/// Build the record of a training log step. `mfu(%)` is left out without a peak, memory tags
/// without memory stats, and the data-loading mean when no batch was fetched.
pub(crate) fn train_record(
    metrics: &StepMetrics,
    non_data_parallel_size: u64,
    flops_per_token: f64,
    peak_flops: Option<f64>,
) -> Result<MetricRecord> {
    let window = &metrics.window;
    let rates = throughput(
        window.tokens,
        window.elapsed_secs,
        non_data_parallel_size,
        flops_per_token,
        peak_flops,
    )?;
    if window.steps == 0 {
        return Err(Error::InvalidInput {
            field: "StepMetrics.window.steps",
            value: "0".to_string(),
            fix: "count the optimizer steps of the window (LogWindow::record_step after each step)",
        });
    }
    let mut record = MetricRecord::new(metrics.step, RecordKind::Train);
    record.push(tags::GLOBAL_AVG_LOSS, metrics.loss);
    record.push(tags::GLOBAL_MAX_LOSS, metrics.max_loss);
    record.push(tags::GRAD_NORM, metrics.grad_norm);
    record.push(tags::THROUGHPUT_TPS, rates.tps);
    record.push(tags::TFLOPS, rates.tflops);
    if let Some(mfu) = rates.mfu_pct {
        record.push(tags::MFU_PCT, mfu);
    }
    // torchtitan divides by log_freq, which is wrong for the window ending at step 1 (and at
    // log_freq, which holds log_freq - 1 steps); the window's own step count is exact.
    record.push(
        tags::END_TO_END_SECS,
        window.elapsed_secs / window.steps as f64,
    );
    if window.batches > 0 {
        record.push(
            tags::DATA_LOADING_SECS,
            window.data_loading_secs / window.batches as f64,
        );
    }
    record.push(
        tags::DATA_LOADING_PCT,
        100.0 * window.data_loading_secs / window.elapsed_secs,
    );
    if let Some(memory) = &metrics.memory {
        let report = memory.report()?;
        warn_on_allocator_trouble(report.num_alloc_retries, report.num_ooms);
        record.push(tags::MAX_ACTIVE_GIB, report.max_active_gib);
        record.push(tags::MAX_ACTIVE_PCT, report.max_active_pct);
        record.push(tags::MAX_RESERVED_GIB, report.max_reserved_gib);
        record.push(tags::MAX_RESERVED_PCT, report.max_reserved_pct);
        record.push(tags::NUM_ALLOC_RETRIES, report.num_alloc_retries as f64);
        record.push(tags::NUM_OOMS, report.num_ooms as f64);
    }
    record.push(tags::N_TOKENS_SEEN, metrics.tokens_seen as f64);
    record.push(tags::LR, metrics.lr);
    for (tag, value) in &metrics.extra {
        record.push(tag.clone(), *value);
    }
    Ok(record)
}

/// Build the record of a validation pass, with torchtitan's `validation_metrics/...` tags.
pub(crate) fn validation_record(
    metrics: &ValidationMetrics,
    non_data_parallel_size: u64,
) -> Result<MetricRecord> {
    let mut record = MetricRecord::new(metrics.step, RecordKind::Validation);
    record.push(tags::VALIDATION_LOSS, metrics.loss);
    if let Some(window) = &metrics.window {
        check_elapsed(window.elapsed_secs)?;
        let tps =
            window.tokens as f64 / (window.elapsed_secs * non_data_parallel_size.max(1) as f64);
        record.push(tags::VALIDATION_THROUGHPUT_TPS, tps);
    }
    if let Some(memory) = &metrics.memory {
        let report = memory.report()?;
        record.push(tags::VALIDATION_MAX_ACTIVE_GIB, report.max_active_gib);
        record.push(tags::VALIDATION_MAX_ACTIVE_PCT, report.max_active_pct);
        record.push(tags::VALIDATION_MAX_RESERVED_GIB, report.max_reserved_gib);
        record.push(tags::VALIDATION_MAX_RESERVED_PCT, report.max_reserved_pct);
    }
    Ok(record)
}

fn check_elapsed(elapsed_secs: f64) -> Result<()> {
    if elapsed_secs.is_finite() && elapsed_secs > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            field: "window.elapsed_secs",
            value: elapsed_secs.to_string(),
            fix: "pass the positive wall time since the previous log (LogWindow::take measures it)",
        })
    }
}

/// torchtitan warns on every log step where the allocator struggled.
fn warn_on_allocator_trouble(num_alloc_retries: u64, num_ooms: u64) {
    if num_alloc_retries > 0 {
        tracing::warn!("{num_alloc_retries} device memory allocation retries.");
    }
    if num_ooms > 0 {
        tracing::warn!("{num_ooms} device OOM errors thrown.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tokens: u64, steps: u64, elapsed: f64, loading: f64, batches: u64) -> WindowStats {
        WindowStats {
            tokens,
            steps,
            elapsed_secs: elapsed,
            data_loading_secs: loading,
            batches,
        }
    }

    #[test]
    fn mfu_math_matches_torchtitan_formulas() {
        // Anchor run: 1B shape, 8.220e9 FLOPs/token, 42,785 tokens/s on an H100 SXM (989e12)
        // gives 351.7 TFLOP/s and 35.6% MFU.
        let rates = throughput(427_850, 10.0, 1, 8.220e9, Some(989e12)).unwrap();
        assert!((rates.tps - 42_785.0).abs() < 1e-9);
        assert!((rates.tflops - 351.6927).abs() < 1e-3, "{}", rates.tflops);
        let mfu = rates.mfu_pct.unwrap();
        assert!((mfu - 35.5604).abs() < 1e-4, "{mfu}");
        // tps is per device: tokens are shared by the tp*cp*pp devices of a DP rank.
        let per_device = throughput(1000, 1.0, 4, 1.0, None).unwrap();
        assert_eq!(per_device.tps, 250.0);
        assert_eq!(per_device.mfu_pct, None);
    }

    #[test]
    fn zero_or_nan_elapsed_is_rejected() {
        assert!(throughput(1, 0.0, 1, 1.0, None).is_err());
        let err = throughput(1, f64::NAN, 1, 1.0, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("elapsed_secs"), "{err}");
    }

    #[test]
    fn train_record_has_torchtitan_tags_in_order() {
        let metrics = StepMetrics {
            step: 10,
            loss: 7.5,
            max_loss: 7.75,
            grad_norm: 1.25,
            lr: 3e-4,
            tokens_seen: 163_840,
            window: window(147_456, 9, 4.5, 0.45, 9),
            memory: Some(MemoryStats {
                max_active_bytes: 1 << 30,
                max_reserved_bytes: 2 << 30,
                capacity_bytes: 8 << 30,
                num_alloc_retries: 0,
                num_ooms: 0,
            }),
            extra: vec![("custom".to_string(), 42.0)],
        };
        let record = train_record(&metrics, 1, 1e6, Some(1e12)).unwrap();
        let names: Vec<&str> = record.values.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            names,
            [
                tags::GLOBAL_AVG_LOSS,
                tags::GLOBAL_MAX_LOSS,
                tags::GRAD_NORM,
                tags::THROUGHPUT_TPS,
                tags::TFLOPS,
                tags::MFU_PCT,
                tags::END_TO_END_SECS,
                tags::DATA_LOADING_SECS,
                tags::DATA_LOADING_PCT,
                tags::MAX_ACTIVE_GIB,
                tags::MAX_ACTIVE_PCT,
                tags::MAX_RESERVED_GIB,
                tags::MAX_RESERVED_PCT,
                tags::NUM_ALLOC_RETRIES,
                tags::NUM_OOMS,
                tags::N_TOKENS_SEEN,
                tags::LR,
                "custom",
            ]
        );
        // 147,456 tokens / 4.5 s = 32,768 tps; x 1e6 FLOPs = 0.032768 TFLOP/s = 3.2768% of 1e12.
        assert_eq!(record.get(tags::THROUGHPUT_TPS), Some(32_768.0));
        assert!((record.get(tags::TFLOPS).unwrap() - 0.032768).abs() < 1e-12);
        assert!((record.get(tags::MFU_PCT).unwrap() - 3.2768).abs() < 1e-9);
        assert_eq!(record.get(tags::END_TO_END_SECS), Some(0.5));
        assert!((record.get(tags::DATA_LOADING_SECS).unwrap() - 0.05).abs() < 1e-12);
        assert!((record.get(tags::DATA_LOADING_PCT).unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(record.get(tags::MAX_RESERVED_GIB), Some(2.0));
        assert_eq!(record.get(tags::MAX_RESERVED_PCT), Some(25.0));
        assert_eq!(record.get(tags::N_TOKENS_SEEN), Some(163_840.0));
    }

    #[test]
    fn train_record_on_cpu_omits_mfu_and_memory() {
        let metrics = StepMetrics {
            step: 1,
            loss: 8.0,
            max_loss: 8.0,
            grad_norm: 2.0,
            lr: 1e-4,
            tokens_seen: 100,
            window: window(100, 1, 1.0, 0.0, 0),
            memory: None,
            extra: Vec::new(),
        };
        let record = train_record(&metrics, 1, 1e6, None).unwrap();
        assert_eq!(record.get(tags::MFU_PCT), None);
        assert_eq!(record.get(tags::MAX_RESERVED_GIB), None);
        assert_eq!(record.get(tags::DATA_LOADING_SECS), None);
        assert_eq!(record.get(tags::DATA_LOADING_PCT), Some(0.0));
        assert_eq!(record.get(tags::TFLOPS), Some(1e-4));
    }

    #[test]
    fn train_record_needs_a_step_in_the_window() {
        let metrics = StepMetrics {
            step: 1,
            loss: 8.0,
            max_loss: 8.0,
            grad_norm: 2.0,
            lr: 1e-4,
            tokens_seen: 100,
            window: window(100, 0, 1.0, 0.0, 1),
            memory: None,
            extra: Vec::new(),
        };
        let err = train_record(&metrics, 1, 1e6, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("window.steps"), "{err}");
    }

    #[test]
    fn validation_record_tags() {
        let mut metrics = ValidationMetrics::new(5, 6.25);
        metrics.window = Some(window(2048, 0, 0.5, 0.0, 1));
        let record = validation_record(&metrics, 1).unwrap();
        assert_eq!(record.kind, RecordKind::Validation);
        assert_eq!(record.get(tags::VALIDATION_LOSS), Some(6.25));
        assert_eq!(record.get(tags::VALIDATION_THROUGHPUT_TPS), Some(4096.0));
        assert_eq!(record.get(tags::VALIDATION_MAX_RESERVED_GIB), None);
    }
}
