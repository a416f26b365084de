//! Checks of the fused RMSNorm through titan-core's `RmsNorm`: the plain forms (`forward`:
//! y, rstd; `backward`: dx, dw) and the residual forms `forward_residual` (h = x + r,
//! y = norm(h) * w, rstd) and `backward_residual` (d_res + dx, dw), bf16 on the device,
//! against f64 references on the CPU computed from the same bf16 inputs. Shapes hit every
//! kernel: the row-group kernels (4 rows per block; partial groups and partial rows), the
//! two-vector register kernels (full and partial),
//! the generic kernel with 16-byte vectors (dim > 16384) and with scalars (odd dim, or a view
//! whose rows are not 16-byte aligned).
//!
//! On a device with fused kernels, each case also runs the composite (fused kernels off) on
//! the same bf16 inputs: `h` must equal candle's bf16 add bit for bit, the rest agree to
//! rounding (the fused backward rounds `d_res + dx` once, the composite twice). `... fused`
//! rows check that the fused path took the inputs (err 0) instead of falling back (err 1).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use titan_core::ops::{fused, RmsNorm};
use titan_core::testing::{bitwise_eq, randn, rel_err};
use titan_core::{Init, Param};

use crate::{Check, Result};

const CPU: Device = Device::Cpu;
/// bf16 outputs.
const TOL_BF16: f64 = 2e-2;
/// f32 outputs from exact (bf16) inputs: rstd, dw.
const TOL_F32: f64 = 1e-5;
/// Results that must be exact (h is one correctly rounded add).
const TOL_EXACT: f64 = 1e-12;
const EPS: f64 = 1e-5;

/// Turns fused kernels back to their previous state when dropped (also on an error).
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        fused::set_enabled(self.0);
    }
}

/// The f64 reference of one case (row-major, `rows * dim`; `rstd` per row).
struct Reference {
    h: Vec<f64>,
    y: Vec<f64>,
    rstd: Vec<f64>,
    d_h: Vec<f64>,
    dw: Vec<f64>,
}

struct Inputs {
    x: Tensor,
    r: Tensor,
    w: Tensor,
    dy: Tensor,
    d_res: Tensor,
}

struct Ctx<'a> {
    device: &'a Device,
    seed: u64,
    fused_expected: bool,
    rows: Vec<Check>,
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_device(&CPU)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

/// `||ours - reference|| / ||reference||`, infinite on a size mismatch.
fn err(ours: &Tensor, reference: &[f64]) -> Result<f64> {
    let ours = values(ours)?;
    if ours.len() != reference.len() {
        return Ok(f64::INFINITY);
    }
    let num: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    Ok(if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    })
}

fn reference(inp: &Inputs, rows: usize, dim: usize) -> Result<Reference> {
    let (x, r, w) = (values(&inp.x)?, values(&inp.r)?, values(&inp.w)?);
    let (dy, d_res) = (values(&inp.dy)?, values(&inp.d_res)?);
    // The sum of two bf16 values is exact in f64; one rounding to bf16 is what the kernel
    // (and candle's bf16 add) must produce.
    let sum: Vec<f64> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    let h = values(&Tensor::from_vec(sum, rows * dim, &CPU)?.to_dtype(DType::BF16)?)?;
    let mut out = Reference {
        y: vec![0.0; rows * dim],
        rstd: vec![0.0; rows],
        d_h: vec![0.0; rows * dim],
        dw: vec![0.0; dim],
        h,
    };
    for row in 0..rows {
        let s = row * dim..(row + 1) * dim;
        let hr = &out.h[s.clone()];
        let dyr = &dy[s.clone()];
        let ms = hr.iter().map(|v| v * v).sum::<f64>() / dim as f64;
        let rs = 1.0 / (ms + EPS).sqrt();
        out.rstd[row] = rs;
        let m = (0..dim).map(|c| dyr[c] * w[c] * hr[c] * rs).sum::<f64>() / dim as f64;
        for c in 0..dim {
            let xh = hr[c] * rs;
            out.y[row * dim + c] = xh * w[c];
            out.d_h[row * dim + c] = d_res[row * dim + c] + rs * (dyr[c] * w[c] - xh * m);
            out.dw[c] += dyr[c] * xh;
        }
    }
    Ok(out)
}

