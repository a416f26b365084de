//! torchtitan's console lines, character for character: the per-step line, the validation
//! line and the startup lines (model size, FLOPs, peak FLOPS, device capacity).
//!
//! Lines go out through `tracing::info!`. Colours are ANSI codes inside the message, as
//! torchtitan's are; tracing-subscriber (>= 0.3.20) escapes those unless the fmt layer is
//! built with `.with_ansi_sanitization(false)`, so a trainer that wants colours must say so.

use std::io::IsTerminal;

use crate::error::Result;
use crate::memory::{bytes_to_gib, MemoryStats};
use crate::progress::suspend_bar;
use crate::pyfmt;
use crate::record::{MetricRecord, RecordKind};
use crate::sink::MetricSink;
use crate::tags;

/// When to colour console lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorChoice {
    /// Colour when stdout (tracing-subscriber's default writer) is a terminal and `NO_COLOR`
    /// is unset.
    #[default]
    Auto,
    Always,
    /// torchtitan's `metrics.disable_color_printing = true`.
    Never,
}

/// ANSI codes for each colour torchtitan uses, or empty strings for plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Palette {
    pub red: &'static str,
    pub green: &'static str,
    pub yellow: &'static str,
    pub blue: &'static str,
    pub magenta: &'static str,
    pub cyan: &'static str,
    pub orange: &'static str,
    pub turquoise: &'static str,
    pub reset: &'static str,
}

impl Palette {
    /// torchtitan's `Color` (note `reset` restores the foreground only: `ESC[39m`).
    pub const COLOR: Palette = Palette {
        red: "\x1b[31m",
        green: "\x1b[32m",
        yellow: "\x1b[33m",
        blue: "\x1b[34m",
        magenta: "\x1b[35m",
        cyan: "\x1b[36m",
        orange: "\x1b[38;2;180;60;0m",
        turquoise: "\x1b[38;2;54;234;195m",
        reset: "\x1b[39m",
    };

    /// torchtitan's `NoColor`.
    pub const PLAIN: Palette = Palette {
        red: "",
        green: "",
        yellow: "",
        blue: "",
        magenta: "",
        cyan: "",
        orange: "",
        turquoise: "",
        reset: "",
    };

    /// The palette for a colour choice, checking the terminal for [`ColorChoice::Auto`].
    pub fn for_choice(choice: ColorChoice) -> Palette {
        let colored = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        };
        if colored {
            Palette::COLOR
        } else {
            Palette::PLAIN
        }
    }
}

/// The training line: `step: 10  loss:  7.12340  grad_norm:  1.2345  memory:  1.23GiB(2.34%)
/// tps: 12,345  tflops: 12.34  mfu: 3.45%` (torchtitan v0.2.2's f-string, two spaces between
/// fields). Without memory stats it shows `memory:   n/a`, without a peak `mfu: n/a`.
pub fn format_step_line(palette: &Palette, record: &MetricRecord) -> String {
    let p = palette;
    let value = |tag: &str| record.get(tag).unwrap_or(f64::NAN);
    let memory = memory_field(
        record.get(tags::MAX_RESERVED_GIB),
        record.get(tags::MAX_RESERVED_PCT),
    );
    let mfu = match record.get(tags::MFU_PCT) {
        Some(mfu) => format!("{}%", pyfmt::fixed(mfu, 0, 2)),
        None => "n/a".to_string(),
    };
    format!(
        "{}step: {:2}  {}loss: {}  {}grad_norm: {}  {}memory: {}  {}tps: {}  {}tflops: {}  {}mfu: {}{}",
        p.red,
        record.step,
        p.green,
        pyfmt::fixed(value(tags::GLOBAL_AVG_LOSS), 8, 5),
        p.orange,
        pyfmt::fixed(value(tags::GRAD_NORM), 7, 4),
        p.turquoise,
        memory,
        p.blue,
        pyfmt::rounded_grouped(value(tags::THROUGHPUT_TPS)),
        p.cyan,
        pyfmt::fixed_grouped(value(tags::TFLOPS), 2),
        p.magenta,
        mfu,
        p.reset,
    )
}

