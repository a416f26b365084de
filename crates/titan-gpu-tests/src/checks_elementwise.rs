//! Checks of the fused elementwise kernels (RoPE, SwiGLU, softmax cross-entropy, embedding
//! forward and backward, the bf16 add) through titan-core's public ops, bf16 on the device, against f64 references on
//! the CPU. Inputs are rounded to bf16 before the reference sees them, so the error measures
//! the kernels only. Sizes are picked to hit every code path: 16-byte vectors and scalar tails,
//! unaligned views, strided and per-row RoPE tables, odd vocabularies, ignored labels.
//!
//! Where the device can run fused kernels, a `... fused` row also checks that the fused path
//! accepts the inputs (err 0) instead of silently falling back to the composite (err 1).

use candle_core::{DType, Device, Tensor, Var};
use titan_core::ops::fused;
use titan_core::ops::rope::rope_frequencies;
use titan_core::ops::*;
use titan_core::testing::oracle::rope_oracle;
use titan_core::testing::{randint, randn};
use titan_core::{Init, Param};

use crate::{Check, Result};

const CPU: Device = Device::Cpu;
/// bf16 outputs.
const TOL_BF16: f64 = 2e-2;
/// f32 outputs computed from exact (bf16) inputs: the loss, the lse, f32 gradients.
const TOL_F32: f64 = 1e-5;

struct Ctx<'a> {
    device: &'a Device,
    seed: u64,
    fused_expected: bool,
    rows: Vec<Check>,
}

impl Ctx<'_> {
    /// A bf16-representable f64 CPU tensor (the reference's input).
    fn randn(&self, name: &str, shape: impl Into<candle_core::Shape>, std: f64) -> Result<Tensor> {
        let t = randn(self.seed, name, shape, std, DType::F64, &CPU)?;
        Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F64)?)
    }

    /// `t` in bf16 on the device.
    fn put(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(DType::BF16)?.to_device(self.device)?)
    }

    /// `t (rows, cols)` in bf16 on the device as a view `offset` rows into a bigger tensor, so
    /// the op sees a layout start offset (as with a narrowed activation).
    fn put_at(&self, t: &Tensor, offset: usize) -> Result<Tensor> {
        if offset == 0 {
            return self.put(t);
        }
        let (rows, cols) = t.dims2()?;
        let pad = Tensor::zeros((offset, cols), t.dtype(), &CPU)?;
        Ok(self
            .put(&Tensor::cat(&[&pad, t], 0)?)?
            .narrow(0, offset, rows)?)
    }

    fn check(&mut self, what: String, ours: &Tensor, reference: &Tensor, tol: f64) -> Result<()> {
        self.rows.push(Check::compare(what, ours, reference, tol)?);
        Ok(())
    }

    /// Record whether the fused kernel took the inputs (only where it should).
    fn taken(&mut self, what: String, taken: bool) {
        if self.fused_expected {
            self.rows.push(Check::fused_taken(&what, taken));
        }
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
    rope_checks(&mut c)?;
    swiglu_checks(&mut c)?;
    cross_entropy_checks(&mut c)?;
    embedding_checks(&mut c)?;
    embedding_forward_checks(&mut c)?;
    add_checks(&mut c)?;
    Ok(c.rows)
}

/// How the case's cos/sin tables are laid out.
#[derive(Clone, Copy)]
enum Tables {
    /// `select` without positions: one table row per token, broadcast over the batch.
    Plain,
    /// `select` with per-row positions restarting every 23 tokens (block-causal documents).
    Docs,
    /// A transposed table viewed as `(1, s, 1, half, 1)`: pair stride != 1, no copy.
    Strided,
}

