//! Distributed data parallelism: full parameters on every rank, gradients summed across
//! replicas after backward (torchtitan's `replicate`, used when `dp_replicate` is the only
//! parallelism).
//!
//! The all-reduce runs in each unit's `after_backward` of the *last* microbatch only (PyTorch's
//! `no_sync` for the others: gradients accumulate locally, then one reduction), in buckets of
//! at most `bucket_cap_mb` per collective. Gradients are summed, not averaged: the loss is
//! already divided by the global number of valid tokens.
//!
//! Overlap: on a backend that reduces in place (NCCL), each bucket's gradients are all-reduced
//! in their own storage, asynchronously, so a unit's all-reduce runs during the next units'
//! backward; the compute stream waits for all of them once, after the stem's backward (the
//! last unit), before anything reads a gradient. The host backends (and `overlap = false`)
//! reduce a bucket through one concatenated buffer at once.
//!
//! A gradient that arrives as rows (an embedding's, [`titan_core::Param::push_row_grad`]) is
//! summed by all-gathering every rank's rows and scatter-adding them on each rank, not by
//! all-reducing the dense table gradient (see `reduce_rows`).

use candle_core::{DType, Device, Tensor};
use titan_core::{BlockHooks, MicrobatchInfo, Module, Param, UnitId};

use crate::clip::clip_grad_norm_distributed;
use crate::comm::{Group, ReduceOp, Work};
use crate::{Error, Result};

/// DDP options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdpConfig {
    /// Dtype gradients are reduced in (`training.mixed_precision_reduce`, f32).
    pub reduce_dtype: DType,
    /// Most megabytes of gradients per all-reduce (torchtitan uses 100).
    pub bucket_cap_mb: f64,
    /// Copy rank 0's parameters to every rank at construction (PyTorch does): replicas then
    /// start identical even if they were initialized differently.
    pub broadcast_params: bool,
    /// Overlap the all-reduces with the rest of the backward where the backend reduces in
    /// place (see the module docs). Default: on, unless `TITAN_FSDP_OVERLAP=0`.
    pub overlap: bool,
}

impl Default for DdpConfig {
    fn default() -> Self {
        Self {
            reduce_dtype: DType::F32,
            bucket_cap_mb: 100.0,
            broadcast_params: true,
            overlap: crate::fsdp::overlap_default(),
        }
    }
}

/// DDP over a model whose parameters are materialized on every rank.
#[derive(Debug)]
pub struct Ddp {
    group: Group,
    cfg: DdpConfig,
    /// In-place all-reduces started and not yet waited for.
    pending: Vec<Work>,
}

impl Ddp {
    /// Wraps `model` (materialized: every parameter has its master) for replication over
    /// `group`.
    pub fn new<M: Module>(model: &mut M, group: Group, cfg: DdpConfig) -> Result<Self> {
        if cfg.bucket_cap_mb.is_nan() || cfg.bucket_cap_mb <= 0.0 {
            return Err(Error::Config(format!(
                "DDP bucket_cap_mb = {}: must be positive",
                cfg.bucket_cap_mb
            )));
        }
        let mut params = model.params_mut();
        let count = params.len() as f64;
        let numel = params.iter().map(|p| p.numel()).sum::<usize>() as f64;
        let hi = crate::reduce::all_reduce_f64(group.as_ref(), &[count, numel], ReduceOp::Max)?;
        let lo = crate::reduce::all_reduce_f64(group.as_ref(), &[count, numel], ReduceOp::Min)?;
        if hi != lo {
            return Err(Error::Mismatch {
                op: "Ddp::new".into(),
                group: group.name().to_string(),
                detail: "ranks hold different models: build the same model everywhere".into(),
            });
        }
        // Row gradients (an embedding's) travel as rows: see `reduce_rows`.
        for p in params.iter_mut() {
            p.set_takes_row_grads(group.size() > 1);
        }
        if cfg.broadcast_params && group.size() > 1 {
            for p in params.iter_mut() {
                let master = p.master().ok_or_else(|| {
                    Error::Sharding(format!(
                        "DDP: parameter `{}` has no master values: initialize the model first",
                        p.name()
                    ))
                })?;
                let synced = group.broadcast(master, 0)?;
                let compute_dtype = p.compute().ok().map(|c| c.dtype());
                p.set_master(synced)?;
                if let Some(dt) = compute_dtype {
                    p.refresh_compute(dt)?;
                }
            }
        }
        Ok(Self {
            group,
            cfg,
            pending: Vec::new(),
        })
    }

    /// The replicate group.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Clips the (already identical) full gradients of `model`; no reduction is needed.
    pub fn clip_grad_norm<M: Module>(&self, model: &mut M, max_norm: f64) -> Result<f64> {
        clip_grad_norm_distributed(&mut model.params_mut(), max_norm, &[])
    }

    /// All-reduces still in flight (zero between passes).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Makes every gradient final: orders the compute stream after the all-reduces in flight.
    /// The stem's `after_backward` does this; call it if a pass ends some other way.
    pub fn finish_pending(&mut self) -> Result<()> {
        for w in std::mem::take(&mut self.pending) {
            w.wait()?;
        }
        Ok(())
    }