/// The validation line: `validate step:  5  loss:  6.2500  memory:  1.23GiB(2.34%)  tps: 4,096`.
pub fn format_validation_line(palette: &Palette, record: &MetricRecord) -> String {
    let p = palette;
    let memory = memory_field(
        record.get(tags::VALIDATION_MAX_RESERVED_GIB),
        record.get(tags::VALIDATION_MAX_RESERVED_PCT),
    );
    let tps = match record.get(tags::VALIDATION_THROUGHPUT_TPS) {
        Some(tps) => pyfmt::rounded_grouped(tps),
        None => "n/a".to_string(),
    };
    format!(
        "{}validate step: {:2}  {}loss: {}  {}memory: {}  {}tps: {}{}",
        p.yellow,
        record.step,
        p.green,
        pyfmt::fixed(record.get(tags::VALIDATION_LOSS).unwrap_or(f64::NAN), 7, 4),
        p.turquoise,
        memory,
        p.blue,
        tps,
        p.reset,
    )
}

/// `{gib:5.2f}GiB({pct:.2f}%)`, or `n/a` right-aligned in the same width.
fn memory_field(gib: Option<f64>, pct: Option<f64>) -> String {
    match (gib, pct) {
        (Some(gib), Some(pct)) => format!(
            "{}GiB({}%)",
            pyfmt::fixed(gib, 5, 2),
            pyfmt::fixed(pct, 0, 2)
        ),
        _ => format!("{:>5}", "n/a"),
    }
}

/// `Model llama3 debugmodel size: 6,163,712 total parameters`.
pub fn format_model_size_line(
    palette: &Palette,
    model_name: &str,
    flavor: &str,
    total_params: u64,
) -> String {
    format!(
        "{}Model {model_name} {flavor} {}size: {} total parameters{}",
        palette.blue,
        palette.red,
        pyfmt::int_grouped(i128::from(total_params)),
        palette.reset
    )
}

/// `FLOPs per token: 36,847,616` (Titan's line; torchtitan computes the number silently).
pub fn format_flops_per_token_line(flops_per_token: f64) -> String {
    format!(
        "FLOPs per token: {}",
        pyfmt::rounded_grouped(flops_per_token)
    )
}

/// `Peak FLOPS used for computing MFU: 9.890e+14`, or `n/a` without a peak (CPU).
pub fn format_peak_flops_line(peak_flops: Option<f64>) -> String {
    match peak_flops {
        Some(peak) => format!(
            "Peak FLOPS used for computing MFU: {}",
            pyfmt::scientific(peak, 3)
        ),
        None => {
            "Peak FLOPS used for computing MFU: n/a (no peak known for this device)".to_string()
        }
    }
}

/// `CUDA capacity: NVIDIA H100 80GB HBM3 with 79.19GiB memory`.
pub fn format_device_capacity_line(
    device_type: &str,
    device_name: &str,
    capacity_bytes: u64,
) -> String {
    format!(
        "{} capacity: {device_name} with {}GiB memory",
        device_type.to_uppercase(),
        pyfmt::fixed(bytes_to_gib(capacity_bytes), 0, 2)
    )
}

/// `CUDA memory usage for model: 1.23GiB(1.55%)` (peak reserved after building the model).
pub fn format_model_memory_line(device_type: &str, memory: &MemoryStats) -> Result<String> {
    let report = memory.report()?;
    Ok(format!(
        "{} memory usage for model: {}GiB({}%)",
        device_type.to_uppercase(),
        pyfmt::fixed(report.max_reserved_gib, 0, 2),
        pyfmt::fixed(report.max_reserved_pct, 0, 2)
    ))
}

/// What the trainer knows at startup, for [`log_startup`].
#[derive(Debug, Clone, PartialEq)]
pub struct StartupInfo {
    pub model_name: String,
    pub flavor: String,
    pub total_params: u64,
    pub flops_per_token: f64,
    pub peak_flops: Option<f64>,
    /// `cuda`, `cpu`, ... (printed upper-case, as torchtitan's `device_type.upper()`).
    pub device_type: String,
    pub device_name: String,
    /// Total device memory; `None` leaves out the capacity line.
    pub capacity_bytes: Option<u64>,
    /// Peak memory after the model was built; `None` leaves out the model-memory line.
    pub model_memory: Option<MemoryStats>,
}

