//! Flash attention (`kernels/attention.cu`): causal or block-causal, GQA, bf16, head_dim 64 or
//! 128, forward saving the log-sum-exp and backward recomputing the probabilities from it.
//!
//! Inputs are logical `(batch, heads, seq, head_dim)` views with any strides on the first three
//! dims (the last must be 1): the model passes `(b, s, h, hd).transpose(1, 2)` views without
//! copying. Outputs (`out`, `d_q`, `d_k`, `d_v`) are allocated `(b, s, h, hd)` contiguous and
//! returned as their `.transpose(1, 2)` views, so turning them back into `(b, s, h * hd)` is
//! free.
//!
//! Head dim 64 has two implementations of each pass with the same tiles and results: Hopper's
//! warpgroup MMA (wgmma, the default where the cubins target sm_90a) and mma.sync; see
//! [`hopper_mma`].

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::launch::{
    alloc, cubin, cuda_device, expect, function, launch, ptr, set_dynamic_smem, Cubin,
};

pub(crate) const CUBIN: Cubin = cubin!("attention");
const KERNEL: &str = "flash_attention";

// Tile sizes, as `attention.cu` defines them (FWD_BM, FWD_BN, BWD_BN, BWD_BM64/128, NWARPS).
const FWD_BM: usize = 128;
const FWD_BN: usize = 64;
const BWD_BN: usize = 128;
const THREADS: u32 = 256;
/// Slack so the kernels can align their shared tiles to 1 KiB.
const SMEM_ALIGN: usize = 1024;

fn bwd_bm(hd: usize) -> usize {
    if hd == 64 {
        64
    } else {
        32
    }
}

fn fwd_smem(hd: usize) -> usize {
    // Q [BM][hd], K and V [2][BN][hd] bf16, doc ids [2][BN] u32.
    SMEM_ALIGN + FWD_BM * hd * 2 + 2 * 2 * FWD_BN * hd * 2 + 2 * FWD_BN * 4
}

fn bwd_smem(hd: usize) -> usize {
    // K, V [BN][hd], Q, dO [2][BM][hd], dS^T [BN][BM] bf16; lse2, D, doc ids [2][BM] 4 bytes.
    let bm = bwd_bm(hd);
    SMEM_ALIGN + 2 * BWD_BN * hd * 2 + 2 * 2 * bm * hd * 2 + BWD_BN * bm * 2 + 3 * 2 * bm * 4
}

/// Sizes shared by every tensor of one attention call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    s: usize,
    hd: usize,
}

/// `(batch, head, seq)` element strides of a `(b, h, s, hd)` bf16 view the kernels can read
/// with 16-byte accesses: last stride 1, the others multiples of 8, the first element 16-byte
/// aligned. Dims of size 1 get stride 0 (their stride is never used).
fn strides(what: &str, t: &Tensor) -> Result<[i64; 3]> {
    let dims = t.dims();
    let st = t.stride();
    if dims.len() != 4 {
        return unsupported(KERNEL, format!("{what} must be 4-d, got {dims:?}"));
    }
    if st[3] != 1 {
        return unsupported(KERNEL, format!("{what}'s last dim must have stride 1"));
    }
    let mut out = [0i64; 3];
    for d in 0..3 {
        let s = if dims[d] == 1 { 0 } else { st[d] };
        if s % 8 != 0 {
            return unsupported(
                KERNEL,
                format!("{what}'s strides {st:?} are not multiples of 8 elements"),
            );
        }
        out[d] = s as i64;
    }
    if ptr(t)? % 16 != 0 {
        return unsupported(KERNEL, format!("{what} is not 16-byte aligned"));
    }
    Ok(out)
}