impl Ctx<'_> {
    fn push(&mut self, what: String, err: f64, tol: f64) {
        self.rows.push(Check { what, err, tol });
    }

    /// A bf16 tensor on the CPU.
    fn randn(&self, name: &str, shape: impl Into<candle_core::Shape>, std: f64) -> Result<Tensor> {
        Ok(randn(self.seed, name, shape, std, DType::F64, &CPU)?.to_dtype(DType::BF16)?)
    }

    /// A norm weight near 1 (bf16, CPU), as trained norms are.
    fn norm_weight(&self, what: &str, dim: usize) -> Result<Tensor> {
        Ok((self
            .randn(&format!("{what}.w"), dim, 0.1)?
            .to_dtype(DType::F32)?
            + 1.0)?
            .to_dtype(DType::BF16)?)
    }

    /// `t (rows, dim)` on the device, `offset` elements into a bigger buffer (offset 1: rows
    /// are not 16-byte aligned, so the kernels must take their scalar path).
    fn put(&self, t: &Tensor, offset: usize) -> Result<Tensor> {
        if offset == 0 {
            return Ok(t.to_device(self.device)?);
        }
        let dims = t.dims().to_vec();
        let n = t.elem_count();
        let pad = Tensor::zeros(offset, t.dtype(), &CPU)?;
        let flat = Tensor::cat(&[&pad, &t.flatten_all()?], 0)?.to_device(self.device)?;
        Ok(flat.narrow(0, offset, n)?.reshape(dims)?)
    }

    fn norm(&self, w: &Tensor) -> Result<RmsNorm> {
        let master = w.to_dtype(DType::F32)?.to_device(self.device)?;
        let mut weight = Param::from_tensor("norm.w", master, Init::Ones)?;
        weight.refresh_compute(DType::BF16)?;
        Ok(RmsNorm { weight, eps: EPS })
    }

    /// One shape: `rows x dim`, inputs `offset` elements into their buffers.
    fn case(&mut self, rows: usize, dim: usize, offset: usize) -> Result<()> {
        let what = if offset == 0 {
            format!("rmsnorm residual ({rows},{dim})")
        } else {
            format!("rmsnorm residual ({rows},{dim}) unaligned")
        };
        let cpu = Inputs {
            x: self.randn(&format!("{what}.x"), (rows, dim), 1.0)?,
            r: self.randn(&format!("{what}.r"), (rows, dim), 1.0)?,
            w: self.norm_weight(&what, dim)?,
            dy: self.randn(&format!("{what}.dy"), (rows, dim), 1.0)?,
            d_res: self.randn(&format!("{what}.d_res"), (rows, dim), 1.0)?,
        };
        let re = reference(&cpu, rows, dim)?;
        let (x, r) = (self.put(&cpu.x, offset)?, self.put(&cpu.r, offset)?);
        let (dy, d_res) = (self.put(&cpu.dy, offset)?, self.put(&cpu.d_res, offset)?);

        let mut norm = self.norm(&cpu.w)?;
        let (h, y, rstd) = norm.forward_residual(&x, &r)?;
        let d_h = norm.backward_residual(&h, &rstd, &dy, &d_res)?;
        let dw = norm.weight.take_grad().unwrap_or(d_h.zeros_like()?);
        self.push(format!("{what} h"), err(&h, &re.h)?, TOL_EXACT);
        self.push(format!("{what} y"), err(&y, &re.y)?, TOL_BF16);
        self.push(format!("{what} rstd"), err(&rstd, &re.rstd)?, TOL_F32);
        self.push(format!("{what} d_res + dx"), err(&d_h, &re.d_h)?, TOL_BF16);
        self.push(format!("{what} dw"), err(&dw, &re.dw)?, TOL_F32);
        if !self.fused_expected {
            return Ok(());
        }

        // The fused path must have taken these inputs.
        let wc = norm.weight.compute()?.clone();
        let fwd = fused::norm::rmsnorm_forward_residual(&x, &r, &wc, EPS)?.is_some();
        let bwd = fused::norm::rmsnorm_backward_residual(&h, &wc, &rstd, &dy, &d_res)?.is_some();
        self.push(
            format!("{what} forward fused"),
            if fwd { 0.0 } else { 1.0 },
            0.5,
        );
        self.push(
            format!("{what} backward fused"),
            if bwd { 0.0 } else { 1.0 },
            0.5,
        );

        // The composite on the same bf16 inputs (the backward from the fused h and rstd).
        let mut plain = self.norm(&cpu.w)?;
        let (h2, y2, rstd2, d_h2, dw2) = {
            let _restore = Restore(fused::enabled());
            fused::set_enabled(false);
            let (h2, y2, rstd2) = plain.forward_residual(&x, &r)?;
            let d_h2 = plain.backward_residual(&h, &rstd, &dy, &d_res)?;
            let dw2 = plain.weight.take_grad().unwrap_or(d_h2.zeros_like()?);
            (h2, y2, rstd2, d_h2, dw2)
        };
        let same_h = bitwise_eq(&h.to_device(&CPU)?, &h2.to_device(&CPU)?)?;
        self.push(
            format!("{what} h == candle bf16 add (bitwise)"),
            if same_h { 0.0 } else { 1.0 },
            0.5,
        );
        let close = |a: &Tensor, b: &Tensor| -> Result<f64> {
            Ok(rel_err(&a.to_device(&CPU)?, &b.to_device(&CPU)?)?)
        };
        self.push(
            format!("{what} y fused vs composite"),
            close(&y, &y2)?,
            TOL_BF16,
        );
        self.push(
            format!("{what} rstd fused vs composite"),
            close(&rstd, &rstd2)?,
            TOL_F32,
        );
        self.push(
            format!("{what} d_res + dx fused vs composite"),
            close(&d_h, &d_h2)?,
            TOL_BF16,
        );
        self.push(
            format!("{what} dw fused vs composite"),
            close(&dw, &dw2)?,
            TOL_F32,
        );
        Ok(())
    }
}

