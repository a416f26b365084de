//! Checks of the optimizer kernels: multi-tensor AdamW/Adam (with and without a clip scale,
//! per-parameter step counts, bf16 compute copies written in the same pass), the multi-tensor
//! grad norm and in-place clipping, and the linear weight-gradient GEMM accumulating into f32.
//!
//! AdamW runs on the device and on the CPU composite path from the same f32 values; the two
//! agree to f32 rounding (bit for bit, up to the clip coefficient's last bit). The grad norm
//! and the GEMM are compared with f64 references on the CPU.
//!
//! Where the device can run fused kernels, a `... fused` row also checks that the fused path
//! ran (err 0: handles taken before the call see in-place results) instead of silently
//! falling back to the composite (err 1).

use candle_core::{DType, Device, Tensor};
use titan_core::ops::fused;
use titan_core::ops::linear::Linear;
use titan_core::testing::{randn, rel_err};
use titan_core::{Init, Param};
use titan_optim::{
    clip_grad_norm, clip_scale, clip_with_total_norm, local_sq_norm, AdamWConfig, GradScale,
    Optimizer,
};

use crate::{Check, Result};

const CPU: Device = Device::Cpu;
/// f32 results (masters, moments, norms, f32 GEMM accumulation of exact bf16 inputs).
const TOL_F32: f64 = 1e-5;
/// Results that must be exact (the bf16 copy of the master, determinism).
const TOL_EXACT: f64 = 1e-12;

/// Parameter shapes: odd sizes, and one spanning two blocks of the multi-tensor kernels
/// (65536 elements each) with a scalar tail.
const SHAPES: [&[usize]; 5] = [&[1], &[7], &[1000], &[4099], &[65, 1031]];

struct Ctx<'a> {
    device: &'a Device,
    seed: u64,
    fused_expected: bool,
    rows: Vec<Check>,
}

