//! One Llama 3 transformer block with explicit forward and backward:
//! `h = x + wo(attn(rope(wq n1), rope(wk n1), wv n1))`, `out = h + w2(silu(w1 n2) * w3 n2)`
//! with `n1 = attention_norm(x)`, `n2 = ffn_norm(h)`.

use std::sync::Arc;

use candle_core::Tensor;
use titan_core::layered::{opt_tensor_bytes, tensor_bytes};
use titan_core::ops::fused::elementwise::add_or_candle;
use titan_core::ops::{
    apply_rope, apply_rope_backward, swiglu_backward, swiglu_forward, AttentionKernel, AttnMask,
    AttnSaved, Linear, RmsNorm,
};
use titan_core::{Block, Module, Param, Result, SaveMode, SavedState};

use super::args::LlamaArgs;
use super::describe::block_specs;

/// What every block reads for one microbatch.
#[derive(Debug, Clone)]
pub struct LlamaCtx {
    /// RoPE tables selected for this microbatch, `(b or 1, seq, 1, head_dim/2, 1)`.
    pub cos: Tensor,
    pub sin: Tensor,
    pub mask: AttnMask,
}

/// A transformer block (torchtitan's `layers.{i}`).
#[derive(Debug, Clone)]
pub struct LlamaBlock {
    pub layer_id: usize,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub w1: Linear,
    pub w2: Linear,
    pub w3: Linear,
    pub attention_norm: RmsNorm,
    pub ffn_norm: RmsNorm,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    attention: Arc<dyn AttentionKernel>,
}

/// What a block keeps for backward. Fields marked "recomputable" are dropped under per-op
/// selective checkpointing ([`SaveMode::MatmulOutputs`]) and rebuilt from the others.
///
/// The per-op policy follows torchtitan's (`_op_sac_save_list`): attention's outputs and every
/// other matmul output in forward order are kept (wq, wv, w1; w2's output is not needed),
/// while wk, wo and w3 are recomputed. One deviation: the rotated k stays with the attention
/// state (1/4 of q's size under GQA), so only wo and w3 run again in backward.
#[derive(Debug)]
pub struct LlamaBlockSaved {
    /// Block input `(b, s, dim)`.
    x: Tensor,
    /// Attention inputs (rotated q, k; v, head-major), output and kernel extras.
    attn: AttnSaved,
    /// `w1` output `(b, s, ffn)`.
    a: Tensor,
    // Recomputable.
    /// `w3` output `(b, s, ffn)`.
    b: Option<Tensor>,
    rstd1: Option<Tensor>,
    n1: Option<Tensor>,
    o: Option<Tensor>,
    h: Option<Tensor>,
    rstd2: Option<Tensor>,
    n2: Option<Tensor>,
    g: Option<Tensor>,
}

impl SavedState for LlamaBlockSaved {
    fn bytes(&self) -> usize {
        tensor_bytes(&self.x)
            + self.attn.bytes()
            + tensor_bytes(&self.a)
            + [
                &self.b,
                &self.rstd1,
                &self.n1,
                &self.o,
                &self.h,
                &self.rstd2,
                &self.n2,
                &self.g,
            ]
            .into_iter()
            .map(opt_tensor_bytes)
            .sum::<usize>()
    }
}