/// The startup lines in torchtitan's order, each one `tracing::info!`-logged; also returned.
pub fn log_startup(palette: &Palette, info: &StartupInfo) -> Result<Vec<String>> {
    let mut lines = Vec::with_capacity(5);
    if let Some(capacity) = info.capacity_bytes {
        lines.push(format_device_capacity_line(
            &info.device_type,
            &info.device_name,
            capacity,
        ));
    }
    lines.push(format_model_size_line(
        palette,
        &info.model_name,
        &info.flavor,
        info.total_params,
    ));
    lines.push(format_flops_per_token_line(info.flops_per_token));
    lines.push(format_peak_flops_line(info.peak_flops));
    if let Some(memory) = &info.model_memory {
        lines.push(format_model_memory_line(&info.device_type, memory)?);
    }
    for line in &lines {
        suspend_bar(|| tracing::info!("{line}"));
    }
    Ok(lines)
}

/// Logs each record as torchtitan's console line, hiding the progress bar while it prints.
pub struct ConsoleSink {
    palette: Palette,
}

impl ConsoleSink {
    pub fn new(palette: Palette) -> Self {
        Self { palette }
    }

    /// The line this sink logs for `record`.
    pub fn format(&self, record: &MetricRecord) -> String {
        match record.kind {
            RecordKind::Train => format_step_line(&self.palette, record),
            RecordKind::Validation => format_validation_line(&self.palette, record),
        }
    }
}

impl MetricSink for ConsoleSink {
    fn name(&self) -> &str {
        "console"
    }

