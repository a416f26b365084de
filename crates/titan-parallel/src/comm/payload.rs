//! Host copies of tensors: what the CPU backends move between ranks, reduce, and put on the wire.
//!
//! Reductions run in member order (rank 0 of the group first), so a result is a pure function
//! of the inputs: bitwise reproducible from run to run, and identical on every rank because one
//! rank computes it and sends the same bytes to all. bf16/f16 inputs accumulate in f32 and round
//! once at the end.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::comm::ReduceOp;
use crate::{Error, Result};

/// One element type the host backends carry.
pub(crate) trait Elem: candle_core::WithDType + Copy + Send + 'static {
    /// Wire code of the dtype.
    const WIRE: u8;
    /// Bytes per element on the wire.
    const SIZE: usize;
    /// What reductions accumulate in.
    type Acc: Copy;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
    fn acc(self) -> Self::Acc;
    fn from_acc(a: Self::Acc) -> Self;
    fn acc_add(a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn acc_max(a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn acc_min(a: Self::Acc, b: Self::Acc) -> Self::Acc;
    /// `a / n`, or `None` when the type has no meaningful average (integers).
    fn acc_div(a: Self::Acc, n: usize) -> Option<Self::Acc>;
    /// The elements of `d` if it holds this type.
    fn view(d: &HostData) -> Option<&Vec<Self>>;
    /// Wraps a vector of this type.
    fn wrap(v: Vec<Self>) -> HostData;
}

/// Float max/min that propagate NaN (a NaN gradient must not vanish in a reduction).
fn fmax<T: PartialOrd + Copy>(a: T, b: T, a_nan: bool, b_nan: bool) -> T {
    if a_nan {
        a
    } else if b_nan || b > a {
        b
    } else {
        a
    }
}
fn fmin<T: PartialOrd + Copy>(a: T, b: T, a_nan: bool, b_nan: bool) -> T {
    if a_nan {
        a
    } else if b_nan || b < a {
        b
    } else {
        a
    }
}

macro_rules! float_elem {
    ($t:ty, $variant:ident, $wire:expr, $size:expr, $acc:ty, $to:expr, $from:expr) => {
        impl Elem for $t {
            const WIRE: u8 = $wire;
            const SIZE: usize = $size;
            type Acc = $acc;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut b = [0u8; $size];
                b.copy_from_slice(&bytes[..$size]);
                <$t>::from_le_bytes(b)
            }
            fn acc(self) -> $acc {
                $to(self)
            }
            fn from_acc(a: $acc) -> Self {
                $from(a)
            }
            fn acc_add(a: $acc, b: $acc) -> $acc {
                a + b
            }
            fn acc_max(a: $acc, b: $acc) -> $acc {
                fmax(a, b, a.is_nan(), b.is_nan())
            }
            fn acc_min(a: $acc, b: $acc) -> $acc {
                fmin(a, b, a.is_nan(), b.is_nan())
            }
            fn acc_div(a: $acc, n: usize) -> Option<$acc> {
                Some(a / n as $acc)
            }
            fn view(d: &HostData) -> Option<&Vec<Self>> {
                match d {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> HostData {
                HostData::$variant(v)
            }
        }
    };
}

float_elem!(f32, F32, 1, 4, f32, |x| x, |a| a);
float_elem!(f64, F64, 2, 8, f64, |x| x, |a| a);
float_elem!(bf16, BF16, 3, 2, f32, bf16::to_f32, bf16::from_f32);
float_elem!(f16, F16, 4, 2, f32, f16::to_f32, f16::from_f32);

macro_rules! int_elem {
    ($t:ty, $variant:ident, $wire:expr, $size:expr) => {
        impl Elem for $t {
            const WIRE: u8 = $wire;
            const SIZE: usize = $size;
            type Acc = $t;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut b = [0u8; $size];
                b.copy_from_slice(&bytes[..$size]);
                <$t>::from_le_bytes(b)
            }
            fn acc(self) -> $t {
                self
            }
            fn from_acc(a: $t) -> Self {
                a
            }
            fn acc_add(a: $t, b: $t) -> $t {
                a.wrapping_add(b)
            }
            fn acc_max(a: $t, b: $t) -> $t {
                a.max(b)
            }
            fn acc_min(a: $t, b: $t) -> $t {
                a.min(b)
            }
            fn acc_div(_: $t, _: usize) -> Option<$t> {
                None
            }
            fn view(d: &HostData) -> Option<&Vec<Self>> {
                match d {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> HostData {
                HostData::$variant(v)
            }
        }
    };
}

int_elem!(u32, U32, 5, 4);
int_elem!(i64, I64, 6, 8);

/// The elements of a host tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
    I64(Vec<i64>),
}

/// Runs `$body` with `$v` bound to the inner vector, whatever its element type.
macro_rules! with_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            HostData::F32($v) => $body,
            HostData::F64($v) => $body,
            HostData::BF16($v) => $body,
            HostData::F16($v) => $body,
            HostData::U32($v) => $body,
            HostData::I64($v) => $body,
        }
    };
}

