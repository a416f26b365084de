//! The Llama 3 model: embeddings (stem), blocks, and norm + output + cross-entropy (head).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use titan_core::layered::{tensor_bytes, LayeredModel, SavedState};
use titan_core::ops::{
    cross_entropy_backward, cross_entropy_forward, cross_entropy_forward_backward, AttentionKernel,
    CrossEntropySaved, Embedding, FlashAttention, Linear, MaskKind, RmsNorm, RopeTables,
};
use titan_core::{Module, Param, UnitId};

use super::args::{AttnMaskType, LlamaArgs};
use super::block::{LlamaBlock, LlamaCtx};
use super::describe::{embedding_spec, names, output_spec, ModelDescription};
use crate::{Error, Result};

/// One microbatch of token ids on the model's device.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `(batch, seq)` u32 token ids.
    pub tokens: Tensor,
    /// Optional per-token RoPE positions `(batch, seq)` u32 (restarting in each document).
    pub positions: Option<Tensor>,
    /// Document index of each token `(batch, seq)` u32, for block-causal masks.
    pub doc_ids: Option<Tensor>,
}

/// torchtitan 0.2.2's document numbering for block-causal masks: a token after an EOS starts
/// a new document; the EOS belongs to the document it ends.
pub fn doc_ids_from_eos(tokens: &[u32], seq_len: usize, eos_id: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(tokens.len());
    for row in tokens.chunks(seq_len) {
        let mut doc = 0u32;
        for &t in row {
            out.push(doc);
            if t == eos_id {
                doc += 1;
            }
        }
    }
    out
}

/// The stem keeps the token ids for the embedding backward.
#[derive(Debug)]
pub struct LlamaStemSaved {
    tokens: Tensor,
}

impl SavedState for LlamaStemSaved {
    fn bytes(&self) -> usize {
        tensor_bytes(&self.tokens)
    }
}

/// What the head keeps: the final norm's input and rstd, its output, and the loss state.
#[derive(Debug)]
pub struct LlamaHeadSaved {
    h: Tensor,
    rstd: Tensor,
    normed: Tensor,
    loss: LossState,
}

/// The loss side of [`LlamaHeadSaved`].
#[derive(Debug)]
enum LossState {
    /// The logits and what their gradient needs (a plain forward).
    Logits(CrossEntropySaved),
    /// The logits gradient itself `(rows, vocab)`, computed in the forward of a training pass
    /// (over the logits' own buffer on the fused path).
    Grad(Tensor),
}

impl SavedState for LlamaHeadSaved {
    fn bytes(&self) -> usize {
        tensor_bytes(&self.h)
            + tensor_bytes(&self.rstd)
            + tensor_bytes(&self.normed)
            + match &self.loss {
                LossState::Logits(ce) => ce.bytes(),
                LossState::Grad(d) => tensor_bytes(d),
            }
    }
}

/// A Llama 3 decoder.
#[derive(Debug, Clone)]
pub struct Llama3 {
    pub args: LlamaArgs,
    pub tok_embeddings: Embedding,
    pub layers: Vec<LlamaBlock>,
    pub norm: RmsNorm,
    pub output: Linear,
    attention: Arc<dyn AttentionKernel>,
    rope: Option<RopeTables>,
    device: Device,
    compute_dtype: DType,
}

impl Llama3 {
    /// A shape-only model with the flash attention kernel (the fused CUDA kernel on bf16
    /// GPUs, the naive kernel elsewhere).
    pub fn new(args: &LlamaArgs) -> Result<Self> {
        Self::with_attention(args, Arc::new(FlashAttention))
    }

    /// A shape-only model whose blocks use `attention`.
    pub fn with_attention(args: &LlamaArgs, attention: Arc<dyn AttentionKernel>) -> Result<Self> {
        args.validate()?;
        let emb = embedding_spec(args);
        let out = output_spec(args);
        Ok(Self {
            args: args.clone(),
            tok_embeddings: Embedding::new(emb.name, args.vocab_size, args.dim, emb.init),
            layers: (0..args.n_layers)
                .map(|i| LlamaBlock::new(args, i, attention.clone()))
                .collect(),
            norm: RmsNorm::new(names::NORM, args.dim, args.norm_eps),
            output: Linear::new(out.name, args.dim, args.vocab_size, out.init),
            attention,
            rope: None,
            device: Device::Cpu,
            compute_dtype: DType::F32,
        })
    }

    /// What the model is, without weights.
    pub fn describe(&self) -> ModelDescription {
        ModelDescription::new(&self.args)
    }