impl LlamaBlock {
    /// A shape-only block.
    pub fn new(args: &LlamaArgs, layer_id: usize, attention: Arc<dyn AttentionKernel>) -> Self {
        let mut specs = block_specs(args, layer_id).into_iter();
        let mut linear = || {
            let s = specs
                .next()
                .expect("block_specs lists every block parameter");
            let (out, inp) = (s.shape.dims()[0], s.shape.dims()[1]);
            Linear::new(s.name, inp, out, s.init)
        };
        let (wq, wk, wv, wo, w1, w2, w3) = (
            linear(),
            linear(),
            linear(),
            linear(),
            linear(),
            linear(),
            linear(),
        );
        let norm = |s: &str| {
            RmsNorm::new(
                super::describe::names::layer(layer_id, s),
                args.dim,
                args.norm_eps,
            )
        };
        Self {
            layer_id,
            wq,
            wk,
            wv,
            wo,
            w1,
            w2,
            w3,
            attention_norm: norm("attention_norm.weight"),
            ffn_norm: norm("ffn_norm.weight"),
            n_heads: args.n_heads,
            n_kv_heads: args.n_kv_heads(),
            head_dim: args.head_dim(),
            attention,
        }
    }

    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// `(b, s, h*hd)` to head-major `(b, h, s, hd)`: a view when the attention kernel reads
    /// strided inputs (no copy), else a contiguous copy.
    fn to_heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let view = x.reshape((b, s, heads, self.head_dim))?.transpose(1, 2)?;
        self.heads_layout(view)
    }

    fn heads_layout(&self, view: Tensor) -> Result<Tensor> {
        if self.attention.accepts_strided() {
            Ok(view)
        } else {
            Ok(view.contiguous()?)
        }
    }

    /// Head-major `(b, h, s, hd)` to `(b, s, h*hd)` (no copy when the kernel wrote its output
    /// as a transposed view of `(b, s, h, hd)`, as the flash kernel does).
    fn from_heads(x: &Tensor) -> Result<Tensor> {
        let (b, h, s, hd) = x.dims4()?;
        Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, s, h * hd))?)
    }

    /// Rotate `x (b, s, h*hd)` and make it head-major.
    fn rope_heads(&self, x: &Tensor, heads: usize, ctx: &LlamaCtx) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let x = x.reshape((b, s, heads, self.head_dim))?;
        self.heads_layout(apply_rope(&x, &ctx.cos, &ctx.sin)?.transpose(1, 2)?)
    }

    /// Gradient through `rope_heads`: head-major `(b, h, s, hd)` back to `(b, s, h*hd)`.
    fn rope_heads_backward(&self, d: &Tensor, ctx: &LlamaCtx) -> Result<Tensor> {
        let (b, h, s, hd) = d.dims4()?;
        let d = d.transpose(1, 2)?.contiguous()?;
        Ok(apply_rope_backward(&d, &ctx.cos, &ctx.sin)?.reshape((b, s, h * hd))?)
    }
}

impl Module for LlamaBlock {
    fn params(&self) -> Vec<&Param> {
        vec![
            &self.wq.weight,
            &self.wk.weight,
            &self.wv.weight,
            &self.wo.weight,
            &self.w1.weight,
            &self.w2.weight,
            &self.w3.weight,
            &self.attention_norm.weight,
            &self.ffn_norm.weight,
        ]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![
            &mut self.wq.weight,
            &mut self.wk.weight,
            &mut self.wv.weight,
            &mut self.wo.weight,
            &mut self.w1.weight,
            &mut self.w2.weight,
            &mut self.w3.weight,
            &mut self.attention_norm.weight,
            &mut self.ffn_norm.weight,
        ]
    }
}

impl Block for LlamaBlock {
    type Ctx = LlamaCtx;
    type Saved = LlamaBlockSaved;