/// Runs `$body` with the type alias `$t` set to the element type of `$like`.
macro_rules! dispatch {
    ($like:expr, $t:ident => $body:expr) => {
        match $like {
            HostData::F32(_) => {
                type $t = f32;
                $body
            }
            HostData::F64(_) => {
                type $t = f64;
                $body
            }
            HostData::BF16(_) => {
                type $t = bf16;
                $body
            }
            HostData::F16(_) => {
                type $t = f16;
                $body
            }
            HostData::U32(_) => {
                type $t = u32;
                $body
            }
            HostData::I64(_) => {
                type $t = i64;
                $body
            }
        }
    };
}

impl HostData {
    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }

    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F64(_) => DType::F64,
            HostData::BF16(_) => DType::BF16,
            HostData::F16(_) => DType::F16,
            HostData::U32(_) => DType::U32,
            HostData::I64(_) => DType::I64,
        }
    }

    fn wire_code(&self) -> u8 {
        match self {
            HostData::F32(_) => f32::WIRE,
            HostData::F64(_) => f64::WIRE,
            HostData::BF16(_) => bf16::WIRE,
            HostData::F16(_) => f16::WIRE,
            HostData::U32(_) => u32::WIRE,
            HostData::I64(_) => i64::WIRE,
        }
    }

    /// Concatenation of buffers; they must share one dtype.
    pub fn concat(parts: &[&HostData]) -> std::result::Result<HostData, String> {
        let Some(first) = parts.first() else {
            return Ok(HostData::F32(Vec::new()));
        };
        dispatch!(first, T => {
            let mut out: Vec<T> = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
            for p in parts {
                out.extend_from_slice(T::view(p).ok_or_else(|| mixed(first, p))?);
            }
            Ok(T::wrap(out))
        })
    }

    /// Element-wise reduction of elements `[start, start + len)` of every part, in part order.
    /// All parts must share one dtype and hold at least `start + len` elements.
    pub fn reduce(
        parts: &[&HostData],
        op: ReduceOp,
        start: usize,
        len: usize,
    ) -> std::result::Result<HostData, String> {
        let Some(first) = parts.first() else {
            return Err("reduction over no ranks".into());
        };
        dispatch!(first, T => {
            let mut slices: Vec<&[T]> = Vec::with_capacity(parts.len());
            for p in parts {
                let v = T::view(p).ok_or_else(|| mixed(first, p))?;
                let s = v.get(start..start + len).ok_or_else(|| {
                    format!("buffer of {} elements has no range {start}..{}", v.len(), start + len)
                })?;
                slices.push(s);
            }
            Ok(T::wrap(reduce_slices::<T>(&slices, op)?))
        })
    }

    /// Little-endian bytes: dtype code, element count, elements.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.wire_code());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        with_vec!(self, v => {
            out.reserve(v.len() * elem_size(v));
            for x in v {
                x.put(out);
            }
        });
    }

    /// Inverse of [`HostData::encode`]; returns the data and the bytes consumed.
    pub fn decode(bytes: &[u8]) -> std::result::Result<(HostData, usize), String> {
        if bytes.len() < 9 {
            return Err(format!("truncated buffer header ({} bytes)", bytes.len()));
        }
        let code = bytes[0];
        let n = u64::from_le_bytes(bytes[1..9].try_into().map_err(|_| "bad length")?) as usize;
        let body = &bytes[9..];
        fn read<T: Elem>(body: &[u8], n: usize) -> std::result::Result<Vec<T>, String> {
            let need = n.checked_mul(T::SIZE).ok_or("element count overflows")?;
            if body.len() < need {
                return Err(format!(
                    "truncated buffer: {need} bytes announced, {} present",
                    body.len()
                ));
            }
            Ok(body[..need].chunks_exact(T::SIZE).map(T::get).collect())
        }
        let data = match code {
            c if c == f32::WIRE => HostData::F32(read(body, n)?),
            c if c == f64::WIRE => HostData::F64(read(body, n)?),
            c if c == bf16::WIRE => HostData::BF16(read(body, n)?),
            c if c == f16::WIRE => HostData::F16(read(body, n)?),
            c if c == u32::WIRE => HostData::U32(read(body, n)?),
            c if c == i64::WIRE => HostData::I64(read(body, n)?),
            other => return Err(format!("unknown dtype code {other}")),
        };
        let used = 9 + n * data_elem_size(&data);
        Ok((data, used))
    }
}

