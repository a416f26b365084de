//! Choosing the device and the compute dtype from `training.device` and
//! `training.mixed_precision_param`.

use candle_core::{DType, Device};
use titan_config::JobConfig;

use crate::{Error, Result};

/// Where and in what precision a run computes.
#[derive(Debug, Clone)]
pub struct DeviceChoice {
    pub device: Device,
    /// The dtype of parameter compute copies and activations (bf16 on GPU by default; always
    /// f32 on CPU, where bf16 matmuls are emulated and slow).
    pub compute_dtype: DType,
    /// A name for logs and for the peak-FLOPs table ("cpu", "NVIDIA H100 80GB HBM3").
    pub name: String,
    /// Device memory in bytes, when known.
    pub capacity_bytes: Option<u64>,
}

impl DeviceChoice {
    pub fn is_cuda(&self) -> bool {
        self.device.is_cuda()
    }
}

/// Pick the device: `cpu`, `cuda` (error when unavailable), or `auto` (CUDA when this build
/// has it and a GPU answers, else CPU). `local_rank` picks the GPU.
pub fn choose_device(cfg: &JobConfig, local_rank: usize) -> Result<DeviceChoice> {
    use titan_config::Device as Want;
    let cpu = || DeviceChoice {
        device: Device::Cpu,
        compute_dtype: DType::F32,
        name: "cpu".into(),
        capacity_bytes: None,
    };
    match cfg.training.device {
        Want::Cpu => Ok(cpu()),
        Want::Cuda => cuda(cfg, local_rank),
        Want::Auto => match cuda(cfg, local_rank) {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::debug!("no CUDA device ({e}); training on the CPU");
                Ok(cpu())
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda(cfg: &JobConfig, local_rank: usize) -> Result<DeviceChoice> {
    // Opens the GPU with event tracking off and a memory pool that keeps freed blocks
    // (titan_core::cuda); a missing CUDA library becomes an error naming it.
    let (device, info) = titan_core::cuda::open_device(local_rank).map_err(|e| {
        Error::Device(format!("training.device = \"cuda\": GPU {local_rank} could not be opened ({e}); check the driver and CUDA_VISIBLE_DEVICES"))
    })?;
    let compute_dtype = match cfg.training.mixed_precision_param {
        titan_config::FloatDtype::Bfloat16 => DType::BF16,
        titan_config::FloatDtype::Float32 => DType::F32,
    };
    Ok(DeviceChoice {
        device,
        compute_dtype,
        name: info.name,
        capacity_bytes: Some(info.total_bytes),
    })
}

/// Peak memory since the previous call, for the step log line (`None` on CPU), then the peaks
/// restart, as torchtitan resets its peak stats after each log. Active bytes are the CUDA
/// pool's peak in-use bytes, reserved bytes its peak mapped bytes; the pool neither retries
/// nor counts out-of-memory failures, so those two stay 0.
pub fn memory_stats(choice: &DeviceChoice) -> Option<titan_metrics::MemoryStats> {
    #[cfg(feature = "cuda")]
    if choice.is_cuda() {
        return match titan_core::cuda::pool_stats(&choice.device) {
            Ok(stats) => {
                if let Err(e) = titan_core::cuda::reset_peak(&choice.device) {
                    tracing::warn!("could not reset CUDA peak memory counters: {e}");
                }
                Some(titan_metrics::MemoryStats {
                    max_active_bytes: stats.used_high_bytes,
                    max_reserved_bytes: stats.reserved_high_bytes,
                    capacity_bytes: choice.capacity_bytes.unwrap_or(0),
                    num_alloc_retries: 0,
                    num_ooms: 0,
                })
            }
            Err(e) => {
                tracing::warn!("could not read CUDA memory statistics: {e}");
                None
            }
        };
    }
    let _ = choice;
    None
}

#[cfg(not(feature = "cuda"))]
fn cuda(_cfg: &JobConfig, _local_rank: usize) -> Result<DeviceChoice> {
    Err(Error::Device(
        "training.device = \"cuda\", but this binary was built without CUDA: rebuild with `--features cuda` (see README, \"Building for CUDA\") or set --training.device cpu".into(),
    ))
}
