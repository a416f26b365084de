//! GPU checks and benchmarks for Titan (programs `gpu_check` and `bench`, feature `run` or
//! `cuda`). This crate owns only measurement: it opens a device, runs the engine's ops and
//! models, and compares or times them. It must not hold numerics of its own (those live in
//! titan-core and titan-models) and is not a dependency of any other crate.

use candle_core::{DType, Device};

pub mod checks_attention;
pub mod checks_elementwise;
pub mod checks_norm;
pub mod checks_optim;
pub mod op_bench;

/// Errors of the GPU programs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] titan_core::Error),
    #[error(transparent)]
    Model(#[from] titan_models::Error),
    #[error(transparent)]
    Optim(#[from] titan_optim::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A bad command-line argument.
    #[error("argument {arg}: {why}")]
    Arg { arg: String, why: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A device opened for a check or a benchmark, with what is known about it.
#[derive(Debug, Clone)]
pub struct OpenDevice {
    pub device: Device,
    pub name: String,
    pub total_bytes: Option<u64>,
}

/// `cpu`, or `cuda` / `cuda:N` (needs feature `cuda`).
pub fn open(spec: &str) -> Result<OpenDevice> {
    if spec == "cpu" {
        return Ok(OpenDevice {
            device: Device::Cpu,
            name: "cpu".into(),
            total_bytes: None,
        });
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .trim_start_matches(':')
            .parse::<usize>()
            .map_err(|_| Error::Arg {
                arg: "--device".into(),
                why: format!("`{spec}` is not cpu, cuda or cuda:N"),
            })?,
        None => {
            return Err(Error::Arg {
                arg: "--device".into(),
                why: format!("`{spec}` is not cpu, cuda or cuda:N"),
            })
        }
    };
    open_cuda(ordinal)
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<OpenDevice> {
    let (device, info) = titan_core::cuda::open_device(ordinal)?;
    Ok(OpenDevice {
        device,
        name: info.name,
        total_bytes: Some(info.total_bytes),
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<OpenDevice> {
    Err(Error::Arg {
        arg: "--device".into(),
        why: "this binary was built without CUDA: build it with scripts/build-cuda.sh".into(),
    })
}

/// Bytes in use / peak used / peak reserved on a CUDA device (`None` on CPU).
pub fn memory(device: &Device) -> Option<(u64, u64, u64)> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return titan_core::cuda::pool_stats(device)
            .ok()
            .map(|s| (s.used_bytes, s.used_high_bytes, s.reserved_high_bytes));
    }
    let _ = device;
    None
}

/// Restart the peak memory counters (no-op on CPU).
pub fn reset_peak(device: &Device) {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        if let Err(e) = titan_core::cuda::reset_peak(device) {
            tracing::warn!("could not reset the pool's peak counters: {e}");
        }
    }
    let _ = device;
}

/// `bf16` / `f32` from the command line.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f32" | "float32" => Ok(DType::F32),
        _ => Err(Error::Arg {
            arg: "--dtype".into(),
            why: format!("`{s}` is not bf16 or f32"),
        }),
    }
}

/// Bytes as GiB.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// One fused-kernel check: relative error `||ours - ref|| / ||ref||` against an f64 CPU
/// reference, and the tolerance it must stay under.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub err: f64,
    pub tol: f64,
}

impl Check {
    /// A row comparing `ours` (any device) with `reference`: see [`rel_err_or_inf`].
    pub fn compare(
        what: impl Into<String>,
        ours: &candle_core::Tensor,
        reference: &candle_core::Tensor,
        tol: f64,
    ) -> Result<Check> {
        Ok(Check {
            what: what.into(),
            err: rel_err_or_inf(ours, reference)?,
            tol,
        })
    }

    /// A `<what> fused` row that fails when the fused kernel did not take the inputs (it fell
    /// back to the composite path silently).
    pub fn fused_taken(what: &str, taken: bool) -> Check {
        Check {
            what: format!("{what} fused"),
            err: if taken { 0.0 } else { 1.0 },
            tol: 0.5,
        }
    }
}

/// `||ours - reference|| / ||reference||` on the CPU in f64 (titan-core's `rel_err`), infinite
/// when the shapes differ, so a wrong shape fails its row rather than the whole run.
pub fn rel_err_or_inf(ours: &candle_core::Tensor, reference: &candle_core::Tensor) -> Result<f64> {
    if ours.dims() != reference.dims() {
        return Ok(f64::INFINITY);
    }
    Ok(titan_core::testing::rel_err(
        &ours.to_device(&Device::Cpu)?,
        &reference.to_device(&Device::Cpu)?,
    )?)
}