    /// Sums the gradients that arrived as rows ([`Param::push_row_grad`]: an embedding's ids
    /// and output-gradient rows) by all-gathering the rows (2 x 33 MB on the 1B model) and
    /// building the summed gradient on every rank, instead of all-reducing the dense table
    /// gradient (1 GB f32, at the very end of the backward). Returns which parameters it
    /// handled; a parameter with both rows and a dense gradient gets its rows added locally
    /// and is left to the all-reduce.
    fn reduce_rows(&mut self, params: &mut [&mut Param]) -> Result<Vec<bool>> {
        let n = self.group.size();
        let mut handled = vec![false; params.len()];
        for (p, done) in params.iter_mut().zip(handled.iter_mut()) {
            if !p.has_row_grads() {
                continue;
            }
            let (ids, rows) = crate::rows::concat(p.take_row_grads())?;
            if let Some(g) = p.take_grad() {
                let local = crate::rows::dense(&ids, &rows, p.shape().dims())?;
                p.set_grad(Some((g + local)?))?;
                continue;
            }
            let table_rows = p.shape().dims()[0];
            let mut works = self.group.all_gather_many_async(&[ids, rows])?.into_iter();
            let (Some(ids), Some(rows)) = (works.next(), works.next()) else {
                return Err(Error::Sharding("a row all-gather went missing".into()));
            };
            let (ids, rows) = (ids.wait()?, rows.wait()?);
            let g = crate::rows::summed_rows(&ids, &rows, n, 0, table_rows)?.reshape(p.shape())?;
            p.set_grad(Some(g))?;
            *done = true;
        }
        Ok(handled)
    }

    /// Starts the in-place all-reduce of one bucket; `false` if the backend cannot (the
    /// caller then reduces through a buffer).
    fn start_in_place(&mut self, bucket: &mut [&mut Param], device: &Device) -> Result<bool> {
        if !self.cfg.overlap || self.cfg.reduce_dtype != DType::F32 {
            return Ok(false);
        }
        let mut grads = Vec::with_capacity(bucket.len());
        for p in bucket.iter_mut() {
            if p.grad().is_none() {
                // Every rank must contribute the same layout; no gradient is a zero gradient.
                p.set_grad(Some(Tensor::zeros(p.shape(), DType::F32, device)?))?;
            }
            match p.grad() {
                Some(g) if g.dtype() == DType::F32 && g.is_contiguous() => grads.push(g.clone()),
                _ => return Ok(false),
            }
        }
        match self
            .group
            .all_reduce_in_place_many_async(&grads, ReduceOp::Sum)?
        {
            Some(works) => {
                self.pending.extend(works);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn all_reduce_unit(&mut self, params: &mut [&mut Param]) -> Result<()> {
        let cap = ((self.cfg.bucket_cap_mb * 1e6) as usize / self.cfg.reduce_dtype.size_in_bytes())
            .max(1);
        let mut start = 0;
        while start < params.len() {
            // A bucket: consecutive parameters up to `cap` elements (at least one).
            let mut end = start + 1;
            let mut elems = params[start].numel();
            while end < params.len() && elems + params[end].numel() <= cap {
                elems += params[end].numel();
                end += 1;
            }
            let bucket = &mut params[start..end];
            let device = bucket[0]
                .master()
                .map(|m| m.device().clone())
                .unwrap_or(candle_core::Device::Cpu);
            if self.start_in_place(bucket, &device)? {
                start = end;
                continue;
            }
            let mut flat = Vec::with_capacity(bucket.len());
            for p in bucket.iter() {
                flat.push(match p.grad() {
                    Some(g) => g.to_dtype(self.cfg.reduce_dtype)?.flatten_all()?,
                    // Every rank must contribute the same layout; no gradient is a zero gradient.
                    None => Tensor::zeros(p.numel(), self.cfg.reduce_dtype, &device)?,
                });
            }
            let summed = self
                .group
                .all_reduce(&Tensor::cat(&flat, 0)?, ReduceOp::Sum)?;
            let mut at = 0;
            for p in bucket.iter_mut() {
                let n = p.numel();
                let g = summed
                    .narrow(0, at, n)?
                    .reshape(p.shape())?
                    .to_dtype(DType::F32)?;
                p.set_grad(Some(g))?;
                at += n;
            }
            start = end;
        }
        Ok(())
    }
}

impl BlockHooks for Ddp {
    fn after_backward(
        &mut self,
        unit: UnitId,
        params: &mut [&mut Param],
        mb: MicrobatchInfo,
    ) -> titan_core::Result<()> {
        if mb.is_last() && self.group.size() > 1 {
            let from_rows = self.reduce_rows(params)?;
            let mut rest: Vec<&mut Param> = params
                .iter_mut()
                .zip(from_rows)
                .filter(|(_, done)| !done)
                .map(|(p, _)| &mut **p)
                .collect();
            self.all_reduce_unit(&mut rest)?;
        }
        // The stem's backward is the pass's last: every gradient must be final when it returns.
        if unit == UnitId::Stem {
            self.finish_pending()?;
        }
        Ok(())
    }
}