fn check_inputs(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Dims> {
    for (what, t) in [("q", q), ("k", k), ("v", v)] {
        expect(KERNEL, what, t, DType::BF16, false)?;
    }
    let (b, hq, s, hd) = q.dims4()?;
    let (kb, hkv, ks, khd) = k.dims4()?;
    if (kb, ks, khd) != (b, s, hd) || v.dims() != k.dims() {
        return unsupported(
            KERNEL,
            format!(
                "q {:?}, k {:?}, v {:?} do not match",
                q.dims(),
                k.dims(),
                v.dims()
            ),
        );
    }
    if hd != 64 && hd != 128 {
        return unsupported(KERNEL, format!("head_dim {hd} (supported: 64, 128)"));
    }
    if hkv == 0 || hq % hkv != 0 {
        return unsupported(
            KERNEL,
            format!("{hq} query heads is not a multiple of {hkv} kv heads"),
        );
    }
    if !(scale.is_finite() && scale > 0.0) {
        return unsupported(KERNEL, format!("scale {scale} (must be finite and > 0)"));
    }
    // Grid limits (y, z <= 65535) and i32 sequence positions.
    if b > 65535 || s.div_ceil(FWD_BM.min(BWD_BN)) > 65535 || s > i32::MAX as usize / 2 {
        return unsupported(KERNEL, format!("batch {b} / seq {s} too large"));
    }
    Ok(Dims { b, hq, hkv, s, hd })
}

/// The document ids as a contiguous `(b, s)` u32 tensor on the inputs' device (pointer), or 0.
fn doc_ptr(q: &Tensor, doc_ids: Option<&Tensor>, d: Dims) -> Result<(u64, Option<Tensor>)> {
    let Some(doc) = doc_ids else {
        return Ok((0, None));
    };
    same_device(q, &[("doc_ids", doc)])?;
    expect(KERNEL, "doc_ids", doc, DType::U32, false)?;
    if doc.dims() != [d.b, d.s] {
        return unsupported(
            KERNEL,
            format!("doc_ids {:?} do not match ({}, {})", doc.dims(), d.b, d.s),
        );
    }
    let doc = doc.contiguous()?;
    Ok((ptr(&doc)?, Some(doc)))
}

/// Whether this build has the warpgroup-MMA (wgmma) attention kernels: cubins built for sm_90a.
pub const HOPPER_MMA_AVAILABLE: bool = cfg!(titan_wgmma);

/// 0: not decided yet (read `TITAN_ATTN_WGMMA` on first use), 1: off, 2: on.
static HOPPER_MMA: AtomicU8 = AtomicU8::new(0);

/// Whether head-dim-64 attention runs the warpgroup-MMA kernels (default where available;
/// `TITAN_ATTN_WGMMA=0` or [`set_hopper_mma`]`(false)` selects the mma.sync ones).
pub fn hopper_mma() -> bool {
    match HOPPER_MMA.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = HOPPER_MMA_AVAILABLE
                && std::env::var("TITAN_ATTN_WGMMA").map_or(true, |v| v.trim() != "0");
            HOPPER_MMA.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Chooses the head-dim-64 kernels for later calls: warpgroup MMA (`true`, only where
/// [`HOPPER_MMA_AVAILABLE`]) or mma.sync. Both compute the same function; tests run both.
pub fn set_hopper_mma(on: bool) {
    let on = on && HOPPER_MMA_AVAILABLE;
    HOPPER_MMA.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// The kernel variant for `hd` (64 or 128) and mask (block-causal when `doc`).
fn kernel_name(stage: Stage, hd: usize, doc: bool) -> &'static str {
    let wg = hd == 64 && stage != Stage::Preprocess && hopper_mma();
    match (stage, hd == 64, doc) {
        // Same tiles, shared memory and grids as the mma.sync kernels below.
        (Stage::Forward, true, false) if wg => "flash_fwd_wg_hd64",
        (Stage::Forward, true, true) if wg => "flash_fwd_wg_hd64_doc",
        (Stage::Backward, true, false) if wg => "flash_bwd_wg_hd64",
        (Stage::Backward, true, true) if wg => "flash_bwd_wg_hd64_doc",
        (Stage::Forward, true, false) => "flash_fwd_hd64",
        (Stage::Forward, true, true) => "flash_fwd_hd64_doc",
        (Stage::Forward, false, false) => "flash_fwd_hd128",
        (Stage::Forward, false, true) => "flash_fwd_hd128_doc",
        (Stage::Preprocess, true, _) => "flash_bwd_pre_hd64",
        (Stage::Preprocess, false, _) => "flash_bwd_pre_hd128",
        (Stage::Backward, true, false) => "flash_bwd_hd64",
        (Stage::Backward, true, true) => "flash_bwd_hd64_doc",
        (Stage::Backward, false, false) => "flash_bwd_hd128",
        (Stage::Backward, false, true) => "flash_bwd_hd128_doc",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Forward,
    Preprocess,
    Backward,
}

/// Every tensor must live on `q`'s device.
fn same_device(q: &Tensor, others: &[(&str, &Tensor)]) -> Result<()> {
    for (what, t) in others {
        if !t.device().same_device(q.device()) {
            return unsupported(KERNEL, format!("{what} is not on q's device"));
        }
    }
    Ok(())
}

/// Causal attention `softmax(q k^T * scale) v`, block-causal when `doc_ids` `(b, s)` u32 is
/// given (a query sees earlier keys of its own document only).
///
/// `q (b, hq, s, hd)`, `k, v (b, hkv, s, hd)`: bf16 CUDA, `hd` 64 or 128, `hq % hkv == 0`, any
/// strides with the last one 1 (others multiples of 8). Returns `out (b, hq, s, hd)` (a
/// transposed view of contiguous `(b, s, hq, hd)`) and the log-sum-exp `lse (b, hq, s)` f32
/// (natural log of the softmax denominators), which [`flash_attn_backward`] needs.
pub fn flash_attn_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    doc_ids: Option<&Tensor>,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, q)?;
    same_device(q, &[("k", k), ("v", v)])?;
    let d = check_inputs(q, k, v, scale)?;
    let [q_sb, q_sh, q_ss] = strides("q", q)?;
    let [k_sb, k_sh, k_ss] = strides("k", k)?;
    let [v_sb, v_sh, v_ss] = strides("v", v)?;
    let (pdoc, _doc) = doc_ptr(q, doc_ids, d)?;
    let out = alloc(&dev, (d.b, d.s, d.hq, d.hd), DType::BF16, false)?;
    let lse = alloc(&dev, (d.b, d.hq, d.s), DType::F32, false)?;
    if d.b * d.hq * d.s > 0 {
        let f = function(&dev, &CUBIN, kernel_name(Stage::Forward, d.hd, pdoc != 0))?;
        let smem = fwd_smem(d.hd);
        set_dynamic_smem(&f, smem as u32)?;
        let (pq, pk, pv, po, pl) = (ptr(q)?, ptr(k)?, ptr(v)?, ptr(&out)?, ptr(&lse)?);
        let (seq, hq, hkv) = (d.s as i32, d.hq as i32, d.hkv as i32);
        let scale_log2 = (scale * std::f64::consts::LOG2_E) as f32;
        let grid = (d.hq as u32, d.b as u32, d.s.div_ceil(FWD_BM) as u32);
        launch!(dev, f, grid, THREADS, smem;
            pq, pk, pv, po, pl, pdoc, seq, hq, hkv,
            q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, scale_log2)?;
    }
    Ok((out.transpose(1, 2)?, lse))
}

/// Gradients `(d_q, d_k, d_v)` of [`flash_attn_forward`] given `d_out`.
///
/// `q, k, v, doc_ids, scale` as in the forward, `out` and `lse` its results, `d_out` like `q`
/// (any strides, as in the forward). Returns `d_q (b, hq, s, hd)` and `d_k, d_v (b, hkv, s, hd)`
/// bf16, each a transposed view of a contiguous `(b, s, h, hd)` tensor. Scratch: D and the
/// base-2 lse (`2 * b * hq * s` f32) and an f32 `d_q` accumulator (`b * s * hq * hd`).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    doc_ids: Option<&Tensor>,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = cuda_device(KERNEL, q)?;
    same_device(
        q,
        &[
            ("k", k),
            ("v", v),
            ("out", out),
            ("lse", lse),
            ("d_out", d_out),
        ],
    )?;
    let d = check_inputs(q, k, v, scale)?;
    for (what, t) in [("out", out), ("d_out", d_out)] {
        expect(KERNEL, what, t, DType::BF16, false)?;
        if t.dims() != q.dims() {
            return unsupported(
                KERNEL,
                format!("{what} {:?} does not match q {:?}", t.dims(), q.dims()),
            );
        }
    }
    expect(KERNEL, "lse", lse, DType::F32, true)?;
    if lse.dims() != [d.b, d.hq, d.s] {
        return unsupported(KERNEL, format!("lse {:?} does not match q", lse.dims()));
    }
    let [q_sb, q_sh, q_ss] = strides("q", q)?;
    let [k_sb, k_sh, k_ss] = strides("k", k)?;
    let [v_sb, v_sh, v_ss] = strides("v", v)?;
    let [o_sb, o_sh, o_ss] = strides("out", out)?;
    let [do_sb, do_sh, do_ss] = strides("d_out", d_out)?;
    let (pdoc, _doc) = doc_ptr(q, doc_ids, d)?;

    let dq = alloc(&dev, (d.b, d.s, d.hq, d.hd), DType::BF16, false)?;
    let dk = alloc(&dev, (d.b, d.s, d.hkv, d.hd), DType::BF16, false)?;
    let dv = alloc(&dev, (d.b, d.s, d.hkv, d.hd), DType::BF16, false)?;
    let rows = d.b * d.hq * d.s;
    if rows > 0 {
        let lse2 = alloc(&dev, rows, DType::F32, false)?;
        let dsum = alloc(&dev, rows, DType::F32, false)?;
        let dq_acc = alloc(&dev, (d.b, d.s, d.hq, d.hd), DType::F32, true)?;
        let (pq, pk, pv, po, pdo) = (ptr(q)?, ptr(k)?, ptr(v)?, ptr(out)?, ptr(d_out)?);
        let (pl, pl2, pds, pacc) = (ptr(lse)?, ptr(&lse2)?, ptr(&dsum)?, ptr(&dq_acc)?);
        let (pdq, pdk, pdv) = (ptr(&dq)?, ptr(&dk)?, ptr(&dv)?);
        let (batch, seq, hq, hkv) = (d.b as i32, d.s as i32, d.hq as i32, d.hkv as i32);

        // D = rowsum(dO * O), lse2 = lse * log2(e): hd/8 threads per row.
        let f = function(&dev, &CUBIN, kernel_name(Stage::Preprocess, d.hd, false))?;
        let blocks = (rows * (d.hd / 8)).div_ceil(THREADS as usize) as u32;
        launch!(dev, f, (blocks, 1, 1), THREADS, 0;
            po, pdo, pl, pl2, pds, batch, hq, seq, o_sb, o_sh, o_ss, do_sb, do_sh, do_ss)?;

        let f = function(&dev, &CUBIN, kernel_name(Stage::Backward, d.hd, pdoc != 0))?;
        let smem = bwd_smem(d.hd);
        set_dynamic_smem(&f, smem as u32)?;
        let scale_log2 = (scale * std::f64::consts::LOG2_E) as f32;
        let fscale = scale as f32;
        let grid = (d.hkv as u32, d.b as u32, d.s.div_ceil(BWD_BN) as u32);
        launch!(dev, f, grid, THREADS, smem;
            pq, pk, pv, pdo, pl2, pds, pacc, pdk, pdv, pdoc, seq, hq, hkv,
            q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, do_sb, do_sh, do_ss,
            scale_log2, fscale)?;

        let f = function(&dev, &CUBIN, "flash_bwd_dq_convert")?;
        let n = (rows * d.hd) as i64;
        let blocks = ((rows * d.hd / 8).div_ceil(THREADS as usize)).min(132 * 16) as u32;
        launch!(dev, f, (blocks, 1, 1), THREADS, 0; pacc, pdq, n, fscale)?;
    }
    Ok((
        dq.transpose(1, 2)?,
        dk.transpose(1, 2)?,
        dv.transpose(1, 2)?,
    ))
}