fn elem_size<T: Elem>(_: &[T]) -> usize {
    T::SIZE
}

fn data_elem_size(d: &HostData) -> usize {
    with_vec!(d, v => elem_size(v))
}

fn mixed(a: &HostData, b: &HostData) -> String {
    format!("mixed dtypes {:?} and {:?}", a.dtype(), b.dtype())
}

fn reduce_slices<T: Elem>(slices: &[&[T]], op: ReduceOp) -> std::result::Result<Vec<T>, String> {
    let mut acc: Vec<T::Acc> = slices[0].iter().map(|x| x.acc()).collect();
    for s in &slices[1..] {
        let f: fn(T::Acc, T::Acc) -> T::Acc = match op {
            ReduceOp::Sum | ReduceOp::Avg => T::acc_add,
            ReduceOp::Max => T::acc_max,
            ReduceOp::Min => T::acc_min,
        };
        for (a, x) in acc.iter_mut().zip(s.iter()) {
            *a = f(*a, x.acc());
        }
    }
    if op == ReduceOp::Avg {
        let n = slices.len();
        for a in acc.iter_mut() {
            *a = T::acc_div(*a, n)
                .ok_or_else(|| format!("ReduceOp::Avg is not defined for {:?}", T::DTYPE))?;
        }
    }
    Ok(acc.into_iter().map(T::from_acc).collect())
}