    /// The attention kernel the blocks use.
    pub fn attention(&self) -> &Arc<dyn AttentionKernel> {
        &self.attention
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Build the RoPE tables for sequences up to `max_seq_len` and remember where and in
    /// what dtype the model computes. Parameters are materialized separately (see
    /// [`Llama3::init_weights`]), so a sharding strategy can own them instead.
    pub fn set_device(
        &mut self,
        device: &Device,
        compute_dtype: DType,
        max_seq_len: usize,
    ) -> Result<()> {
        let a = &self.args;
        self.rope = Some(RopeTables::new(
            a.head_dim(),
            max_seq_len.min(a.max_seq_len),
            a.rope_theta,
            a.rope_scaling,
            device,
        )?);
        self.device = device.clone();
        self.compute_dtype = compute_dtype;
        Ok(())
    }

    /// Draw every parameter on the model's device with torchtitan's init rules.
    pub fn init_weights(&mut self, seed: u64) -> Result<()> {
        let (device, dtype) = (self.device.clone(), self.compute_dtype);
        for p in self.params_mut() {
            p.materialize(&device, seed, dtype)?;
        }
        Ok(())
    }

    /// Rebuild every parameter's compute copy from its master (after an optimizer step).
    pub fn refresh_compute(&mut self) -> Result<()> {
        let dtype = self.compute_dtype;
        for p in self.params_mut() {
            p.refresh_compute(dtype)?;
        }
        Ok(())
    }

    /// The head's final norm and output projection: `(normed, rstd, logits (rows, vocab))`.
    fn head_logits(&self, h: &Tensor) -> titan_core::Result<(Tensor, Tensor, Tensor)> {
        let (normed, rstd) = self.norm.forward(h)?;
        let logits = self.output.forward(&normed)?;
        let v = logits.dim(candle_core::D::Minus1)?;
        let rows = logits.elem_count() / v;
        Ok((normed, rstd, logits.reshape((rows, v))?))
    }

    /// Put a host batch on the device: `tokens` row-major `(batch, seq)`, optional per-token
    /// positions. Token ids are checked against the vocabulary here, on the host.
    pub fn make_batch(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        positions: Option<&[u32]>,
    ) -> Result<TokenBatch> {
        if tokens.len() != batch * seq {
            return Err(Error::Core(titan_core::Error::BadInput(format!(
                "{} tokens do not fill a ({batch}, {seq}) batch",
                tokens.len()
            ))));
        }
        let vocab = self.args.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            let max = tokens.iter().copied().max().unwrap_or(id);
            return Err(titan_core::Error::TokenOutOfRange {
                id,
                vocab_size: vocab,
                min_vocab: max as u64 + 1,
            }
            .into());
        }
        let t = Tensor::from_slice(tokens, (batch, seq), &self.device)?;
        let positions = match positions {
            Some(p) => {
                if p.len() != tokens.len() {
                    return Err(Error::Core(titan_core::Error::BadInput(format!(
                        "{} positions for {} tokens",
                        p.len(),
                        tokens.len()
                    ))));
                }
                Some(Tensor::from_slice(p, (batch, seq), &self.device)?)
            }
            None => None,
        };
        let doc_ids = match self.args.attn_mask_type {
            AttnMaskType::Causal => None,
            AttnMaskType::BlockCausal => {
                let ids = doc_ids_from_eos(tokens, seq, self.args.eos_id);
                Some(Tensor::from_vec(ids, (batch, seq), &self.device)?)
            }
        };
        Ok(TokenBatch {
            tokens: t,
            positions,
            doc_ids,
        })
    }

    /// Labels `(batch * seq,)` as an i64 tensor on the device (`-100` = ignored).
    pub fn make_labels(&self, labels: &[i64]) -> Result<Tensor> {
        Ok(Tensor::from_slice(labels, labels.len(), &self.device)?)
    }

    /// Forward only: logits `(batch, seq, vocab)` in the compute dtype (inference, evaluation
    /// and comparisons with other implementations).
    pub fn logits(&self, input: &TokenBatch) -> Result<Tensor> {
        let ctx = self.context(input)?;
        let (mut h, _) = self.stem_forward(input)?;
        for block in &self.layers {
            h = titan_core::Block::forward(block, &h, &ctx, titan_core::SaveMode::MatmulOutputs)?.0;
        }
        let (normed, _) = self.norm.forward(&h)?;
        Ok(self.output.forward(&normed)?)
    }

    fn rope(&self) -> titan_core::Result<&RopeTables> {
        self.rope.as_ref().ok_or_else(|| {
            titan_core::Error::Msg(
                "llama3: call set_device() before running the model (RoPE tables are missing)"
                    .into(),
            )
        })
    }
}