impl Ctx<'_> {
    /// The plain forms (no residual): `forward` (y, rstd) and `backward` (dx, dw) at
    /// `rows x dim`, against the f64 reference with a zero residual.
    fn plain_case(&mut self, rows: usize, dim: usize) -> Result<()> {
        let what = format!("rmsnorm ({rows},{dim})");
        let zeros = Tensor::zeros((rows, dim), DType::BF16, &CPU)?;
        let cpu = Inputs {
            x: self.randn(&format!("{what}.x"), (rows, dim), 1.0)?,
            r: zeros.clone(),
            w: self.norm_weight(&what, dim)?,
            dy: self.randn(&format!("{what}.dy"), (rows, dim), 1.0)?,
            d_res: zeros,
        };
        let re = reference(&cpu, rows, dim)?;
        let (x, dy) = (self.put(&cpu.x, 0)?, self.put(&cpu.dy, 0)?);
        let mut norm = self.norm(&cpu.w)?;
        let (y, rstd) = norm.forward(&x)?;
        let dx = norm.backward(&x, &rstd, &dy)?;
        let dw = norm.weight.take_grad().unwrap_or(dx.zeros_like()?);
        self.push(format!("{what} y"), err(&y, &re.y)?, TOL_BF16);
        self.push(format!("{what} rstd"), err(&rstd, &re.rstd)?, TOL_F32);
        self.push(format!("{what} dx"), err(&dx, &re.d_h)?, TOL_BF16);
        self.push(format!("{what} dw"), err(&dw, &re.dw)?, TOL_F32);
        if self.fused_expected {
            let wc = norm.weight.compute()?.clone();
            let taken = fused::norm::rmsnorm_forward(&x, &wc, EPS)?.is_some()
                && fused::norm::rmsnorm_backward(&x, &wc, &rstd, &dy)?.is_some();
            self.push(format!("{what} fused"), if taken { 0.0 } else { 1.0 }, 0.5);
        }
        Ok(())
    }
}