fn rope_checks(c: &mut Ctx) -> Result<()> {
    let theta = 500000.0;
    let scaling = Some(RopeScaling::default());
    for (b, s, h, hd, tables) in [
        (2, 37, 3, 64, Tables::Plain),
        (2, 37, 3, 64, Tables::Docs),
        (1, 19, 2, 32, Tables::Strided),
        // half = 3: no 16-byte vectors, one pair per thread.
        (2, 7, 5, 6, Tables::Docs),
        (3, 5, 1, 10, Tables::Plain),
    ] {
        let label = match tables {
            Tables::Plain => "plain",
            Tables::Docs => "doc positions",
            Tables::Strided => "strided table",
        };
        let what = format!("rope ({b},{s},{h},{hd}) {label}");
        let x = c.randn(&format!("{what}.x"), (b, s, h, hd), 1.0)?;
        let r = c.randn(&format!("{what}.r"), (b, s, h, hd), 1.0)?;
        let freqs = rope_frequencies(hd, theta, scaling);
        let rope = RopeTables::new(hd, 64, theta, scaling, c.device)?;
        let plain: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
        let docs: Vec<u32> = (0..b * s).map(|i| ((i % s) % 23) as u32).collect();
        let (positions, (cos, sin)) = match tables {
            Tables::Plain => (plain, rope.select(s, None)?),
            Tables::Docs => {
                let pos = Tensor::from_slice(&docs, (b, s), c.device)?;
                (docs, rope.select(s, Some(&pos))?)
            }
            Tables::Strided => {
                // Store (half, max_seq) and view its transpose: strides (1, max_seq).
                let view = |t: &Tensor| -> Result<Tensor> {
                    let tt = t.t()?.contiguous()?.t()?;
                    Ok(tt
                        .narrow(0, 0, s)?
                        .unsqueeze(0)?
                        .unsqueeze(2)?
                        .unsqueeze(4)?)
                };
                (plain, (view(&rope.cos)?, view(&rope.sin)?))
            }
        };
        let xv = Var::from_tensor(&x)?;
        let y_ref = rope_oracle(xv.as_tensor(), &freqs, &positions)?;
        let grads = (&y_ref * &r)?.sum_all()?.backward()?;
        let dx_ref = grads
            .get(xv.as_tensor())
            .cloned()
            .unwrap_or(x.zeros_like()?);
        let (xd, rd) = (c.put(&x)?, c.put(&r)?);
        c.check(
            format!("{what} forward"),
            &apply_rope(&xd, &cos, &sin)?,
            &y_ref,
            TOL_BF16,
        )?;
        c.check(
            format!("{what} dx"),
            &apply_rope_backward(&rd, &cos, &sin)?,
            &dx_ref,
            TOL_BF16,
        )?;
        let taken = fused::rope::apply_rope(&xd, &cos, &sin, false)?.is_some();
        c.taken(what, taken);
    }
    Ok(())
}

fn swiglu_checks(c: &mut Ctx) -> Result<()> {
    // (rows, cols, offset rows): a view starting `offset` rows into a bigger tensor; 100-wide
    // rows put it 8 bytes off a 16-byte boundary, which forces the scalar path.
    for (rows, cols, offset) in [(7, 100, 0), (128, 96, 0), (7, 100, 1), (3, 5, 0)] {
        let what = format!("swiglu ({rows},{cols}) offset {offset}");
        let a = c.randn(&format!("{what}.a"), (rows, cols), 2.0)?;
        let b = c.randn(&format!("{what}.b"), (rows, cols), 1.0)?;
        let r = c.randn(&format!("{what}.r"), (rows, cols), 1.0)?;
        let (av, bv) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        let y_ref = (av.as_tensor().silu()? * bv.as_tensor())?;
        let grads = (&y_ref * &r)?.sum_all()?.backward()?;
        let zeros = a.zeros_like()?;
        let grad = |v: &Var| grads.get(v.as_tensor()).cloned().unwrap_or(zeros.clone());
        let (da_ref, db_ref) = (grad(&av), grad(&bv));
        let (ad, bd, rd) = (
            c.put_at(&a, offset)?,
            c.put_at(&b, offset)?,
            c.put_at(&r, offset)?,
        );
        let y = swiglu_forward(&ad, &bd)?;
        c.check(format!("{what} forward"), &y, &y_ref, TOL_BF16)?;
        let (da, db) = swiglu_backward(&ad, &bd, &rd)?;
        c.check(format!("{what} da"), &da, &da_ref, TOL_BF16)?;
        c.check(format!("{what} db"), &db, &db_ref, TOL_BF16)?;
        let taken = fused::swiglu::swiglu_forward(&ad, &bd)?.is_some()
            && fused::swiglu::swiglu_backward(&ad, &bd, &rd)?.is_some();
        c.taken(what, taken);
    }
    Ok(())
}

