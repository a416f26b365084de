//! Loading the embedded cubins and launching their kernels on candle tensors.
//!
//! Kernels take raw device pointers (`u64`) and sizes: a launcher reads each tensor's pointer
//! (its storage's base plus the layout's start offset), checks dtype and layout itself, and
//! allocates outputs as fresh candle tensors. Everything runs on the candle device's stream,
//! so stream order keeps inputs alive until the kernel has read them (candle frees with
//! `cuMemFreeAsync` on that same stream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaModule, DevicePtr};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Shape, Storage, Tensor};

use crate::error::{unsupported, Error, Result};

/// One compiled CUDA source file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cubin {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! cubin {
    ($name:literal) => {
        Cubin {
            name: $name,
            bytes: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".cubin")),
        }
    };
}
pub(crate) use cubin;

/// Every cubin of this build, for [`preload`] and [`kernel_names`].
pub(crate) const ALL: &[Cubin] = &[
    crate::norm::CUBIN,
    crate::attention::CUBIN,
    crate::rope::CUBIN,
    crate::swiglu::CUBIN,
    crate::xent::CUBIN,
    crate::embedding::CUBIN,
    crate::adamw::CUBIN,
    crate::gradnorm::CUBIN,
    crate::elementwise::CUBIN,
];

type FuncKey = (usize, &'static str, &'static str);

fn functions() -> &'static Mutex<HashMap<FuncKey, CudaFunction>> {
    static F: OnceLock<Mutex<HashMap<FuncKey, CudaFunction>>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(HashMap::new()))
}

type ModuleKey = (usize, &'static str);
type ModuleMap = HashMap<ModuleKey, Arc<CudaModule>>;

fn modules() -> &'static Mutex<ModuleMap> {
    static M: OnceLock<Mutex<ModuleMap>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

fn driver(e: impl std::fmt::Display) -> Error {
    Error::Driver(e.to_string())
}

/// The kernel `name` of `cubin`, loaded on `dev`'s context on first use.
pub(crate) fn function(
    dev: &CudaDevice,
    cubin: &Cubin,
    name: &'static str,
) -> Result<CudaFunction> {
    let stream = dev.cuda_stream();
    let ordinal = stream.context().ordinal();
    let key = (ordinal, cubin.name, name);
    if let Some(f) = functions().lock().unwrap().get(&key) {
        return Ok(f.clone());
    }
    let module = {
        let mut mods = modules().lock().unwrap();
        match mods.get(&(ordinal, cubin.name)) {
            Some(m) => m.clone(),
            None => {
                let m = stream
                    .context()
                    .load_module(Ptx::from_binary(cubin.bytes.to_vec()))
                    .map_err(|e| Error::Driver(format!("loading {}.cubin: {e}", cubin.name)))?;
                mods.insert((ordinal, cubin.name), m.clone());
                m
            }
        }
    };
    let f = module
        .load_function(name)
        .map_err(|e| Error::Driver(format!("{}.cubin has no kernel `{name}`: {e}", cubin.name)))?;
    functions().lock().unwrap().insert(key, f.clone());
    Ok(f)
}

/// Load every embedded cubin on `device` now (so the first step does not pay for it) and
/// return how many modules were loaded.
pub fn preload(device: &candle_core::Device) -> Result<usize> {
    let dev = device.as_cuda_device()?;
    let stream = dev.cuda_stream();
    let ordinal = stream.context().ordinal();
    let mut mods = modules().lock().unwrap();
    for c in ALL {
        if let std::collections::hash_map::Entry::Vacant(slot) = mods.entry((ordinal, c.name)) {
            let m = stream
                .context()
                .load_module(Ptx::from_binary(c.bytes.to_vec()))
                .map_err(|e| Error::Driver(format!("loading {}.cubin: {e}", c.name)))?;
            slot.insert(m);
        }
    }
    Ok(ALL.len())
}

/// The cubins embedded in this build.
pub fn kernel_names() -> Vec<&'static str> {
    ALL.iter().map(|c| c.name).collect()
}

/// Allow `bytes` of dynamic shared memory for `f` (needed above 48 KiB).
pub(crate) fn set_dynamic_smem(f: &CudaFunction, bytes: u32) -> Result<()> {
    f.set_attribute(
        sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(driver)
}

/// The CUDA device a tensor lives on, or `Unsupported` naming the kernel.
pub(crate) fn cuda_device(kernel: &'static str, t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        other => unsupported(kernel, format!("needs a CUDA tensor, got one on {other:?}")),
    }
}

