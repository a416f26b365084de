//! Parameters: a name (torchtitan's FQN), a shape, an init rule, an f32 master copy, the
//! compute-dtype copy that forward and backward read, and an f32 gradient.
//!
//! A parameter may exist without storage (shape-only, for model descriptions and memory
//! estimates), with a master but no compute copy (a sharding strategy released it), or fully
//! materialized. Modules read only [`Param::compute`] and write only [`Param::accumulate_grad`]
//! (or, where the gradient's consumer takes rows, [`Param::push_row_grad`]); who owns the
//! master (a single process, or FSDP shards) is not their business.

use candle_core::{DType, Device, Shape, Tensor};

use crate::rng::CounterRng;
use crate::{Error, Result};

/// How a parameter's initial values are drawn (torchtitan's init rules).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones (norm weights).
    Ones,
    /// `normal_(0, std)`.
    Normal { std: f64 },
    /// `trunc_normal_(0, std, a, b)` with absolute cutoffs `a`, `b`.
    TruncNormal { std: f64, a: f64, b: f64 },
}

impl Init {
    /// torchtitan's `trunc_normal_(std=std)` with PyTorch's default cutoffs -2 and 2.
    pub fn trunc_normal(std: f64) -> Self {
        Init::TruncNormal {
            std,
            a: -2.0,
            b: 2.0,
        }
    }

    /// The standard deviation this rule targets (0 for constants), for init statistics tests.
    pub fn std(&self) -> f64 {
        match self {
            Init::Zeros | Init::Ones => 0.0,
            Init::Normal { std } | Init::TruncNormal { std, .. } => *std,
        }
    }

    /// Values for flat elements `[start, start + out.len())` of the parameter named `name`.
    /// Element values depend only on `(seed, name, index)`, so any shard can be drawn alone.
    /// Large ranges are drawn on all cores (the values do not depend on the split).
    pub fn fill(&self, seed: u64, name: &str, start: u64, out: &mut [f32]) {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        self.fill_threads(seed, name, start, out, threads);
    }

    /// [`Init::fill`] split over at most `threads` threads.
    fn fill_threads(&self, seed: u64, name: &str, start: u64, out: &mut [f32], threads: usize) {
        let rng = CounterRng::for_param(seed, name);
        let init = *self;
        let fill_range = move |chunk_start: u64, chunk: &mut [f32]| match init {
            Init::Zeros => chunk.fill(0.0),
            Init::Ones => chunk.fill(1.0),
            Init::Normal { std } => {
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v = (std * rng.normal(chunk_start + j as u64, 0)) as f32;
                }
            }
            Init::TruncNormal { std, a, b } => {
                for (j, v) in chunk.iter_mut().enumerate() {
                    let i = chunk_start + j as u64;
                    // The first draw inline, as `CounterRng::trunc_normal` computes it: all but
                    // a few values in a thousand are accepted there. Calling `trunc_normal` in
                    // this loop costs 12x more per value (its retry loop blocks a straight-line
                    // loop body), which made a 1B model's init take a minute.
                    let x = std * rng.normal(i, 0);
                    *v = if x >= a && x <= b {
                        x as f32
                    } else {
                        trunc_normal_redraw(&rng, i, std, a, b) as f32
                    };
                }
            }
        };
        // Below this a thread costs more than it saves (a value takes ~40 ns).
        const MIN_PER_THREAD: usize = 1 << 16;
        if threads <= 1 || out.len() < 2 * MIN_PER_THREAD {
            fill_range(start, out);
            return;
        }
        let per_thread = out.len().div_ceil(threads).max(MIN_PER_THREAD);
        std::thread::scope(|s| {
            for (t, chunk) in out.chunks_mut(per_thread).enumerate() {
                s.spawn(move || fill_range(start + (t * per_thread) as u64, chunk));
            }
        });
    }
}

/// The rare rejected first draw of a truncated normal: `trunc_normal` from draw 0 again (it
/// rejects draw 0 the same way), kept out of line so the common path stays straight.
#[cold]
#[inline(never)]
fn trunc_normal_redraw(rng: &CounterRng, index: u64, std: f64, a: f64, b: f64) -> f64 {
    rng.trunc_normal(index, std, a, b)
}

/// What a parameter is, without its values.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Fully qualified name, as torchtitan's state dict (`layers.0.attention.wq.weight`).
    pub name: String,
    /// Global shape.
    pub shape: Shape,
    /// How to initialize it.
    pub init: Init,
}

impl ParamSpec {
    pub fn new(name: impl Into<String>, shape: impl Into<Shape>, init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.into(),
            init,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.elem_count()
    }
}

/// A trainable tensor and its gradient.
#[derive(Debug, Clone)]
pub struct Param {
    spec: ParamSpec,
    master: Option<Tensor>,
    compute: Option<Tensor>,
    grad: Option<Tensor>,
    /// Whether [`Param::push_row_grad`] may defer contributions as rows.
    takes_row_grads: bool,
    /// Deferred row contributions `(ids, rows)`: `grad[ids[r]] += rows[r]`.
    row_grads: Vec<(Tensor, Tensor)>,
}

