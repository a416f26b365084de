//! Multi-tensor Adam / AdamW over f32 masters and moments, in place, in one launch; writes
//! the bf16 compute copy in the same pass. The arithmetic is titan-optim's composite update
//! op by op (see `kernels/adamw.cu`).

use candle_core::{DType, Tensor};

use crate::error::{unsupported, Result};
use crate::gradnorm::{block_table, check_disjoint, Range, Scale, CHUNK, THREADS};
use crate::launch::{cubin, cuda_device, expect, function, launch, ptr, Cubin};

pub(crate) const CUBIN: Cubin = cubin!("adamw");
const KERNEL: &str = "adamw";

/// One parameter of a multi-tensor step: its tensors (f32, contiguous, same shape, one CUDA
/// device) and its per-step scalars (parameters may have taken different numbers of steps).
#[derive(Debug, Clone, Copy)]
pub struct AdamParam<'a> {
    /// Updated in place.
    pub master: &'a Tensor,
    /// Read only (multiplied by the step's [`Scale`] as it is read).
    pub grad: &'a Tensor,
    /// Updated in place.
    pub exp_avg: &'a Tensor,
    /// Updated in place.
    pub exp_avg_sq: &'a Tensor,
    /// A bf16 tensor of the master's shape, overwritten with the new master rounded to bf16.
    pub compute: Option<&'a Tensor>,
    /// `f32(-(lr / bias_correction1))`.
    pub neg_step_size: f32,
    /// `1 / f32(sqrt(bias_correction2))`.
    pub inv_bc2_sqrt: f32,
}

/// How weight decay enters the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightDecay {
    None,
    /// AdamW: the master is multiplied by `factor = f32(1 - lr * weight_decay)` first.
    Decoupled {
        factor: f32,
    },
    /// Adam: `weight_decay * master` is added to the gradient.
    L2 {
        weight_decay: f32,
    },
}

/// Scalars shared by every parameter of a step, each already rounded to f32 as the
/// composite update rounds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamScalars {
    pub weight_decay: WeightDecay,
    /// `f32(1 - beta1)`: `exp_avg.lerp_(grad, lerp_weight)`.
    pub lerp_weight: f32,
    /// `f32(beta2)`.
    pub beta2: f32,
    /// `f32(1 - beta2)`.
    pub one_minus_beta2: f32,
    /// `f32(eps)`.
    pub eps: f32,
}

/// One Adam/AdamW step of every parameter in `params`, in place, in one launch.
///
/// The gradient of every parameter is multiplied by `scale` as it is read (pass
/// `Scale::Host(1.0)` for none). Masters, moments and compute copies are written in place, so
/// every other handle on them sees the new values; the tensors written must not share memory
/// with each other or with a gradient (checked: `Unsupported` otherwise).
pub fn adam_step(params: &[AdamParam], scalars: &AdamScalars, scale: Scale) -> Result<()> {
    let live: Vec<&AdamParam> = params
        .iter()
        .filter(|p| p.master.elem_count() > 0)
        .collect();
    let Some(first) = live.first() else {
        return Ok(());
    };
    let dev = cuda_device(KERNEL, first.master)?;
    let device = first.master.device().clone();
    let mut ranges = Vec::with_capacity(5 * live.len());
    for p in &live {
        let shape = p.master.shape();
        for (what, t, written) in [
            ("master", p.master, true),
            ("grad", p.grad, false),
            ("exp_avg", p.exp_avg, true),
            ("exp_avg_sq", p.exp_avg_sq, true),
        ] {
            expect(KERNEL, what, t, DType::F32, true)?;
            if t.shape() != shape || !t.device().same_device(&device) {
                return unsupported(
                    KERNEL,
                    format!(
                        "{what} {:?} does not match master {shape:?} on one device",
                        t.dims()
                    ),
                );
            }
            ranges.push(Range::of(t, written)?);
        }
        if let Some(c) = p.compute {
            expect(KERNEL, "compute copy", c, DType::BF16, true)?;
            if c.shape() != shape || !c.device().same_device(&device) {
                return unsupported(KERNEL, "compute copy does not match its master");
            }
            ranges.push(Range::of(c, true)?);
        }
    }
    check_disjoint(KERNEL, ranges)?;
    let (pscale, fscale) = scale.args(KERNEL, &device)?;

    // The `AdamTensor` table of adamw.cu: 8 words per tensor, the last holding two f32s
    // (neg_step_size in the low half: little-endian, as the struct lays them out).
    let sizes: Vec<usize> = live.iter().map(|p| p.master.elem_count()).collect();
    let (first_blocks, blocks) = block_table(KERNEL, &sizes)?;
    let mut words: Vec<i64> = Vec::with_capacity(8 * live.len());
    for (p, fb) in live.iter().zip(&first_blocks) {
        let floats = (p.neg_step_size.to_bits() as u64) | ((p.inv_bc2_sqrt.to_bits() as u64) << 32);
        let compute = match p.compute {
            Some(c) => ptr(c)?,
            None => 0,
        };
        words.extend_from_slice(&[
            ptr(p.master)? as i64,
            ptr(p.grad)? as i64,
            ptr(p.exp_avg)? as i64,
            ptr(p.exp_avg_sq)? as i64,
            compute as i64,
            p.master.elem_count() as i64,
            *fb,
            floats as i64,
        ]);
    }
    let n = words.len();
    let table = Tensor::from_vec(words, n, &device)?;

    let (wd_mode, decay, wd) = match scalars.weight_decay {
        WeightDecay::None => (0i32, 1f32, 0f32),
        WeightDecay::Decoupled { factor } => (1, factor, 0.0),
        WeightDecay::L2 { weight_decay } => (2, 1.0, weight_decay),
    };
    let lerp_w = scalars.lerp_weight;
    // ATen's lerp: the weight's complement in f32, and which form applies.
    let lerp_omw = 1.0f32 - lerp_w;
    let lerp_small = i32::from(lerp_w.abs() < 0.5);
    let (beta2, omb2, eps) = (scalars.beta2, scalars.one_minus_beta2, scalars.eps);
    let (ptable, num_tensors, chunk) = (ptr(&table)?, live.len() as i32, CHUNK as i64);
    let f = function(&dev, &CUBIN, "adam_multi_f32")?;
    launch!(dev, f, (blocks, 1, 1), THREADS, 0;
        ptable, num_tensors, chunk, pscale, fscale, wd_mode, decay, wd, lerp_w, lerp_omw,
        lerp_small, beta2, omb2, eps)
}
