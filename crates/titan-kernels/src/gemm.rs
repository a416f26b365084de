//! Weight gradients of a linear layer straight into f32 with cuBLAS: `dW (out, in) = dy^T x`
//! from bf16 `dy (rows, out)` and `x (rows, in)`, accumulated in f32 (compute type 32F) into
//! an existing f32 gradient in place (beta = 1) or into a new tensor (beta = 0). No bf16
//! round trip of dW and no separate cast-and-add.

use candle_core::cuda_backend::cudarc::cublas::{result, sys};
use candle_core::{DType, Tensor};

use crate::error::{unsupported, Error, Result};
use crate::launch::{alloc, cuda_device, expect, ptr};

const KERNEL: &str = "gemm_dw";

/// `acc += dy^T x` in place and returns `acc` (a handle on the same storage), or, without
/// `acc`, a new f32 `(out, in)` tensor `dy^T x`.
///
/// `dy (rows, out)` and `x (rows, in)`: bf16, contiguous, one CUDA device; `acc`: f32,
/// contiguous, `(out, in)`, on that device, not sharing memory with `dy` or `x`. Runs on
/// candle's cuBLAS handle (bound to candle's stream). In place: every handle on `acc` sees
/// the sum.
pub fn weight_grad_bf16(dy: &Tensor, x: &Tensor, acc: Option<&Tensor>) -> Result<Tensor> {
    let dev = cuda_device(KERNEL, x)?;
    expect(KERNEL, "d_y", dy, DType::BF16, true)?;
    expect(KERNEL, "x", x, DType::BF16, true)?;
    let (rows, out) = dy.dims2()?;
    let (rows_x, inp) = x.dims2()?;
    if rows != rows_x || !dy.device().same_device(x.device()) {
        return unsupported(
            KERNEL,
            format!("d_y {:?} and x {:?} disagree", dy.dims(), x.dims()),
        );
    }
    let fits = |v: usize| i32::try_from(v).is_ok();
    if !(fits(rows) && fits(out) && fits(inp)) {
        return unsupported(KERNEL, "a dimension exceeds i32");
    }
    let (c, beta) = match acc {
        Some(a) => {
            expect(KERNEL, "accumulator", a, DType::F32, true)?;
            if a.dims() != [out, inp] || !a.device().same_device(x.device()) {
                return unsupported(
                    KERNEL,
                    format!("accumulator {:?} is not ({out}, {inp})", a.dims()),
                );
            }
            (a.clone(), 1f32)
        }
        // Uninitialized is fine: beta = 0 never reads C (cuBLAS does not scale NaNs by 0).
        None => (alloc(&dev, (out, inp), DType::F32, rows == 0)?, 0f32),
    };
    if rows == 0 || out == 0 || inp == 0 {
        return Ok(c);
    }
    let (pdy, px, pc) = (ptr(dy)?, ptr(x)?, ptr(&c)?);
    let alpha = 1f32;
    let blas = dev.cublas_handle();
    let stream = dev.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| Error::Driver(e.to_string()))?;
    // Column-major view: C^T (in x out, ldc = in) = x^T (in x rows, as stored: N, ld = in)
    // * dy (rows x out: stored as dy^T (out x rows, ld = out), so T).
    // SAFETY: the pointers come from live tensors checked above for dtype, contiguity and
    // shape; cuBLAS runs on candle's stream, ordered with every other use of the tensors.
    unsafe {
        result::gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_N,
            sys::cublasOperation_t::CUBLAS_OP_T,
            inp as i32,
            out as i32,
            rows as i32,
            &alpha as *const f32 as *const _,
            px as *const _,
            sys::cudaDataType_t::CUDA_R_16BF,
            inp as i32,
            pdy as *const _,
            sys::cudaDataType_t::CUDA_R_16BF,
            out as i32,
            &beta as *const f32 as *const _,
            pc as *mut _,
            sys::cudaDataType_t::CUDA_R_32F,
            inp as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .map_err(|e| Error::Driver(format!("cublasGemmEx (dW): {e:?}")))?;
    Ok(c)
}