    fn forward(
        &self,
        x: &Tensor,
        ctx: &LlamaCtx,
        mode: SaveMode,
    ) -> Result<(Tensor, LlamaBlockSaved)> {
        // Attention branch.
        let (n1, rstd1) = self.attention_norm.forward(x)?;
        let q = self.rope_heads(&self.wq.forward(&n1)?, self.n_heads, ctx)?;
        let k = self.rope_heads(&self.wk.forward(&n1)?, self.n_kv_heads, ctx)?;
        let v = self.to_heads(&self.wv.forward(&n1)?, self.n_kv_heads)?;
        let (o_heads, attn) = self
            .attention
            .forward(&q, &k, &v, &ctx.mask, self.scale())?;
        let o = Self::from_heads(&o_heads)?;
        let attn_out = self.wo.forward(&o)?;
        // Feed-forward branch; the residual add is fused into the norm's kernel on GPU.
        let (h, n2, rstd2) = self.ffn_norm.forward_residual(x, &attn_out)?;
        let a = self.w1.forward(&n2)?;
        let b = self.w3.forward(&n2)?;
        let g = swiglu_forward(&a, &b)?;
        // The residual add in 16-byte vectors on GPU (candle's bf16 add reads scalars).
        let out = add_or_candle(&h, &self.w2.forward(&g)?)?;

        let saved = match mode {
            SaveMode::All => LlamaBlockSaved {
                x: x.clone(),
                attn,
                a,
                b: Some(b),
                rstd1: Some(rstd1),
                n1: Some(n1),
                o: Some(o),
                h: Some(h),
                rstd2: Some(rstd2),
                n2: Some(n2),
                g: Some(g),
            },
            SaveMode::MatmulOutputs => LlamaBlockSaved {
                x: x.clone(),
                attn,
                a,
                b: None,
                rstd1: None,
                n1: None,
                o: None,
                h: None,
                rstd2: None,
                n2: None,
                g: None,
            },
        };
        Ok((out, saved))
    }

    fn backward(
        &mut self,
        saved: LlamaBlockSaved,
        d_out: &Tensor,
        ctx: &LlamaCtx,
    ) -> Result<Tensor> {
        let LlamaBlockSaved {
            x,
            attn,
            a,
            b,
            rstd1,
            n1,
            o,
            h,
            rstd2,
            n2,
            g,
        } = saved;
        // Rebuild what per-op checkpointing dropped (bitwise the same values: same ops, same
        // inputs): h = x + wo(o), the ffn norm, w3's output, the gate.
        let o = match o {
            Some(o) => o,
            None => Self::from_heads(&attn.out)?,
        };
        let h = match h {
            Some(h) => h,
            None => add_or_candle(&x, &self.wo.forward(&o)?)?,
        };
        let (n2, rstd2) = match (n2, rstd2) {
            (Some(n), Some(r)) => (n, r),
            _ => self.ffn_norm.forward(&h)?,
        };
        let b = match b {
            Some(b) => b,
            None => self.w3.forward(&n2)?,
        };
        let g = match g {
            Some(g) => g,
            None => swiglu_forward(&a, &b)?,
        };

        // Feed-forward branch; the residual passes d_out straight through.
        let d_g = self.w2.backward(&g, d_out)?;
        drop(g);
        let (d_a, d_b) = swiglu_backward(&a, &b, &d_g)?;
        let d_n2 = self.w1.backward(&n2, &d_a)?;
        let d_n2 = self.w3.backward_acc(&n2, &d_b, d_n2)?;
        let d_h = self.ffn_norm.backward_residual(&h, &rstd2, &d_n2, d_out)?;

        // Attention branch.
        let d_o = self.wo.backward(&o, &d_h)?;
        let d_o_heads = self.to_heads(&d_o, self.n_heads)?;
        let (d_q, d_k, d_v) =
            self.attention
                .backward(&attn, &d_o_heads, &ctx.mask, self.scale())?;
        drop(attn);
        let d_q = self.rope_heads_backward(&d_q, ctx)?;
        let d_k = self.rope_heads_backward(&d_k, ctx)?;
        let d_v = Self::from_heads(&d_v)?;
        let (n1, rstd1) = match (n1, rstd1) {
            (Some(n), Some(r)) => (n, r),
            _ => self.attention_norm.forward(&x)?,
        };
        let d_n1 = self.wq.backward(&n1, &d_q)?;
        let d_n1 = self.wk.backward_acc(&n1, &d_k, d_n1)?;
        let d_n1 = self.wv.backward_acc(&n1, &d_v, d_n1)?;
        let d_x = self
            .attention_norm
            .backward_residual(&x, &rstd1, &d_n1, &d_h)?;
        Ok(d_x)
    }
}
