//! Dispatch to titan-kernels' fused CUDA kernels.
//!
//! Every op in [`crate::ops`] keeps its composite candle implementation (the CPU path and the
//! reference) and first asks this module for a fused kernel. A fused kernel runs when the
//! build has feature `cuda`, [`enabled`] is on (default; `TITAN_FUSED_KERNELS=0` or
//! [`set_enabled`] turn it off, e.g. to A/B the two paths on one GPU), the tensors are on a
//! CUDA device in bf16, and the kernel accepts the shapes. Each wrapper returns `Ok(None)`
//! when it does not apply, so the caller falls back; a driver failure is an error.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

#[cfg(feature = "cuda")]
use crate::Result;

pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod norm;
pub mod rope;
pub mod swiglu;
pub mod xent;

/// 0 = not read yet, 1 = on, 2 = off.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Whether fused kernels may replace composites (process-wide).
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = !matches!(
                std::env::var("TITAN_FUSED_KERNELS").as_deref(),
                Ok("0") | Ok("false") | Ok("off")
            );
            ENABLED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// Turn fused kernels on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether this build carries fused kernels at all.
pub const AVAILABLE: bool = cfg!(feature = "cuda");

/// Whether head-dim-64 flash attention has a second implementation on Hopper's warpgroup MMA
/// (titan-kernels built for sm_90a), besides the mma.sync one.
pub fn hopper_attention_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        titan_kernels::attention::HOPPER_MMA_AVAILABLE
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// Choose head-dim-64 flash attention's implementation for later calls: warpgroup MMA (`true`,
/// the default where available; `TITAN_ATTN_WGMMA=0` turns it off) or mma.sync. Both compute
/// the same function; the GPU checks run both. Returns the choice in effect.
pub fn set_hopper_attention(on: bool) -> bool {
    #[cfg(feature = "cuda")]
    {
        titan_kernels::attention::set_hopper_mma(on);
        titan_kernels::attention::hopper_mma()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = on;
        false
    }
}

/// Whether head-dim-64 flash attention currently runs the warpgroup-MMA kernels.
pub fn hopper_attention() -> bool {
    #[cfg(feature = "cuda")]
    {
        titan_kernels::attention::hopper_mma()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// True when `t` is a bf16 CUDA tensor and fused kernels are on: the common precondition.
pub(crate) fn applies(t: &Tensor) -> bool {
    AVAILABLE && t.device().is_cuda() && t.dtype() == DType::BF16 && enabled()
}

/// Map a launcher's result: `Unsupported` becomes `None` (fall back), the rest an error.
#[cfg(feature = "cuda")]
pub(crate) fn lift<T>(r: titan_kernels::Result<T>) -> Result<Option<T>> {
    Ok(titan_kernels::supported(r)?)
}