impl Ctx<'_> {
    fn push(&mut self, what: String, err: f64, tol: f64) {
        self.rows.push(Check { what, err, tol });
    }

    fn compare(&mut self, what: String, ours: &Tensor, reference: &Tensor, tol: f64) -> Result<()> {
        self.rows.push(Check::compare(what, ours, reference, tol)?);
        Ok(())
    }

    /// A `... fused` row: 0 when the fused path ran, 1 when it fell back.
    fn fused_row(&mut self, what: String, ran: bool) {
        if self.fused_expected {
            self.rows.push(Check::fused_taken(&what, ran));
        }
    }

    fn params(&self, device: &Device) -> Result<Vec<Param>> {
        SHAPES
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let name = format!("p{i}");
                let v = randn(self.seed, &name, *shape, 0.5, DType::F32, &CPU)?;
                let mut p = Param::from_tensor(name, v.to_device(device)?, Init::Zeros)?;
                p.refresh_compute(if device.is_cuda() {
                    DType::BF16
                } else {
                    DType::F32
                })?;
                Ok(p)
            })
            .collect()
    }

    /// The same gradients for both copies; parameter `p1` gets none at step 1, so step
    /// counts differ between parameters.
    fn set_grads(&self, cpu: &mut [Param], dev: &mut [Param], step: u64) -> Result<()> {
        for (c, d) in cpu.iter_mut().zip(dev.iter_mut()) {
            if step == 1 && c.name() == "p1" {
                c.zero_grad();
                d.zero_grad();
                continue;
            }
            let g = randn(
                self.seed + 100 + step,
                &format!("{}.grad", c.name()),
                c.shape().clone(),
                1.0,
                DType::F32,
                &CPU,
            )?;
            d.set_grad(Some(g.to_device(self.device)?))?;
            c.set_grad(Some(g))?;
        }
        Ok(())
    }

    /// Three steps of `cfg` on the device and on the CPU composite path. `clip`: none, the
    /// in-place clip (`clip_grad_norm`) or the scale folded into the step (`clip_scale`).
    fn adam(&mut self, cfg: AdamWConfig, clip: &str) -> Result<()> {
        const LR: f64 = 1e-2;
        const MAX_NORM: f64 = 5.0;
        let label = format!("{} wd={} clip={clip}", cfg.name(), cfg.weight_decay);
        let mut cpu = self.params(&CPU)?;
        let mut dev = self.params(self.device)?;
        let mut opt_cpu = Optimizer::new(cfg)?;
        let mut opt_dev = Optimizer::new(cfg)?;
        let mut in_place = true;
        for step in 0..3 {
            self.set_grads(&mut cpu, &mut dev, step)?;
            // Masters of the parameters stepped now (p1 has no gradient at step 1).
            let before: Vec<Tensor> = dev
                .iter()
                .filter(|p| p.grad().is_some())
                .filter_map(|p| p.master().cloned())
                .collect();
            let snapshot: Vec<Vec<f32>> = before
                .iter()
                .map(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                .collect::<Result<_>>()?;
            match clip {
                "none" => {
                    opt_cpu.step_and_refresh(&mut cpu, LR, DType::F32)?;
                    opt_dev.step_and_refresh(&mut dev, LR, DType::BF16)?;
                }
                "in-place" => {
                    let norm = exact_norm(&cpu)?;
                    clip_with_total_norm(&mut cpu, MAX_NORM, norm)?;
                    opt_cpu.step_and_refresh(&mut cpu, LR, DType::F32)?;
                    clip_grad_norm(&mut dev, MAX_NORM)?;
                    opt_dev.step_and_refresh(&mut dev, LR, DType::BF16)?;
                }
                _ => {
                    let norm = exact_norm(&cpu)?;
                    clip_with_total_norm(&mut cpu, MAX_NORM, norm)?;
                    opt_cpu.step_and_refresh(&mut cpu, LR, DType::F32)?;
                    let scale = clip_scale(&dev, MAX_NORM)?;
                    opt_dev.step_and_refresh_with_scale(
                        &mut dev,
                        LR,
                        DType::BF16,
                        scale.scale(),
                    )?;
                }
            }
            // The fused step writes masters in place: the handles taken before changed.
            for (t, old) in before.iter().zip(&snapshot) {
                if t.flatten_all()?.to_vec1::<f32>()? == *old {
                    in_place = false;
                }
            }
        }
        self.fused_row(format!("adam {label}: in-place step"), in_place);
        let state_cpu = opt_cpu.state_dict();
        let state_dev = opt_dev.state_dict();
        for (c, d) in cpu.iter().zip(&dev) {
            let n = c.name();
            let dims = format!("{:?}", c.shape().dims());
            let (Some(mc), Some(md)) = (c.master(), d.master()) else {
                continue;
            };
            self.compare(format!("adam {label} master {dims}"), md, mc, TOL_F32)?;
            for key in [titan_optim::exp_avg_key(n), titan_optim::exp_avg_sq_key(n)] {
                match (state_dev.tensors.get(&key), state_cpu.tensors.get(&key)) {
                    (Some(sd), Some(sc)) => {
                        let which = key.rsplit('.').next().unwrap_or("");
                        self.compare(format!("adam {label} {which} {dims}"), sd, sc, TOL_F32)?
                    }
                    _ => self.push(format!("adam {label} {key}: missing state"), f64::NAN, 0.0),
                }
            }
            if opt_dev.step_count(n) != opt_cpu.step_count(n) {
                self.push(
                    format!("adam {label} {n}: step counts differ"),
                    f64::NAN,
                    0.0,
                );
            }
            // The compute copy is the master rounded to bf16, exactly.
            let compute = d.compute()?;
            self.compare(
                format!("adam {label} {:?} copy {dims}", compute.dtype()),
                compute,
                &md.to_dtype(compute.dtype())?,
                TOL_EXACT,
            )?;
        }
        Ok(())
    }

    /// The multi-tensor norm vs f64, its determinism, in-place clipping and the device
    /// coefficient.
    fn grad_norm(&mut self) -> Result<()> {
        const MAX_NORM: f64 = 3.0;
        let shapes: [&[usize]; 6] = [&[1], &[7], &[1000], &[4099], &[300_001], &[3, 5]];
        let mut params = Vec::new();
        let mut grads = Vec::new();
        for (i, shape) in shapes.iter().enumerate() {
            let name = format!("g{i}");
            let mut p = Param::new(titan_core::ParamSpec::new(&name, *shape, Init::Zeros));
            let g = randn(self.seed, &name, *shape, 0.1, DType::F32, &CPU)?;
            p.set_grad(Some(g.to_device(self.device)?))?;
            grads.push(g);
            params.push(p);
        }
        let sq_ref: f64 = grads
            .iter()
            .map(|g| -> Result<f64> {
                let v = g.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                Ok(v.iter().map(|x| x * x).sum())
            })
            .sum::<Result<f64>>()?;
        let sq = local_sq_norm(&params)?;
        self.push(
            "grad norm: sum of squares vs f64".into(),
            ((sq - sq_ref) / sq_ref).abs(),
            TOL_F32,
        );
        let again = local_sq_norm(&params)?;
        self.push(
            "grad norm: deterministic (two runs)".into(),
            (again - sq).abs(),
            TOL_EXACT,
        );
        let norm_ref = sq_ref.sqrt();
        let coef_ref = MAX_NORM as f32 / (norm_ref as f32 + 1e-6);

        // The coefficient on the device (no gradient written).
        let scale = clip_scale(&params, MAX_NORM)?;
        let coef = match scale.scale() {
            GradScale::Host(c) => *c,
            GradScale::Device(t) => t.to_dtype(DType::F32)?.reshape(())?.to_scalar::<f32>()?,
        };
        self.fused_row(
            "grad norm: device coefficient".into(),
            matches!(scale.scale(), GradScale::Device(_)),
        );
        self.push(
            "grad norm: clip coefficient vs f64 norm".into(),
            ((coef as f64 - coef_ref as f64) / coef_ref as f64).abs(),
            TOL_F32,
        );
        self.push(
            "grad norm: clip_scale norm vs f64".into(),
            ((scale.total_norm()? - norm_ref) / norm_ref).abs(),
            TOL_F32,
        );

        // In-place clipping: every gradient times the coefficient.
        let handles: Vec<Tensor> = params.iter().filter_map(|p| p.grad().cloned()).collect();
        let norm = clip_grad_norm(&mut params, MAX_NORM)?;
        self.push(
            "grad norm: clip_grad_norm norm vs f64".into(),
            ((norm - norm_ref) / norm_ref).abs(),
            TOL_F32,
        );
        let mut in_place = true;
        for ((p, g), h) in params.iter().zip(&grads).zip(&handles) {
            let dims = format!("{:?}", g.dims());
            let want = (g.to_dtype(DType::F64)? * coef_ref as f64)?;
            let got = p
                .grad()
                .cloned()
                .unwrap_or(Tensor::zeros(g.shape(), DType::F32, &CPU)?);
            self.compare(
                format!("grad norm: clipped grad {dims}"),
                &got,
                &want,
                TOL_F32,
            )?;
            if rel_err(&h.to_device(&CPU)?.to_dtype(DType::F64)?, &want)? > TOL_F32 {
                in_place = false;
            }
        }
        self.fused_row("grad norm: in-place clip".into(), in_place);
        Ok(())
    }

    /// `Linear::backward_weight` twice (the second accumulating with beta = 1) vs f64.
    fn gemm(&mut self, rows: usize, inp: usize, out: usize) -> Result<()> {
        let what = format!("linear dW rows={rows} in={inp} out={out}");
        let mut lin = Linear::new(format!("w{rows}"), inp, out, Init::Normal { std: 0.02 });
        lin.weight
            .materialize(self.device, self.seed, DType::BF16)?;
        let mut want = Tensor::zeros((out, inp), DType::F64, &CPU)?;
        let mut first = None;
        for pass in 0..2 {
            // bf16-exact inputs, with a leading batch dim (the op flattens rows).
            let x = randn(
                self.seed,
                &format!("{what}.x{pass}"),
                (1, rows, inp),
                1.0,
                DType::BF16,
                &CPU,
            )?;
            let dy = randn(
                self.seed,
                &format!("{what}.dy{pass}"),
                (1, rows, out),
                1.0,
                DType::BF16,
                &CPU,
            )?;
            lin.backward_weight(&x.to_device(self.device)?, &dy.to_device(self.device)?)?;
            if pass == 0 {
                first = lin.weight.grad().cloned();
            }
            let x64 = x.to_dtype(DType::F64)?.reshape((rows, inp))?;
            let dy64 = dy.to_dtype(DType::F64)?.reshape((rows, out))?;
            want = (want + dy64.t()?.matmul(&x64)?)?;
        }
        let got =
            lin.weight
                .grad()
                .cloned()
                .unwrap_or(Tensor::zeros((out, inp), DType::F32, &CPU)?);
        self.push(
            format!("{what}: grad dtype f32"),
            if got.dtype() == DType::F32 { 0.0 } else { 1.0 },
            0.5,
        );
        // The composite path (no fused kernels) rounds dW to bf16 before adding.
        let tol = if self.fused_expected { TOL_F32 } else { 2e-2 };
        self.compare(format!("{what}: dy1^T x1 + dy2^T x2"), &got, &want, tol)?;
        // The second pass added into the first pass's tensor (beta = 1, in place).
        let ran = match first {
            Some(f) => rel_err(&f.to_device(&CPU)?.to_dtype(DType::F64)?, &want)? <= TOL_F32,
            None => false,
        };
        self.fused_row(format!("{what}: in-place accumulate"), ran);
        Ok(())
    }
}

