//! Opening a CUDA device for training and reading its memory pool (feature `cuda`).
//!
//! candle allocates every tensor with `cuMemAllocAsync` from the device's default memory pool
//! and has no caching allocator of its own. Two defaults hurt a training loop:
//! - the pool's release threshold is 0, so the driver may hand freed memory back to the OS at
//!   every synchronization (each step's loss read-back) and map it again on the next step;
//! - cudarc records two CUDA events per allocation and one per kernel argument ("event
//!   tracking"), which only multi-stream programs need.
//!
//! [`open_device`] fixes both and turns cudarc's panic on a missing shared library into an
//! error that names the library and where it was looked for. [`pool_stats`] reads the pool's
//! byte counters, Titan's equivalent of `torch.cuda.max_memory_allocated/reserved`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaContext};
use candle_core::Device;

use crate::{Error, Result};

/// What [`open_device`] learned about the GPU.
#[derive(Debug, Clone)]
pub struct CudaDeviceInfo {
    /// The driver's name for the GPU ("NVIDIA H100 80GB HBM3").
    pub name: String,
    /// Total device memory in bytes.
    pub total_bytes: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
}

/// Byte counters of the device's default memory pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes held by live allocations now.
    pub used_bytes: u64,
    /// Highest `used_bytes` since the pool was created or [`reset_peak`] ran.
    pub used_high_bytes: u64,
    /// Bytes the pool has mapped from the device now (live + cached).
    pub reserved_bytes: u64,
    /// Highest `reserved_bytes` since the pool was created or [`reset_peak`] ran.
    pub reserved_high_bytes: u64,
}

/// The shared libraries cudarc loads at run time (CUDA 13 names) and what each is for.
const CUDA_LIBRARIES: &[(&str, &str)] = &[
    ("libcuda.so.1", "the NVIDIA driver"),
    ("libcublas.so.13", "cuBLAS (matmuls)"),
    ("libcublasLt.so.13", "cuBLASLt (loaded by cuBLAS)"),
    (
        "libcurand.so.10",
        "cuRAND (candle opens it with the device)",
    ),
];

/// Directories the dynamic loader searches besides its cache, and where CUDA usually lives.
fn search_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/nvidia/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/lib/x86_64-linux-gnu",
    ] {
        dirs.push(d.to_string());
    }
    dirs
}

/// The CUDA libraries found in none of [`search_dirs`] (a hint only: the loader's cache in
/// /etc/ld.so.cache may still find them).
pub fn missing_libraries() -> Vec<&'static str> {
    let dirs = search_dirs();
    CUDA_LIBRARIES
        .iter()
        .filter(|(lib, _)| {
            let stem = lib.split(".so").next().unwrap_or(lib);
            !dirs.iter().any(|d| {
                std::fs::read_dir(d)
                    .map(|entries| {
                        entries.flatten().any(|e| {
                            e.file_name()
                                .to_str()
                                .is_some_and(|n| n.starts_with(&format!("{stem}.so")))
                        })
                    })
                    .unwrap_or(false)
            })
        })
        .map(|(lib, _)| *lib)
        .collect()
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "unknown panic".into()
    }
}

/// Run `f`, turning a panic (cudarc panics when it cannot dlopen a library) into an error that
/// says which libraries are missing, where they were looked for, and how to fix it.
fn without_panics<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous_hook);
    outcome.map_err(|payload| {
        let missing = missing_libraries();
        let wanted: Vec<String> = CUDA_LIBRARIES
            .iter()
            .map(|(lib, why)| format!("{lib} ({why})"))
            .collect();
        Error::Msg(format!(
            "{what} failed: {}. Titan loads CUDA at run time and needs {}; not found in LD_LIBRARY_PATH or the usual CUDA folders: [{}]; searched: {}. Install the CUDA 13 runtime libraries (or the nvidia-cublas / nvidia-curand wheels) and put their lib folder on LD_LIBRARY_PATH (scripts/device-env.sh does this on the GPU machines)",
            panic_text(payload.as_ref()),
            wanted.join(", "),
            missing.join(", "),
            search_dirs().join(":"),
        ))
    })
}