/// Check `t`'s dtype (and, if `contiguous`, that its layout is row-major contiguous).
pub(crate) fn expect(
    kernel: &'static str,
    what: &str,
    t: &Tensor,
    dtype: DType,
    contiguous: bool,
) -> Result<()> {
    if t.dtype() != dtype {
        return unsupported(
            kernel,
            format!("{what} must be {dtype:?}, got {:?}", t.dtype()),
        );
    }
    if contiguous && !t.is_contiguous() {
        return unsupported(kernel, format!("{what} must be contiguous"));
    }
    Ok(())
}

/// The device address of `t`'s first element (storage base + layout start offset).
pub(crate) fn ptr(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return unsupported("pointer", "tensor is not on a CUDA device");
    };
    let stream = cs.device.cuda_stream();
    let offset = (layout.start_offset() * t.dtype().size_in_bytes()) as u64;
    let base = match t.dtype() {
        DType::BF16 => cs.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0,
        DType::F16 => cs.as_cuda_slice::<half::f16>()?.device_ptr(&stream).0,
        DType::F32 => cs.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        DType::F64 => cs.as_cuda_slice::<f64>()?.device_ptr(&stream).0,
        DType::U32 => cs.as_cuda_slice::<u32>()?.device_ptr(&stream).0,
        DType::I64 => cs.as_cuda_slice::<i64>()?.device_ptr(&stream).0,
        DType::U8 => cs.as_cuda_slice::<u8>()?.device_ptr(&stream).0,
        other => return unsupported("pointer", format!("dtype {other:?}")),
    };
    Ok(base + offset)
}

/// A new tensor of `shape` and `dtype` on `dev`, zero-filled if `zeroed`, else uninitialized
/// (every launcher that asks for uninitialized memory writes all of it).
pub(crate) fn alloc(
    dev: &CudaDevice,
    shape: impl Into<Shape>,
    dtype: DType,
    zeroed: bool,
) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count().max(1);
    macro_rules! make {
        ($t:ty) => {{
            let s = if zeroed {
                dev.alloc_zeros::<$t>(n)?
            } else {
                // SAFETY: the caller's kernel writes every element before anything reads it.
                unsafe { dev.alloc::<$t>(n)? }
            };
            CudaStorage::wrap_cuda_slice(s, dev.clone())
        }};
    }
    let storage = match dtype {
        DType::BF16 => make!(half::bf16),
        DType::F16 => make!(half::f16),
        DType::F32 => make!(f32),
        DType::U32 => make!(u32),
        DType::I64 => make!(i64),
        DType::U8 => make!(u8),
        other => return unsupported("alloc", format!("dtype {other:?}")),
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        BackpropOp::none(),
        false,
    ))
}

/// Launch a kernel on `dev`'s stream: `launch!(dev, func, grid, block, smem; a, b, n)`.
/// Arguments must be named locals (the builder borrows them until the launch): device
/// pointers as `u64`, sizes as `i32`/`i64`, scalars as `f32`, exactly as the kernel declares.
macro_rules! launch {
    ($dev:expr, $f:expr, $grid:expr, $block:expr, $smem:expr; $($arg:ident),* $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        let stream = $dev.cuda_stream();
        let mut builder = stream.launch_builder(&$f);
        $( builder.arg(&$arg); )*
        let grid: (u32, u32, u32) = $grid;
        let cfg = candle_core::cuda_backend::cudarc::driver::LaunchConfig {
            grid_dim: grid,
            block_dim: ($block as u32, 1, 1),
            shared_mem_bytes: $smem as u32,
        };
        // SAFETY: the launcher passes the argument list its kernel declares and has checked
        // every pointer's extent against the tensors it came from.
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(|e| crate::Error::Driver(e.to_string()))
    }};
}
pub(crate) use launch;

/// Blocks of `threads` that fit on the whole device at once (cached per device, kernel and
/// block size): one resident wave, for launchers that size their grid to it.
pub(crate) fn resident_blocks(
    dev: &CudaDevice,
    f: &CudaFunction,
    name: &'static str,
    threads: usize,
    smem: usize,
) -> Result<usize> {
    type Key = (usize, &'static str, usize, usize);
    static CACHE: OnceLock<Mutex<HashMap<Key, usize>>> = OnceLock::new();
    let ctx = dev.cuda_stream().context().clone();
    let key = (ctx.ordinal(), name, threads, smem);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(n) = cache.lock().unwrap().get(&key) {
        return Ok(*n);
    }
    let driver =
        |e: candle_core::cuda_backend::cudarc::driver::DriverError| Error::Driver(e.to_string());
    let sms = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(driver)?;
    let per_sm = f
        .occupancy_max_active_blocks_per_multiprocessor(threads as u32, smem, None)
        .map_err(driver)?;
    let n = (sms.max(1) as usize) * (per_sm.max(1) as usize);
    cache.lock().unwrap().insert(key, n);
    Ok(n)
}