impl Param {
    /// A shape-only parameter: no storage until [`Param::materialize`].
    pub fn new(spec: ParamSpec) -> Self {
        Self {
            spec,
            master: None,
            compute: None,
            grad: None,
            takes_row_grads: false,
            row_grads: Vec::new(),
        }
    }

    /// A parameter with the given f32 master values (its compute copy is made by
    /// [`Param::refresh_compute`]).
    pub fn from_tensor(name: impl Into<String>, value: Tensor, init: Init) -> Result<Self> {
        let spec = ParamSpec::new(name, value.shape().clone(), init);
        let mut p = Self::new(spec);
        p.set_master(value)?;
        Ok(p)
    }

    pub fn spec(&self) -> &ParamSpec {
        &self.spec
    }
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn shape(&self) -> &Shape {
        &self.spec.shape
    }
    pub fn numel(&self) -> usize {
        self.spec.numel()
    }
    pub fn init(&self) -> Init {
        self.spec.init
    }

    /// Draw the initial values on `device` (f32 master) and make the compute copy in
    /// `compute_dtype`.
    pub fn materialize(&mut self, device: &Device, seed: u64, compute_dtype: DType) -> Result<()> {
        let mut values = vec![0f32; self.numel()];
        self.spec.init.fill(seed, &self.spec.name, 0, &mut values);
        let t = Tensor::from_vec(values, self.spec.shape.clone(), device)?;
        self.master = Some(t);
        self.grad = None;
        self.refresh_compute(compute_dtype)
    }

    /// The f32 master values, if this process holds them.
    pub fn master(&self) -> Option<&Tensor> {
        self.master.as_ref()
    }

    /// Replace the master values (cast to f32); the shape must match the spec.
    pub fn set_master(&mut self, value: Tensor) -> Result<()> {
        self.check_shape(value.shape())?;
        self.master = Some(value.to_dtype(DType::F32)?);
        Ok(())
    }

    /// Drop the master values (a sharding strategy took ownership of them).
    pub fn take_master(&mut self) -> Option<Tensor> {
        self.master.take()
    }

    /// Rebuild the compute copy from the master (after an optimizer step).
    pub fn refresh_compute(&mut self, compute_dtype: DType) -> Result<()> {
        let master = self.master.as_ref().ok_or_else(|| Error::NotMaterialized {
            name: self.spec.name.clone(),
        })?;
        // On CPU in f32 this is a cheap Arc clone, not a copy.
        self.compute = Some(master.to_dtype(compute_dtype)?);
        Ok(())
    }

    /// The tensor forward and backward compute with.
    pub fn compute(&self) -> Result<&Tensor> {
        self.compute.as_ref().ok_or_else(|| Error::NotMaterialized {
            name: self.spec.name.clone(),
        })
    }

    /// Whether a compute copy is present.
    pub fn has_compute(&self) -> bool {
        self.compute.is_some()
    }

    /// Install a compute copy (e.g. the result of an all-gather); the shape must match.
    pub fn set_compute(&mut self, value: Tensor) -> Result<()> {
        self.check_shape(value.shape())?;
        self.compute = Some(value);
        Ok(())
    }

    /// Free the compute copy (FSDP reshard after forward).
    pub fn release_compute(&mut self) {
        self.compute = None;
    }

    /// The accumulated f32 gradient, if any backward has run since the last [`Param::zero_grad`].
    ///
    /// On CUDA, fused kernels write this tensor in place (the linear weight-gradient GEMM adds
    /// into it; clipping scales it): a handle kept on it sees later values, so copy it to keep
    /// a snapshot. The same holds for [`Param::master`] and the bf16 [`Param::compute`] copy
    /// under titan-optim's fused optimizer step.
    pub fn grad(&self) -> Option<&Tensor> {
        self.grad.as_ref()
    }

    /// Add `g` (any float dtype) into the f32 gradient.
    pub fn accumulate_grad(&mut self, g: &Tensor) -> Result<()> {
        self.check_shape(g.shape())?;
        let g = g.to_dtype(DType::F32)?;
        self.grad = Some(match self.grad.take() {
            None => g,
            Some(acc) => (acc + g)?,
        });
        Ok(())
    }

    /// Replace the gradient (e.g. with a reduced one).
    pub fn set_grad(&mut self, g: Option<Tensor>) -> Result<()> {
        if let Some(g) = &g {
            self.check_shape(g.shape())?;
        }
        self.grad = g;
        Ok(())
    }

    /// Take the gradient out, leaving none.
    pub fn take_grad(&mut self) -> Option<Tensor> {
        self.grad.take()
    }

    /// Forget the gradient (and any deferred rows).
    pub fn zero_grad(&mut self) {
        self.grad = None;
        self.row_grads.clear();
    }

    /// Lets [`Param::push_row_grad`] defer row contributions instead of adding them into
    /// [`Param::grad`]. Set by the gradient's consumer when it handles rows itself: FSDP
    /// exchanges an embedding's (ids, output-gradient rows), a few MB, and builds each rank's
    /// row shard of the table's gradient from everyone's rows, instead of reduce-scattering a
    /// dense f32 table gradient (1 GB for a 128K x 2048 vocabulary).
    pub fn set_takes_row_grads(&mut self, on: bool) {
        self.takes_row_grads = on;
    }