/// f64 reference: `(loss, lse (rows, 1), d_logits)` for row-major `logits (rows, vocab)`.
fn cross_entropy_reference(
    logits: &[f64],
    labels: &[i64],
    vocab: usize,
    scale: f64,
) -> (f64, Vec<f64>, Vec<f64>) {
    let mut loss = 0.0;
    let mut lses = Vec::with_capacity(labels.len());
    let mut d = vec![0f64; logits.len()];
    for (i, &label) in labels.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        lses.push(lse);
        if label < 0 {
            continue;
        }
        loss += lse - row[label as usize];
        for (j, x) in row.iter().enumerate() {
            let onehot = if j == label as usize { 1.0 } else { 0.0 };
            d[i * vocab + j] = scale * ((x - lse).exp() - onehot);
        }
    }
    (loss * scale, lses, d)
}

fn cross_entropy_checks(c: &mut Ctx) -> Result<()> {
    // (rows, vocab, offset rows, ignore pattern): `every` k-th row ignored, 1 = all of them.
    for (rows, vocab, offset, every) in [
        (7, 1000, 0, 3),
        (9, 50257, 0, 4),
        (5, 13, 0, 2),
        (6, 1000, 0, 1),
        (4, 128256, 0, 3),
        // 1001-wide rows one row in: neither rows nor the base are 16-byte aligned.
        (5, 1001, 1, 2),
    ] {
        let what = format!("cross-entropy ({rows},{vocab}) offset {offset}");
        let logits = c.randn(&format!("{what}.l"), (rows, vocab), 3.0)?;
        let labels_v: Vec<i64> = randint(c.seed, &format!("{what}.y"), rows, vocab as u32, &CPU)?
            .to_vec1::<u32>()?
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                if i % every == 0 {
                    IGNORE_INDEX
                } else {
                    l as i64
                }
            })
            .collect();
        let valid = labels_v.iter().filter(|&&l| l >= 0).count();
        let scale = 1.0 / valid.max(1) as f64;
        let host: Vec<f64> = logits.flatten_all()?.to_vec1()?;
        let (loss_ref, lse_ref, d_ref) = cross_entropy_reference(&host, &labels_v, vocab, scale);
        let loss_ref = Tensor::new(loss_ref, &CPU)?;
        let lse_ref = Tensor::from_vec(lse_ref, (rows, 1), &CPU)?;
        let d_ref = Tensor::from_vec(d_ref, (rows, vocab), &CPU)?;

        let ld = c.put_at(&logits, offset)?;
        let labels = Tensor::from_slice(&labels_v, rows, c.device)?;
        let (loss, saved) = cross_entropy_forward(&ld, &labels, scale)?;
        c.check(format!("{what} loss"), &loss, &loss_ref, TOL_F32)?;
        c.check(format!("{what} lse"), &saved.lse, &lse_ref, TOL_F32)?;
        let d = cross_entropy_backward(&saved)?;
        c.check(format!("{what} dlogits"), &d, &d_ref, TOL_BF16)?;
        let taken = match fused::xent::cross_entropy_forward(&ld, &labels, scale)? {
            Some((_, lse)) => {
                fused::xent::cross_entropy_backward(&ld, &labels, &lse, scale)?.is_some()
            }
            None => false,
        };
        // Loss and gradient at once (a training head: on the fused path the logits' own
        // buffer becomes the gradient): the same values as the two calls above.
        let (loss2, d2) =
            cross_entropy_forward_backward(c.put_at(&logits, offset)?, &labels, scale)?;
        c.check(
            format!("{what} forward_backward loss"),
            &loss2,
            &loss,
            1e-12,
        )?;
        c.check(format!("{what} forward_backward dlogits"), &d2, &d, 1e-12)?;
        c.taken(what, taken);
    }
    Ok(())
}