/// The gradients' global 2-norm summed in f64 (the CPU reference clips with it, so the
/// comparison does not carry the error of an f32 reduction).
fn exact_norm(params: &[Param]) -> Result<f64> {
    let mut sq = 0f64;
    for g in params.iter().filter_map(|p| p.grad()) {
        let v = g.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        sq += v.iter().map(|x| x * x).sum::<f64>();
    }
    Ok(sq.sqrt())
}

/// Every optimizer-kernel check on `device` (fused kernels as currently enabled).
pub fn checks(device: &Device, seed: u64) -> Result<Vec<Check>> {
    let mut c = Ctx {
        device,
        seed,
        fused_expected: fused::AVAILABLE && device.is_cuda() && fused::enabled(),
        rows: Vec::new(),
    };
    for cfg in [AdamWConfig::adamw(), AdamWConfig::adam()] {
        for clip in ["none", "in-place", "scale"] {
            c.adam(cfg, clip)?;
        }
    }
    // No weight decay: the kernel's third mode.
    c.adam(
        AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::adamw()
        },
        "none",
    )?;
    c.grad_norm()?;
    for (rows, inp, out) in [(37, 131, 75), (512, 256, 384), (1, 8, 3)] {
        c.gemm(rows, inp, out)?;
    }
    Ok(c.rows)
}