fn context(device: &Device) -> Result<Arc<CudaContext>> {
    let cuda = device.as_cuda_device()?;
    Ok(cuda.cuda_stream().context().clone())
}

fn default_pool(ctx: &CudaContext) -> Result<sys::CUmemoryPool> {
    ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
    // SAFETY: the device handle comes from a live context.
    let pool = unsafe { result::device::get_default_mem_pool(ctx.cu_device()) }
        .map_err(candle_core::Error::wrap)?;
    Ok(pool)
}

fn pool_attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut value: u64 = 0;
    // SAFETY: these attributes are cuuint64_t; `value` outlives the call.
    unsafe {
        result::mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast())
            .map_err(candle_core::Error::wrap)?;
    }
    Ok(value)
}

fn set_pool_attribute(
    pool: sys::CUmemoryPool,
    attr: sys::CUmemPool_attribute,
    mut value: u64,
) -> Result<()> {
    // SAFETY: these attributes are cuuint64_t; `value` outlives the call.
    unsafe {
        result::mem_pool::set_attribute(pool, attr, (&mut value as *mut u64).cast())
            .map_err(candle_core::Error::wrap)?;
    }
    Ok(())
}

/// Open GPU `ordinal` for single-stream training: event tracking off (before the first
/// allocation, as it only affects later ones), the default pool keeps freed memory cached
/// (release threshold `u64::MAX`), peaks reset.
///
/// Every tensor of a device opened here must be created and used from the thread that opened
/// it (candle's per-thread stream): with event tracking off nothing orders work across streams.
pub fn open_device(ordinal: usize) -> Result<(Device, CudaDeviceInfo)> {
    let device = without_panics(&format!("opening CUDA device {ordinal}"), || {
        Device::new_cuda(ordinal)
    })??;
    let cuda = device.as_cuda_device()?;
    // SAFETY: nothing has been allocated on this device yet, and the single-stream contract
    // is stated above.
    unsafe { cuda.disable_event_tracking() };
    let ctx = context(&device)?;
    let pool = default_pool(&ctx)?;
    set_pool_attribute(
        pool,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
        u64::MAX,
    )?;
    reset_peak(&device)?;
    let name = ctx.name().map_err(candle_core::Error::wrap)?;
    let total_bytes = ctx.total_mem().map_err(candle_core::Error::wrap)? as u64;
    let cc = |a| ctx.attribute(a).map_err(candle_core::Error::wrap);
    let compute_capability = (
        cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    tracing::info!(
        "CUDA device {ordinal}: {name}, {:.1} GiB, compute capability {}.{}; memory pool keeps freed blocks, event tracking off",
        total_bytes as f64 / (1u64 << 30) as f64,
        compute_capability.0,
        compute_capability.1
    );
    Ok((
        device,
        CudaDeviceInfo {
            name,
            total_bytes,
            compute_capability,
        },
    ))
}

/// The default pool's byte counters for a CUDA device (an error for other devices).
pub fn pool_stats(device: &Device) -> Result<PoolStats> {
    let ctx = context(device)?;
    let pool = default_pool(&ctx)?;
    use sys::CUmemPool_attribute as A;
    Ok(PoolStats {
        used_bytes: pool_attribute(pool, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
        used_high_bytes: pool_attribute(pool, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        reserved_bytes: pool_attribute(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
        reserved_high_bytes: pool_attribute(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
    })
}

/// Restart the pool's high-water marks from the current values (the driver only accepts 0,
/// which means "now").
pub fn reset_peak(device: &Device) -> Result<()> {
    let ctx = context(device)?;
    let pool = default_pool(&ctx)?;
    use sys::CUmemPool_attribute as A;
    set_pool_attribute(pool, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
    set_pool_attribute(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)?;
    Ok(())
}

/// Wait for all work queued on the device (for timing phases).
pub fn synchronize(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}