/// A host tensor: shape and elements.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Payload {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl Payload {
    /// Copies a tensor to the host.
    pub fn from_tensor(t: &Tensor, op: &str) -> Result<Self> {
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        let data = match t.dtype() {
            DType::F32 => HostData::F32(flat.to_vec1()?),
            DType::F64 => HostData::F64(flat.to_vec1()?),
            DType::BF16 => HostData::BF16(flat.to_vec1()?),
            DType::F16 => HostData::F16(flat.to_vec1()?),
            DType::U32 => HostData::U32(flat.to_vec1()?),
            DType::I64 => HostData::I64(flat.to_vec1()?),
            other => {
                return Err(Error::InvalidArgument {
                    op: op.to_string(),
                    detail: format!(
                        "dtype {other:?} is not supported by the host backends: use f32, f64, bf16, f16, u32 or i64"
                    ),
                })
            }
        };
        Ok(Self { shape, data })
    }

    /// Puts the elements back into a tensor on `device`.
    pub fn into_tensor(self, device: &Device) -> Result<Tensor> {
        let shape = self.shape;
        Ok(with_vec!(self.data, v => Tensor::from_vec(v, shape, device)?))
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// `dtype[d0, d1, ..]`, for messages.
    pub fn describe(&self) -> String {
        format!("{:?}{:?}", self.dtype(), self.shape)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.shape.len() as u32).to_le_bytes());
        for d in &self.shape {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        self.data.encode(out);
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<(Payload, usize), String> {
        if bytes.len() < 4 {
            return Err("truncated shape header".into());
        }
        let ndim = u32::from_le_bytes(bytes[0..4].try_into().map_err(|_| "bad ndim")?) as usize;
        let need = 4 + 8 * ndim;
        if ndim > 64 || bytes.len() < need {
            return Err(format!("bad shape header: {ndim} dims"));
        }
        let shape: Vec<usize> = bytes[4..need]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as usize)
            .collect();
        let (data, used) = HostData::decode(&bytes[need..])?;
        if shape.iter().product::<usize>() != data.len() {
            return Err(format!(
                "shape {shape:?} does not hold {} elements",
                data.len()
            ));
        }
        Ok((Payload { shape, data }, need + used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_member_order_and_rounds_bf16_once() {
        let a = HostData::F32(vec![1e8, 1.0]);
        let b = HostData::F32(vec![-1e8, 1.0]);
        let c = HostData::F32(vec![1.0, 1.0]);
        // (1e8 + -1e8) + 1 = 1, while 1e8 + (-1e8 + 1) would be 0 in f32: order is fixed.
        let r = HostData::reduce(&[&a, &b, &c], ReduceOp::Sum, 0, 2).unwrap();
        assert_eq!(r, HostData::F32(vec![1.0, 3.0]));
        let x = HostData::BF16(vec![bf16::from_f32(256.0)]);
        let one = HostData::BF16(vec![bf16::from_f32(1.0)]);
        // In bf16 256 + 1 rounds back to 256 each time; accumulated in f32, 256 + 1 + 1 = 258.
        let r = HostData::reduce(&[&x, &one, &one], ReduceOp::Sum, 0, 1).unwrap();
        assert_eq!(r, HostData::BF16(vec![bf16::from_f32(258.0)]));
    }

    #[test]
    fn max_keeps_nan_and_avg_rejects_integers() {
        let a = HostData::F32(vec![f32::NAN, 1.0]);
        let b = HostData::F32(vec![2.0, 3.0]);
        let HostData::F32(r) = HostData::reduce(&[&b, &a], ReduceOp::Max, 0, 2).unwrap() else {
            panic!()
        };
        assert!(r[0].is_nan());
        assert_eq!(r[1], 3.0);
        let i = HostData::I64(vec![1]);
        assert!(HostData::reduce(&[&i, &i], ReduceOp::Avg, 0, 1).is_err());
    }

    #[test]
    fn encode_decode_roundtrip() {
        for data in [
            HostData::F32(vec![1.5, -2.0]),
            HostData::F64(vec![3.25]),
            HostData::BF16(vec![bf16::from_f32(0.5), bf16::from_f32(-7.0)]),
            HostData::F16(vec![f16::from_f32(2.0)]),
            HostData::U32(vec![7, 9, 11]),
            HostData::I64(vec![-4]),
        ] {
            let p = Payload {
                shape: vec![data.len()],
                data,
            };
            let mut bytes = Vec::new();
            p.encode(&mut bytes);
            let (q, used) = Payload::decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(p, q);
        }
        assert!(Payload::decode(&[1, 0, 0, 0, 2]).is_err());
    }
}