impl Module for Llama3 {
    fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.tok_embeddings.weight];
        for l in &self.layers {
            v.extend(l.params());
        }
        v.push(&self.norm.weight);
        v.push(&self.output.weight);
        v
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.tok_embeddings.weight];
        for l in &mut self.layers {
            v.extend(l.params_mut());
        }
        v.push(&mut self.norm.weight);
        v.push(&mut self.output.weight);
        v
    }
}

impl LayeredModel for Llama3 {
    type Input = TokenBatch;
    type Target = Tensor;
    type Block = LlamaBlock;
    type StemSaved = LlamaStemSaved;
    type HeadSaved = LlamaHeadSaved;

    fn context(&self, input: &TokenBatch) -> titan_core::Result<LlamaCtx> {
        let (b, s) = input.tokens.dims2()?;
        let (cos, sin) = self.rope()?.select(s, input.positions.as_ref())?;
        let kind = match &input.doc_ids {
            Some(doc_ids) => MaskKind::BlockCausal {
                doc_ids: doc_ids.clone(),
            },
            None => MaskKind::Causal,
        };
        let mask = self.attention.prepare_mask(&kind, b, s, &self.device)?;
        Ok(LlamaCtx { cos, sin, mask })
    }

    fn stem_forward(&self, input: &TokenBatch) -> titan_core::Result<(Tensor, LlamaStemSaved)> {
        let h = self.tok_embeddings.forward(&input.tokens)?;
        Ok((
            h,
            LlamaStemSaved {
                tokens: input.tokens.clone(),
            },
        ))
    }

    fn stem_backward(&mut self, saved: LlamaStemSaved, d_h: &Tensor) -> titan_core::Result<()> {
        self.tok_embeddings.backward(&saved.tokens, d_h)
    }

    fn backward_reads_params(&self, unit: UnitId) -> bool {
        // The embedding's backward scatter-adds d_h at the token ids; the table is not read.
        unit != UnitId::Stem
    }

    fn blocks(&self) -> &[LlamaBlock] {
        &self.layers
    }
    fn blocks_mut(&mut self) -> &mut [LlamaBlock] {
        &mut self.layers
    }

    fn head_forward(
        &self,
        h: &Tensor,
        labels: &Tensor,
        loss_scale: f64,
    ) -> titan_core::Result<(Tensor, LlamaHeadSaved)> {
        let (normed, rstd, logits) = self.head_logits(h)?;
        let (loss, ce) = cross_entropy_forward(&logits, labels, loss_scale)?;
        Ok((
            loss,
            LlamaHeadSaved {
                h: h.clone(),
                rstd,
                normed,
                loss: LossState::Logits(ce),
            },
        ))
    }

    fn head_forward_for_backward(
        &self,
        h: &Tensor,
        labels: &Tensor,
        loss_scale: f64,
    ) -> titan_core::Result<(Tensor, LlamaHeadSaved)> {
        let (normed, rstd, logits) = self.head_logits(h)?;
        // The gradient replaces the logits in their own buffer (fused path): the largest
        // activation of the step (2.1 GB bf16 at 8192 rows of a 128256 vocabulary) is not
        // doubled at the start of backward.
        let (loss, d_logits) = cross_entropy_forward_backward(logits, labels, loss_scale)?;
        Ok((
            loss,
            LlamaHeadSaved {
                h: h.clone(),
                rstd,
                normed,
                loss: LossState::Grad(d_logits),
            },
        ))
    }

    fn head_backward(&mut self, saved: LlamaHeadSaved) -> titan_core::Result<Tensor> {
        let LlamaHeadSaved {
            h,
            rstd,
            normed,
            loss,
        } = saved;
        let d_logits = match loss {
            LossState::Logits(ce) => cross_entropy_backward(&ce)?,
            LossState::Grad(d) => d,
        };
        let (b, s, _) = h.dims3()?;
        let d_logits = d_logits.reshape((b, s, self.args.vocab_size))?;
        let d_normed = self.output.backward(&normed, &d_logits)?;
        self.norm.backward(&h, &rstd, &d_normed)
    }

    fn unit_params_mut(&mut self, unit: UnitId) -> Vec<&mut Param> {
        match unit {
            UnitId::Stem => vec![&mut self.tok_embeddings.weight],
            UnitId::Block(i) => self
                .layers
                .get_mut(i)
                .map(|l| l.params_mut())
                .unwrap_or_default(),
            UnitId::Head => vec![&mut self.norm.weight, &mut self.output.weight],
        }
    }
}
