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

/// `acc += dy W` in place (bf16 `acc (rows, in)`, f32 accumulation, one rounding) and returns
/// `acc`: the input gradient of a linear layer added to a gradient already computed for the
/// same input (e.g. `d n = dy_1 W_1 + dy_2 W_2` for projections sharing their input), without
/// a separate add pass.
///
/// `dy (rows, out)`, `w (out, in)`, `acc (rows, in)`: bf16, contiguous, one CUDA device; `acc`
/// must not share memory with `dy` or `w`.
pub fn input_grad_acc_bf16(dy: &Tensor, w: &Tensor, acc: &Tensor) -> Result<Tensor> {
    const KERNEL: &str = "gemm_dx_acc";
    let dev = cuda_device(KERNEL, acc)?;
    expect(KERNEL, "d_y", dy, DType::BF16, true)?;
    expect(KERNEL, "weight", w, DType::BF16, true)?;
    expect(KERNEL, "accumulator", acc, DType::BF16, true)?;
    let (rows, out) = dy.dims2()?;
    let (out_w, inp) = w.dims2()?;
    if out != out_w || acc.dims() != [rows, inp] {
        return unsupported(
            KERNEL,
            format!(
                "d_y {:?}, weight {:?}, accumulator {:?} disagree",
                dy.dims(),
                w.dims(),
                acc.dims()
            ),
        );
    }
    if !(dy.device().same_device(acc.device()) && w.device().same_device(acc.device())) {
        return unsupported(KERNEL, "tensors on different devices");
    }
    let fits = |v: usize| i32::try_from(v).is_ok();
    if !(fits(rows) && fits(out) && fits(inp)) {
        return unsupported(KERNEL, "a dimension exceeds i32");
    }
    if rows == 0 || out == 0 || inp == 0 {
        return Ok(acc.clone());
    }
    let (pdy, pw, pc) = (ptr(dy)?, ptr(w)?, ptr(acc)?);
    let (alpha, beta) = (1f32, 1f32);
    let blas = dev.cublas_handle();
    dev.cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(|e| Error::Driver(e.to_string()))?;
    // Column-major: acc^T (in x rows, ld = in) += W^T (in x out: W as stored, N, ld = in)
    // * dy^T (out x rows: dy as stored, N, ld = out).
    // SAFETY: pointers from live tensors checked above; candle's stream orders every use.
    unsafe {
        result::gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_N,
            sys::cublasOperation_t::CUBLAS_OP_N,
            inp as i32,
            rows as i32,
            out as i32,
            &alpha as *const f32 as *const _,
            pw as *const _,
            sys::cudaDataType_t::CUDA_R_16BF,
            inp as i32,
            pdy as *const _,
            sys::cudaDataType_t::CUDA_R_16BF,
            out as i32,
            &beta as *const f32 as *const _,
            pc as *mut _,
            sys::cudaDataType_t::CUDA_R_16BF,
            inp as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .map_err(|e| Error::Driver(format!("cublasGemmEx (dx += dy W): {e:?}")))?;
    Ok(acc.clone())
}