    fn write(&mut self, record: &MetricRecord) -> Result<()> {
        let line = self.format(record);
        suspend_bar(|| tracing::info!("{line}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: RecordKind, step: u64, values: &[(&str, f64)]) -> MetricRecord {
        let mut record = MetricRecord::new(step, kind);
        for (tag, value) in values {
            record.push(*tag, *value);
        }
        record
    }

    // Golden strings: what torchtitan v0.2.2's f-string prints for the same values (checked
    // with CPython's format specs `{:2}`, `{:8.5f}`, `{:7.4f}`, `{:5.2f}`, `{:,}`, `{:,.2f}`).
    #[test]
    fn step_line_matches_torchtitan_without_colour() {
        let r = record(
            RecordKind::Train,
            2,
            &[
                (tags::GLOBAL_AVG_LOSS, 12.009_34),
                (tags::GRAD_NORM, 0.5745),
                (tags::THROUGHPUT_TPS, 69_111.4),
                (tags::TFLOPS, 28.68),
                (tags::MFU_PCT, 2.9),
                (tags::MAX_RESERVED_GIB, 65.54),
                (tags::MAX_RESERVED_PCT, 68.99),
            ],
        );
        assert_eq!(
            format_step_line(&Palette::PLAIN, &r),
            "step:  2  loss: 12.00934  grad_norm:  0.5745  memory: 65.54GiB(68.99%)  tps: 69,111  tflops: 28.68  mfu: 2.90%"
        );
    }

    #[test]
    fn step_line_on_cpu_prints_na() {
        let r = record(
            RecordKind::Train,
            100,
            &[
                (tags::GLOBAL_AVG_LOSS, 7.123_456),
                (tags::GRAD_NORM, 1.234_56),
                (tags::THROUGHPUT_TPS, 1_234_567.5),
                (tags::TFLOPS, 1234.567),
            ],
        );
        assert_eq!(
            format_step_line(&Palette::PLAIN, &r),
            "step: 100  loss:  7.12346  grad_norm:  1.2346  memory:   n/a  tps: 1,234,568  tflops: 1,234.57  mfu: n/a"
        );
    }

    #[test]
    fn step_line_with_colour_wraps_fields_in_torchtitan_colours() {
        let r = record(
            RecordKind::Train,
            1,
            &[
                (tags::GLOBAL_AVG_LOSS, 8.0),
                (tags::GRAD_NORM, 1.0),
                (tags::THROUGHPUT_TPS, 10.0),
                (tags::TFLOPS, 0.5),
                (tags::MFU_PCT, 1.0),
                (tags::MAX_RESERVED_GIB, 1.0),
                (tags::MAX_RESERVED_PCT, 2.0),
            ],
        );
        assert_eq!(
            format_step_line(&Palette::COLOR, &r),
            "\x1b[31mstep:  1  \x1b[32mloss:  8.00000  \x1b[38;2;180;60;0mgrad_norm:  1.0000  \
             \x1b[38;2;54;234;195mmemory:  1.00GiB(2.00%)  \x1b[34mtps: 10  \x1b[36mtflops: 0.50  \
             \x1b[35mmfu: 1.00%\x1b[39m"
        );
    }

    #[test]
    fn validation_line_matches_torchtitan() {
        let r = record(
            RecordKind::Validation,
            5,
            &[
                (tags::VALIDATION_LOSS, 6.25),
                (tags::VALIDATION_THROUGHPUT_TPS, 4096.0),
                (tags::VALIDATION_MAX_RESERVED_GIB, 1.5),
                (tags::VALIDATION_MAX_RESERVED_PCT, 1.875),
            ],
        );
        assert_eq!(
            format_validation_line(&Palette::PLAIN, &r),
            "validate step:  5  loss:  6.2500  memory:  1.50GiB(1.88%)  tps: 4,096"
        );
    }

    #[test]
    fn startup_lines() {
        assert_eq!(
            format_model_size_line(&Palette::PLAIN, "llama3", "debugmodel", 6_163_712),
            "Model llama3 debugmodel size: 6,163,712 total parameters"
        );
        assert_eq!(
            format_flops_per_token_line(8.220e9),
            "FLOPs per token: 8,220,000,000"
        );
        assert_eq!(
            format_peak_flops_line(Some(989e12)),
            "Peak FLOPS used for computing MFU: 9.890e+14"
        );
        assert!(format_peak_flops_line(None).contains("n/a"));
        // 85,029,158,912 bytes = 79.19 GiB (an H100 80GB as CUDA reports it).
        assert_eq!(
            format_device_capacity_line("cuda", "NVIDIA H100 80GB HBM3", 85_029_158_912),
            "CUDA capacity: NVIDIA H100 80GB HBM3 with 79.19GiB memory"
        );
        let memory = MemoryStats {
            max_active_bytes: 1 << 30,
            max_reserved_bytes: 3 << 29,
            capacity_bytes: 96 << 30,
            num_alloc_retries: 0,
            num_ooms: 0,
        };
        assert_eq!(
            format_model_memory_line("cuda", &memory).unwrap(),
            "CUDA memory usage for model: 1.50GiB(1.56%)"
        );
    }

    #[test]
    fn startup_lines_in_torchtitan_order() {
        let mut info = StartupInfo {
            model_name: "llama3".to_string(),
            flavor: "debugmodel".to_string(),
            total_params: 6_163_712,
            flops_per_token: 1e6,
            peak_flops: None,
            device_type: "cpu".to_string(),
            device_name: "cpu".to_string(),
            capacity_bytes: None,
            model_memory: None,
        };
        let lines = log_startup(&Palette::PLAIN, &info).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("Model llama3"));
        assert!(lines[2].ends_with("n/a (no peak known for this device)"));
        info.capacity_bytes = Some(1 << 30);
        info.model_memory = Some(MemoryStats {
            max_active_bytes: 0,
            max_reserved_bytes: 1 << 29,
            capacity_bytes: 1 << 30,
            num_alloc_retries: 0,
            num_ooms: 0,
        });
        let lines = log_startup(&Palette::PLAIN, &info).unwrap();
        assert_eq!(lines[0], "CPU capacity: cpu with 1.00GiB memory");
        assert_eq!(lines[4], "CPU memory usage for model: 0.50GiB(50.00%)");
    }
}