fn embedding_checks(c: &mut Ctx) -> Result<()> {
    // (vocab, dim, batch, seq, id range): a small id range repeats ids, so rows collide.
    for (vocab, dim, batch, seq, range) in [
        (1000, 64, 2, 128, 50),
        (37, 100, 3, 7, 37),
        (50, 4096, 2, 33, 9),
    ] {
        let what = format!("embedding ({vocab},{dim}) ids ({batch},{seq})");
        let n = batch * seq;
        let ids_v: Vec<u32> = randint(c.seed, &format!("{what}.ids"), n, range, &CPU)?.to_vec1()?;
        let d = c.randn(&format!("{what}.d"), (batch, seq, dim), 1.0)?;
        // dw[id] += d[row], in f64 on the host.
        let host: Vec<f64> = d.flatten_all()?.to_vec1()?;
        let mut dw = vec![0f64; vocab * dim];
        for (row, &id) in ids_v.iter().enumerate() {
            let id = id as usize;
            for j in 0..dim {
                dw[id * dim + j] += host[row * dim + j];
            }
        }
        let dw_ref = Tensor::from_vec(dw, (vocab, dim), &CPU)?;

        let master = Tensor::zeros((vocab, dim), DType::F32, c.device)?;
        let mut emb = Embedding {
            weight: Param::from_tensor("emb", master, Init::Zeros)?,
        };
        emb.weight.refresh_compute(DType::BF16)?;
        let ids = Tensor::from_slice(&ids_v, (batch, seq), c.device)?;
        let dd = c.put(&d)?;
        emb.backward(&ids, &dd)?;
        let grad = |emb: &Embedding| -> Result<Tensor> {
            Ok(match emb.weight.grad() {
                Some(g) => g.clone(),
                None => Tensor::zeros((vocab, dim), DType::F32, c.device)?,
            })
        };
        c.check(format!("{what} dw"), &grad(&emb)?, &dw_ref, TOL_F32)?;
        // A second microbatch accumulates into the gradient.
        emb.backward(&ids, &dd)?;
        c.check(
            format!("{what} dw accumulated"),
            &grad(&emb)?,
            &(&dw_ref * 2.0)?,
            TOL_F32,
        )?;
        let flat_ids = ids.flatten_all()?;
        let d2 = dd.reshape((batch * seq, dim))?;
        let taken =
            fused::embedding::embedding_backward_rows(&flat_ids, &d2, 0, vocab, dim)?.is_some();
        c.taken(what.clone(), taken);
        // A row shard of the gradient (FSDP builds each rank's from everyone's ids and rows):
        // the rows [lo, lo + rows) of the whole table's.
        let (lo, rows) = (vocab / 3, vocab / 2);
        let shard = titan_core::ops::embedding::gradient_rows(&flat_ids, &d2, lo, rows)?;
        c.check(
            format!("{what} dw rows {lo}..{}", lo + rows),
            &shard,
            &dw_ref.narrow(0, lo, rows)?,
            TOL_F32,
        )?;
    }
    Ok(())
}