/// Every check of this module on `device`.
pub fn checks(device: &Device, seed: u64) -> Result<Vec<Check>> {
    let mut c = Ctx {
        device,
        seed,
        fused_expected: device.is_cuda() && fused::AVAILABLE && fused::enabled(),
        rows: Vec::new(),
    };
    // The row-group kernels take 4 rows per block: row counts below 4 and not a multiple
    // of 4 leave partial groups.
    for dim in [2048, 4096, 100] {
        for rows in [1, 3, 7, 13, 8192, 8195] {
            c.case(rows, dim, 0)?;
        }
    }
    // Without the residual: the row-group kernels (2048, 4096, partial 1000), the two-vector
    // kernel just past them (4104) and the generic one (100).
    for dim in [2048, 4096, 1000, 4104, 100] {
        for rows in [1, 3, 13, 8195] {
            c.plain_case(rows, dim)?;
        }
    }
    // Generic scalar kernel with dim % 8 == 0 (rows not 16-byte aligned).
    c.case(7, 2048, 1)?;
    // One vector per row; two vectors per thread with a partial second set (1025 vectors);
    // past the register kernels (generic with 16-byte vectors).
    c.case(9, 8, 0)?;
    c.case(5, 8200, 0)?;
    c.case(3, 16392, 0)?;
    Ok(c.rows)
}

/// Milliseconds per call of the fused forward, forward_residual, backward and
/// backward_residual at `rows x dim` bf16 (and the same with fused kernels off, for the
/// composite), each with the GB/s its minimal traffic implies.
pub fn bench(
    device: &Device,
    rows: usize,
    dim: usize,
    iters: usize,
) -> Result<Vec<(String, f64, f64)>> {
    let t = |name: &str| -> Result<Tensor> {
        Ok(randn(0, name, (rows, dim), 1.0, DType::BF16, &CPU)?.to_device(device)?)
    };
    let (x, r, dy, d_res) = (t("x")?, t("r")?, t("dy")?, t("d_res")?);
    let w = Tensor::ones(dim, DType::F32, device)?;
    let mut weight = Param::from_tensor("norm.w", w, Init::Ones)?;
    weight.refresh_compute(DType::BF16)?;
    let mut norm = RmsNorm { weight, eps: EPS };
    let (_, rstd) = norm.forward(&x)?;
    let iters = iters.max(1);
    // Bytes of one (rows, dim) bf16 tensor.
    let m = (rows * dim * 2) as f64;
    let mut out = Vec::new();
    let _restore = Restore(fused::enabled());
    for on in [true, false] {
        fused::set_enabled(on);
        let tag = if on { "fused" } else { "composite" };
        let mut time = |what: &str, bytes: f64, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            f()?;
            device.synchronize()?;
            let start = Instant::now();
            for _ in 0..iters {
                f()?;
            }
            device.synchronize()?;
            let ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;
            out.push((format!("{what} {tag}"), ms, bytes / (ms * 1e6)));
            Ok(())
        };
        time("rmsnorm forward", 2.0 * m, &mut || {
            norm.forward(&x)?;
            Ok(())
        })?;
        time("rmsnorm forward_residual", 4.0 * m, &mut || {
            norm.forward_residual(&x, &r)?;
            Ok(())
        })?;
        time("rmsnorm backward", 3.0 * m, &mut || {
            norm.backward(&x, &rstd, &dy)?;
            norm.weight.zero_grad();
            Ok(())
        })?;
        time("rmsnorm backward_residual", 4.0 * m, &mut || {
            norm.backward_residual(&x, &rstd, &dy, &d_res)?;
            norm.weight.zero_grad();
            Ok(())
        })?;
    }
    Ok(out)
}
