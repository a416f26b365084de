//! Device buffers of collectives: dtypes, addresses, outputs, and the pending work that keeps
//! them alive (see [`super`]).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream, DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::cudarc::nccl::sys as ns;
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Shape, Storage, Tensor};

use super::watchdog::Watch;
use crate::comm::{PendingWork, ReduceOp};
use crate::{Error, Result};

/// A collective queued on the communication stream (see the module docs for the protocol).
pub(super) struct NcclWork {
    pub(super) op: &'static str,
    pub(super) group: String,
    pub(super) compute: Arc<CudaStream>,
    pub(super) done: Arc<CudaEvent>,
    /// Buffers NCCL reads: released only after the compute stream waits for `done`.
    pub(super) keep: Vec<Tensor>,
    pub(super) output: Option<Tensor>,
    pub(super) watch: Arc<Watch>,
    /// Timing events while a [`crate::trace`] is open.
    pub(super) trace: Option<Arc<crate::trace::CollectiveEvents>>,
    pub(super) fenced: bool,
}

impl std::fmt::Debug for NcclWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclWork({} on `{}`, fenced: {})",
            self.op, self.group, self.fenced
        )
    }
}

impl NcclWork {
    /// Orders the compute stream after the collective.
    pub(super) fn fence(&mut self) -> Result<()> {
        if !self.fenced {
            if let Some(t) = &self.trace {
                t.waiting(&self.compute);
            }
            self.compute.wait(&self.done).map_err(|e| Error::Nccl {
                op: self.op.into(),
                group: self.group.clone(),
                detail: format!("ordering the compute stream after the collective: CUDA error {e}"),
            })?;
            self.fenced = true;
        }
        Ok(())
    }
}

impl PendingWork for NcclWork {
    fn wait(mut self: Box<Self>) -> Result<Tensor> {
        self.fence()?;
        self.keep.clear();
        // After an abort the buffer holds garbage: report the failure instead.
        self.watch.check()?;
        self.output.take().ok_or_else(|| Error::Nccl {
            op: self.op.into(),
            group: self.group.clone(),
            detail: "this collective has no output to wait for".into(),
        })
    }
}

impl Drop for NcclWork {
    fn drop(&mut self) {
        if self.fence().is_err() {
            // Nothing orders a free after the collective: leak the buffers rather than let
            // memory NCCL may still touch go back to the pool.
            for t in self.keep.drain(..).chain(self.output.take()) {
                std::mem::forget(t);
            }
        }
    }
}

pub(super) fn nccl_dtype(op: &str, dtype: DType) -> Result<ns::ncclDataType_t> {
    use ns::ncclDataType_t as T;
    Ok(match dtype {
        DType::U8 => T::ncclUint8,
        DType::U32 => T::ncclUint32,
        DType::I32 => T::ncclInt32,
        DType::I64 => T::ncclInt64,
        DType::F16 => T::ncclFloat16,
        DType::BF16 => T::ncclBfloat16,
        DType::F32 => T::ncclFloat32,
        DType::F64 => T::ncclFloat64,
        other => {
            return Err(Error::InvalidArgument {
                op: op.into(),
                detail: format!(
                    "NCCL collectives take u8, u32, i32, i64, f16, bf16, f32 or f64 tensors, got {other:?}"
                ),
            })
        }
    })
}

pub(super) fn nccl_op(op: ReduceOp) -> ns::ncclRedOp_t {
    match op {
        ReduceOp::Sum => ns::ncclRedOp_t::ncclSum,
        ReduceOp::Avg => ns::ncclRedOp_t::ncclAvg,
        ReduceOp::Max => ns::ncclRedOp_t::ncclMax,
        ReduceOp::Min => ns::ncclRedOp_t::ncclMin,
    }
}

/// The CUDA device of `t`, or an error naming the collective.
pub(super) fn cuda_of(op: &str, t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        other => Err(Error::InvalidArgument {
            op: op.into(),
            detail: format!(
                "the NCCL backend takes CUDA tensors, got one on {other:?}: move it with to_device"
            ),
        }),
    }
}

/// The device address of the first element of a contiguous CUDA tensor.
pub(super) fn address(t: &Tensor, stream: &CudaStream) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(Error::InvalidArgument {
            op: "nccl".into(),
            detail: "tensor is not on a CUDA device".into(),
        });
    };
    macro_rules! base {
        ($s:expr) => {{
            let (p, _record) = $s.device_ptr(stream);
            p
        }};
    }
    let base = match &cs.slice {
        CudaStorageSlice::U8(s) => base!(s),
        CudaStorageSlice::U32(s) => base!(s),
        CudaStorageSlice::I16(s) => base!(s),
        CudaStorageSlice::I32(s) => base!(s),
        CudaStorageSlice::I64(s) => base!(s),
        CudaStorageSlice::BF16(s) => base!(s),
        CudaStorageSlice::F16(s) => base!(s),
        CudaStorageSlice::F32(s) => base!(s),
        CudaStorageSlice::F64(s) => base!(s),
        _ => {
            return Err(Error::InvalidArgument {
                op: "nccl".into(),
                detail: format!("dtype {:?}", t.dtype()),
            })
        }
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// A new, uninitialized tensor on `dev` and its device address (a collective writes all of it
/// before anyone can read it: readers wait for the collective).
pub(super) fn output(dev: &CudaDevice, shape: Shape, dtype: DType) -> Result<(Tensor, u64)> {
    let stream = dev.cuda_stream();
    // One element at least: a zero-byte allocation fails, and the shape decides what is read.
    let n = shape.elem_count().max(1);
    macro_rules! make {
        ($t:ty, $v:ident) => {{
            // SAFETY: see the function docs.
            let mut s = unsafe { dev.alloc::<$t>(n)? };
            let p = {
                let (p, _record) = s.device_ptr_mut(&stream);
                p
            };
            (CudaStorageSlice::$v(s), p)
        }};
    }
    let (slice, p) = match dtype {
        DType::U8 => make!(u8, U8),
        DType::U32 => make!(u32, U32),
        DType::I32 => make!(i32, I32),
        DType::I64 => make!(i64, I64),
        DType::F16 => make!(half::f16, F16),
        DType::BF16 => make!(half::bf16, BF16),
        DType::F32 => make!(f32, F32),
        DType::F64 => make!(f64, F64),
        other => {
            return Err(Error::InvalidArgument {
                op: "nccl".into(),
                detail: format!("dtype {other:?}"),
            })
        }
    };
    let storage = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((
        Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false),
        p,
    ))
}
