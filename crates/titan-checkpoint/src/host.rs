//! Moving tensors between candle and little-endian host bytes, the form files hold.
//!
//! The device-to-host copy in [`tensor_to_le_bytes`] is the only part of an async save that
//! stalls training: afterwards the bytes belong to the checkpoint, so training may update its
//! tensors in place while the writer runs.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use safetensors::Dtype as StDtype;

use crate::{Error, Result};

/// The safetensors dtype of a candle dtype Titan stores.
pub fn st_dtype(name: &str, dtype: DType) -> Result<StDtype> {
    Ok(match dtype {
        DType::U8 => StDtype::U8,
        DType::U32 => StDtype::U32,
        DType::I16 => StDtype::I16,
        DType::I32 => StDtype::I32,
        DType::I64 => StDtype::I64,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        other => {
            return Err(Error::UnsupportedDType {
                name: name.to_string(),
                dtype: other,
            })
        }
    })
}

/// The candle dtype of a safetensors dtype, if Titan reads it.
pub fn candle_dtype(dtype: StDtype) -> Option<DType> {
    Some(match dtype {
        StDtype::U8 => DType::U8,
        StDtype::U32 => DType::U32,
        StDtype::I16 => DType::I16,
        StDtype::I32 => DType::I32,
        StDtype::I64 => DType::I64,
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        _ => return None,
    })
}

/// The safetensors spelling of a dtype (`"F32"`, `"BF16"`), as the index JSON writes it.
pub fn dtype_name(dtype: StDtype) -> String {
    match serde_json::to_value(dtype) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{dtype:?}"),
    }
}

/// Parse [`dtype_name`]'s output.
pub fn parse_dtype_name(s: &str) -> Option<DType> {
    let st: StDtype = serde_json::from_value(serde_json::Value::String(s.to_string())).ok()?;
    candle_dtype(st)
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to_le: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    // Fixed-size chunks let the compiler turn this into a plain copy on little-endian hosts.
    let mut out = vec![0u8; values.len() * N];
    for (dst, &v) in out.chunks_exact_mut(N).zip(values) {
        dst.copy_from_slice(&to_le(v));
    }
    out
}

/// The tensor's elements, row-major, little-endian (copied to host if it lives on a device).
pub fn tensor_to_le_bytes(name: &str, t: &Tensor) -> Result<Vec<u8>> {
    st_dtype(name, t.dtype())?;
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Request {
            name: name.to_string(),
            reason: "tensor did not move to host memory".into(),
        });
    };
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| Error::Request {
        name: name.to_string(),
        reason: "tensor is not contiguous after `contiguous()`".into(),
    })?;
    Ok(match cpu {
        CpuStorage::U8(v) => v[start..end].to_vec(),
        CpuStorage::U32(v) => le_bytes(&v[start..end], u32::to_le_bytes),
        CpuStorage::I16(v) => le_bytes(&v[start..end], i16::to_le_bytes),
        CpuStorage::I32(v) => le_bytes(&v[start..end], i32::to_le_bytes),
        CpuStorage::I64(v) => le_bytes(&v[start..end], i64::to_le_bytes),
        CpuStorage::BF16(v) => le_bytes(&v[start..end], |x| x.to_bits().to_le_bytes()),
        CpuStorage::F16(v) => le_bytes(&v[start..end], |x| x.to_bits().to_le_bytes()),
        CpuStorage::F32(v) => le_bytes(&v[start..end], f32::to_le_bytes),
        CpuStorage::F64(v) => le_bytes(&v[start..end], f64::to_le_bytes),
        _ => {
            return Err(Error::UnsupportedDType {
                name: name.to_string(),
                dtype: t.dtype(),
            })
        }
    })
}

/// A host tensor from little-endian bytes.
pub fn tensor_from_le_bytes(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_for_every_stored_dtype() -> Result<()> {
        let base = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((3, 4))?;
        for dtype in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::F64,
            DType::U8,
            DType::U32,
            DType::I64,
        ] {
            let t = base.to_dtype(dtype)?;
            let bytes = tensor_to_le_bytes("t", &t)?;
            assert_eq!(bytes.len(), 12 * dtype.size_in_bytes());
            let back = tensor_from_le_bytes(&bytes, dtype, &[3, 4])?;
            assert_eq!(
                back.to_dtype(DType::F32)?.to_vec2::<f32>()?,
                base.to_vec2::<f32>()?,
                "{dtype:?}"
            );
            let st = st_dtype("t", dtype)?;
            assert_eq!(parse_dtype_name(&dtype_name(st)), Some(dtype));
        }
        // A strided view is written in logical order.
        let tr = base.t()?;
        let bytes = tensor_to_le_bytes("t", &tr)?;
        let back = tensor_from_le_bytes(&bytes, DType::F32, &[4, 3])?;
        assert_eq!(back.to_vec2::<f32>()?, tr.to_vec2::<f32>()?);
        assert_eq!(
            f32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            4.0
        );
        Ok(())
    }
}
