//! Peak dense BF16 FLOP/s per device, the denominator of MFU, looked up by device name.
//!
//! Mirrors torchtitan's `tools/utils.py::get_peak_flops` (v0.2.2, plus the entries 0.3 added):
//! the first substring that matches wins, so the order of checks matters ("H200" before "H20",
//! "GB200" before "B200"). Two deliberate differences: a CPU has no entry (MFU prints `n/a`
//! instead of pretending to be an A100), and "L40S" is matched in the case CUDA reports it
//! (torchtitan only checks "l40s"). torchtitan also asks `lspci` for the H100 variant; CUDA's
//! device name ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H100 80GB HBM3") already says it.

/// The value torchtitan assumes for a GPU it does not know: an A100's 312 TFLOP/s.
pub const FALLBACK_PEAK_FLOPS: f64 = 312e12;

/// Peak FLOP/s for MFU: `None` for a CPU, the table's value for a known accelerator, else
/// torchtitan's A100 fallback with a warning.
pub fn peak_flops(device_name: &str) -> Option<f64> {
    if is_cpu(device_name) {
        return None;
    }
    match peak_flops_from_table(device_name) {
        Some(flops) => Some(flops),
        None => {
            tracing::warn!("Peak flops undefined for: {device_name}, fallback to A100");
            Some(FALLBACK_PEAK_FLOPS)
        }
    }
}

/// The table alone: `None` when no entry matches `device_name`.
pub fn peak_flops_from_table(device_name: &str) -> Option<f64> {
    let has = |needle: &str| device_name.contains(needle);
    let flops = if has("A100") {
        312e12
    } else if has("A6000") {
        // 309.7 TFLOP/s on the datasheet is with sparsity; dense is half.
        154.85e12
    } else if has("H100") {
        if has("NVL") {
            835e12
        } else if has("PCIe") {
            756e12
        } else {
            // SXM and any other variant.
            989e12
        }
    } else if has("H200") {
        989e12
    } else if has("H20") {
        148e12
    } else if has("GB200") || has("GB300") {
        2.5e15
    } else if has("B300") || has("B200") {
        2.25e15
    } else if has("MI355X") {
        2500e12
    } else if has("MI300X") || has("MI325X") {
        1300e12
    } else if has("MI250X") {
        // Per GCD.
        191.5e12
    } else if has("Data Center GPU Max 1550") {
        // 512 ops x compute units x 1.3 GHz; torchtitan asks the device for its compute units,
        // which a name cannot tell, so this assumes full-EU mode (512 units, 340.8 TFLOP/s).
        // Pass an explicit peak to the logger for standard-EU mode (448 units).
        512.0 * 512.0 * 1300e6
    } else if has("L40S") || has("l40s") {
        362e12
    } else if device_name.starts_with("TPU") {
        tpu_peak_flops(device_name)?
    } else {
        return None;
    };
    Some(flops)
}

/// Google TPU generations, dense BF16 per device (v7 exposes each of its two cores as a device).
fn tpu_peak_flops(device_name: &str) -> Option<f64> {
    let has = |needle: &str| device_name.contains(needle);
    if has("v4") {
        Some(275e12)
    } else if has("v5e") {
        Some(197e12)
    } else if has("v5p") {
        Some(459e12)
    } else if has("v6e") {
        Some(918e12)
    } else if has("v7") {
        Some(2307e12 / 2.0)
    } else {
        None
    }
}

/// Whether a device name denotes the host CPU (as candle and the trainer spell it).
fn is_cpu(device_name: &str) -> bool {
    let name = device_name.trim().to_ascii_lowercase();
    name == "cpu"
        || name.starts_with("cpu ")
        || name.starts_with("cpu:")
        || name.starts_with("cpu(")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_names_as_cuda_reports_them() {
        assert_eq!(peak_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_flops("NVIDIA H100 NVL"), Some(835e12));
        assert_eq!(peak_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(peak_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_flops("NVIDIA H20"), Some(148e12));
        assert_eq!(peak_flops("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_flops("NVIDIA RTX A6000"), Some(154.85e12));
        assert_eq!(peak_flops("NVIDIA B200"), Some(2.25e15));
        assert_eq!(peak_flops("NVIDIA GB200"), Some(2.5e15));
        assert_eq!(peak_flops("NVIDIA L40S"), Some(362e12));
    }

    #[test]
    fn amd_intel_and_tpu_entries() {
        assert_eq!(peak_flops("AMD Instinct MI300X"), Some(1300e12));
        assert_eq!(peak_flops("AMD Instinct MI325X"), Some(1300e12));
        assert_eq!(peak_flops("AMD Instinct MI355X"), Some(2500e12));
        assert_eq!(peak_flops("AMD Instinct MI250X"), Some(191.5e12));
        assert_eq!(
            peak_flops("Intel(R) Data Center GPU Max 1550"),
            Some(512.0 * 512.0 * 1.3e9)
        );
        assert_eq!(peak_flops("TPU v5p"), Some(459e12));
        assert_eq!(peak_flops("TPU v7"), Some(1153.5e12));
    }

    #[test]
    fn cpu_has_no_peak_and_unknown_gpu_falls_back_to_a100() {
        assert_eq!(peak_flops("cpu"), None);
        assert_eq!(peak_flops("CPU"), None);
        assert_eq!(peak_flops("cpu:0"), None);
        assert_eq!(peak_flops_from_table("NVIDIA GeForce RTX 4090"), None);
        assert_eq!(
            peak_flops("NVIDIA GeForce RTX 4090"),
            Some(FALLBACK_PEAK_FLOPS)
        );
        assert_eq!(peak_flops_from_table("TPU v3"), None);
    }
}