fn embedding_forward_checks(c: &mut Ctx) -> Result<()> {
    // (vocab, dim, batch, seq): 16-byte rows (2048, 64) and scalar rows (100, 5).
    for (vocab, dim, batch, seq) in [
        (1000, 2048, 2, 37),
        (37, 100, 3, 7),
        (50, 64, 1, 1),
        (11, 5, 2, 3),
    ] {
        let what = format!("embedding forward ({vocab},{dim}) ids ({batch},{seq})");
        let ids_v: Vec<u32> = randint(
            c.seed,
            &format!("{what}.ids"),
            batch * seq,
            vocab as u32,
            &CPU,
        )?
        .to_vec1()?;
        let w = c.randn(&format!("{what}.w"), (vocab, dim), 1.0)?;
        // Rows of the (bf16-exact) table, gathered on the host.
        let host: Vec<f64> = w.flatten_all()?.to_vec1()?;
        let rows: Vec<f64> = ids_v
            .iter()
            .flat_map(|&id| host[id as usize * dim..(id as usize + 1) * dim].to_vec())
            .collect();
        let reference = Tensor::from_vec(rows, (batch, seq, dim), &CPU)?;

        let mut emb = Embedding {
            weight: Param::from_tensor(
                "emb",
                w.to_dtype(DType::F32)?.to_device(c.device)?,
                Init::Zeros,
            )?,
        };
        emb.weight.refresh_compute(DType::BF16)?;
        let ids = Tensor::from_slice(&ids_v, (batch, seq), c.device)?;
        let out = emb.forward(&ids)?;
        // A gather is exact.
        c.check(what.clone(), &out, &reference, 1e-12)?;
        let taken = fused::embedding::embedding_forward(&ids, emb.weight.compute()?)?.is_some();
        c.taken(what, taken);
    }
    Ok(())
}

fn add_checks(c: &mut Ctx) -> Result<()> {
    // (rows, cols, offset rows, fused expected): 512 x 2048 has 1B block-output rows; 7 x 100
    // (700 elements) and 3 x 5 are not multiples of 8 (candle's add); the offset view of
    // 12-wide rows (72 elements) starts 24 bytes in, not 16-byte aligned (candle's add).
    for (rows, cols, offset, fusable) in [
        (512, 2048, 0, true),
        (7, 104, 0, true),
        (1, 8, 0, true),
        (7, 100, 0, false),
        (3, 5, 0, false),
        (6, 12, 1, false),
    ] {
        let what = format!("add ({rows},{cols}) offset {offset}");
        // Far-apart magnitudes exercise the rounding of the f32 sum.
        let a = c.randn(&format!("{what}.a"), (rows, cols), 1.0)?;
        let b = c.randn(&format!("{what}.b"), (rows, cols), 1e-3)?;
        // One rounding of the exact (f64) sum to bf16.
        let reference = (&a + &b)?.to_dtype(DType::BF16)?.to_dtype(DType::F64)?;
        let (ad, bd) = (c.put_at(&a, offset)?, c.put_at(&b, offset)?);
        let out = fused::elementwise::add_or_candle(&ad, &bd)?;
        c.check(format!("{what} a + b"), &out, &reference, 1e-12)?;
        // candle's bf16 add gives the same bits.
        let candle = (&ad + &bd)?;
        c.check(format!("{what} == candle add"), &out, &candle, 1e-12)?;
        let taken = fused::elementwise::add(&ad, &bd)?.is_some();
        if fusable {
            c.taken(what, taken);
        } else if c.fused_expected {
            // Falling back is the right answer here.
            c.rows
                .push(Check::fused_taken(&format!("{what} falls back"), !taken));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// On the CPU the ops take their composite path: this checks the references and the
    /// cases themselves (the fused kernels are checked by `gpu_check` on a GPU).
    #[test]
    fn composites_pass_on_cpu() -> crate::Result<()> {
        for c in super::checks(&candle_core::Device::Cpu, 7)? {
            assert!(c.err <= c.tol, "{}: {:e} > {:e}", c.what, c.err, c.tol);
        }
        Ok(())
    }
}
