//! Weight gradients of a linear layer straight into f32 with cuBLAS: `dW (out, in) = dy^T x`
//! from bf16 `dy (rows, out)` and `x (rows, in)`, accumulated in f32 (compute type 32F) into
//! an existing f32 gradient in place (beta = 1) or into a new tensor (beta = 0). No bf16
//! round trip of dW and no separate cast-and-add.

use candle_core::cuda_backend::cudarc::cublas::{result, sys};
use candle_core::{DType, Tensor};

use crate::error::{unsupported, Error, Result};
use crate::launch::{alloc, cuda_device, expect, ptr};

use sys::cublasOperation_t as Op;

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
    // Column-major view: C^T (in x out, ldc = in) = x^T (in x rows, as stored: N, ld = in)
    // * dy (rows x out: stored as dy^T (out x rows, ld = out), so T).
    gemm_bf16(
        &dev,
        "dW",
        Op::CUBLAS_OP_N,
        Op::CUBLAS_OP_T,
        (inp, out, rows),
        (x, inp),
        (dy, out),
        (&c, sys::cudaDataType_t::CUDA_R_32F, inp),
        beta,
    )?;
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
    // Column-major: acc^T (in x rows, ld = in) += W^T (in x out: W as stored, N, ld = in)
    // * dy^T (out x rows: dy as stored, N, ld = out).
    gemm_bf16(
        &dev,
        "dx += dy W",
        Op::CUBLAS_OP_N,
        Op::CUBLAS_OP_N,
        (inp, rows, out),
        (w, inp),
        (dy, out),
        (acc, sys::cudaDataType_t::CUDA_R_16BF, inp),
        1.0,
    )?;
    Ok(acc.clone())
}

/// One cublasGemmEx on candle's handle and stream, column-major: `C = A op B + beta C` with
/// bf16 `A (m x k)` and `B (k x n)` (after `ta`/`tb`), `C` in `c_type`, f32 accumulation.
/// Operands are `(tensor, leading dimension)`; the callers have checked dtypes, shapes and
/// devices.
#[allow(clippy::too_many_arguments)]
fn gemm_bf16(
    dev: &candle_core::cuda_backend::CudaDevice,
    what: &str,
    ta: Op,
    tb: Op,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&Tensor, usize),
    (b, ldb): (&Tensor, usize),
    (c, c_type, ldc): (&Tensor, sys::cudaDataType_t, usize),
    beta: f32,
) -> Result<()> {
    let (pa, pb, pc) = (ptr(a)?, ptr(b)?, ptr(c)?);
    let alpha = 1f32;
    let blas = dev.cublas_handle();
    dev.cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(|e| Error::Driver(e.to_string()))?;
    // SAFETY: the pointers come from live tensors whose dtype, contiguity and shape the
    // caller checked; cuBLAS runs on candle's stream, ordered with every other use of them.
    unsafe {
        result::gemm_ex(
            *blas.handle(),
            ta,
            tb,
            m as i32,
            n as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            pa as *const _,
            sys::cudaDataType_t::CUDA_R_16BF,
            lda as i32,
            pb as *const _,
            sys::cudaDataType_t::CUDA_R_16BF,
            ldb as i32,
            &beta as *const f32 as *const _,
            pc as *mut _,
            c_type,
            ldc as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .map_err(|e| Error::Driver(format!("cublasGemmEx ({what}): {e:?}")))?;
    Ok(())
}