    /// Whether [`Param::push_row_grad`] defers rows (see [`Param::set_takes_row_grads`]).
    pub fn takes_row_grads(&self) -> bool {
        self.takes_row_grads
    }

    /// A row contribution to the gradient, `grad[ids[r]] += rows[r]` along dim 0: `ids` u32
    /// `(n,)`, `rows` `(n, row_elems)` in any float dtype. Deferred if the consumer takes rows
    /// ([`Param::set_takes_row_grads`]; it collects them with [`Param::take_row_grads`]);
    /// otherwise the caller adds them densely (this returns `false`).
    pub fn push_row_grad(&mut self, ids: &Tensor, rows: &Tensor) -> Result<bool> {
        if !self.takes_row_grads {
            return Ok(false);
        }
        let dims = self.spec.shape.dims();
        let row_elems: usize = dims.iter().skip(1).product();
        let n = ids.elem_count();
        if dims.is_empty() || ids.dtype() != DType::U32 || rows.dims() != [n, row_elems] {
            return Err(Error::Msg(format!(
                "row gradient for `{}` {:?}: expected u32 ids (n,) and rows (n, {row_elems}), got ids {:?} {:?} and rows {:?}",
                self.spec.name,
                dims,
                ids.dtype(),
                ids.dims(),
                rows.dims()
            )));
        }
        self.row_grads
            .push((ids.flatten_all()?.contiguous()?, rows.contiguous()?));
        Ok(true)
    }

    /// The deferred row contributions, in the order they were pushed.
    pub fn take_row_grads(&mut self) -> Vec<(Tensor, Tensor)> {
        std::mem::take(&mut self.row_grads)
    }

    /// Whether row contributions are waiting.
    pub fn has_row_grads(&self) -> bool {
        !self.row_grads.is_empty()
    }

    fn check_shape(&self, got: &Shape) -> Result<()> {
        if got != &self.spec.shape {
            return Err(Error::ParamShape {
                name: self.spec.name.clone(),
                expected: self.spec.shape.clone(),
                got: got.clone(),
            });
        }
        Ok(())
    }
}

/// Anything that owns parameters.
pub trait Module {
    /// Every parameter, in a stable order (the state-dict order).
    fn params(&self) -> Vec<&Param>;
    /// Every parameter, mutably, in the same order.
    fn params_mut(&mut self) -> Vec<&mut Param>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_init_equals_slice_of_full_init() {
        let init = Init::trunc_normal(0.02);
        let mut full = vec![0f32; 3000];
        init.fill(5, "layers.0.attention.wq.weight", 0, &mut full);
        let mut shard = vec![0f32; 1000];
        init.fill(5, "layers.0.attention.wq.weight", 1000, &mut shard);
        assert_eq!(&full[1000..2000], &shard[..]);
    }

    #[test]
    fn fill_equals_the_per_element_draws_whatever_the_split() {
        let cases = [
            Init::Normal { std: 1.0 },
            Init::trunc_normal(0.02),
            // Narrow cutoffs: most first draws are rejected and redrawn.
            Init::TruncNormal {
                std: 1.0,
                a: -0.5,
                b: 0.5,
            },
            Init::Ones,
        ];
        let n = 150_001; // above the threading threshold, not a multiple of the splits
        let start = 12_345;
        for init in cases {
            let name = "layers.3.feed_forward.w2.weight";
            let rng = CounterRng::for_param(9, name);
            let want: Vec<u32> = (0..n as u64)
                .map(|j| {
                    let i = start + j;
                    let v = match init {
                        Init::Zeros => 0.0,
                        Init::Ones => 1.0,
                        Init::Normal { std } => std * rng.normal(i, 0),
                        Init::TruncNormal { std, a, b } => rng.trunc_normal(i, std, a, b),
                    };
                    (v as f32).to_bits()
                })
                .collect();
            for threads in [1, 2, 3, 7] {
                let mut got = vec![0f32; n];
                init.fill_threads(9, name, start, &mut got, threads);
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert!(got == want, "{init:?} with {threads} threads");
            }
        }
    }

    #[test]
    fn grads_accumulate_in_f32() -> Result<()> {
        let mut p = Param::new(ParamSpec::new("w", (2, 2), Init::Ones));
        p.materialize(&Device::Cpu, 0, DType::F32)?;
        let g = Tensor::ones((2, 2), DType::F64, &Device::Cpu)?;
        p.accumulate_grad(&g)?;
        p.accumulate_grad(&g)?;
        let grad = p.grad().unwrap();
        assert_eq!(grad.dtype(), DType::F32);
        assert_eq!(grad.to_vec2::<f32>()?, vec![vec![2.0, 2.0], vec![2.0, 2.0]]);
        assert!(p
            .accumulate_grad(&Tensor::ones(3, DType::F32, &Device::Cpu)?)
            .is_err());
        Ok(())
    }
}
