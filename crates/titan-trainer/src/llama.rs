//! Llama 3 as a trainable model: arguments from the `[model]` section, the train spec.

use candle_core::{DType, Device, Tensor};
use titan_config::JobConfig;
use titan_data::Batch;
use titan_models::llama3::{AttnMaskType, Llama3, LlamaArgs, TokenBatch};

use crate::model::{ModelSummary, TrainableModel};
use crate::Result;

/// The flavor's arguments with every `model.*` override applied.
pub fn llama_args(cfg: &JobConfig) -> Result<LlamaArgs> {
    let m = &cfg.model;
    let mut a = LlamaArgs::flavor(&m.flavor)?;
    if let Some(v) = m.dim {
        a.dim = v;
    }
    if let Some(v) = m.n_layers {
        a.n_layers = v;
    }
    if let Some(v) = m.n_heads {
        a.n_heads = v;
    }
    if let Some(v) = m.n_kv_heads {
        a.n_kv_heads = Some(v);
    }
    if let Some(v) = m.vocab_size {
        a.vocab_size = v;
    }
    if let Some(v) = m.multiple_of {
        a.multiple_of = v;
    }
    if let Some(v) = m.ffn_dim_multiplier {
        a.ffn_dim_multiplier = Some(v);
    }
    if let Some(v) = m.norm_eps {
        a.norm_eps = v;
    }
    if let Some(v) = m.rope_theta {
        a.rope_theta = v;
    }
    if let Some(on) = m.rope_scaling {
        a.rope_scaling = on.then(Default::default);
    }
    if let Some(v) = m.max_seq_len {
        a.max_seq_len = v;
    }
    if let Some(v) = m.depth_init {
        a.depth_init = v;
    }
    if let Some(v) = m.attn_mask_type {
        a.attn_mask_type = match v {
            titan_config::AttnMaskType::Causal => AttnMaskType::Causal,
            titan_config::AttnMaskType::BlockCausal => AttnMaskType::BlockCausal,
        };
    }
    a.validate()?;
    Ok(a)
}

impl TrainableModel for Llama3 {
    fn summary(&self, seq_len: usize, act_bytes: usize) -> ModelSummary {
        let d = self.describe();
        let a = &self.args;
        let per_block = d.block_activation_bytes_per_token(act_bytes, seq_len, true);
        // Per-op checkpointing drops both norms' outputs, o, h and the gate, keeps attn_out.
        let dropped = ((4 * a.dim + a.ffn_hidden_dim()) * act_bytes) as u64;
        ModelSummary {
            name: "llama3".into(),
            flavor: String::new(),
            num_params: d.num_params(),
            flops_per_token: d.flops_per_token(seq_len),
            n_blocks: a.n_layers,
            block_activation_bytes_per_token: per_block,
            block_op_ac_bytes_per_token: per_block.saturating_sub(dropped),
            block_input_bytes_per_token: (a.dim * act_bytes) as u64,
            head_activation_bytes_per_token: d.head_activation_bytes_per_token(act_bytes),
            vocab_size: a.vocab_size,
        }
    }

    fn prepare(&mut self, device: &Device, compute_dtype: DType, seq_len: usize) -> Result<()> {
        Ok(self.set_device(device, compute_dtype, seq_len)?)
    }

    fn init_weights(&mut self, seed: u64) -> Result<()> {
        Ok(Llama3::init_weights(self, seed)?)
    }

    fn refresh_compute(&mut self) -> Result<()> {
        Ok(Llama3::refresh_compute(self)?)
    }

    fn make_input(&self, batch: &Batch) -> Result<TokenBatch> {
        Ok(self.make_batch(
            &batch.inputs,
            batch.batch_size,
            batch.seq_len,
            batch.positions.as_deref(),
        )?)
    }

    fn make_target(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.make_labels(&batch.labels)?)
    }
}

/// The `llama3` train spec: the model's vocabulary and EOS id come from the tokenizer, its
/// sequence table from `training.seq_len`, unless `model.*` overrides say otherwise
/// (torchtitan's `update_from_config`).
pub fn llama3_spec() -> crate::TrainSpec<Llama3> {
    crate::TrainSpec::new(
        "llama3",
        |cfg: &JobConfig, tokenizer: Option<&titan_data::Tokenizer>| {
            let mut args = llama_args(cfg)?;
            // Without a tokenizer (shape-only estimates) the flavor's vocabulary stands.
            if let Some(tokenizer) = tokenizer {
                if cfg.model.vocab_size.is_none() {
                    args.vocab_size = tokenizer.vocab_size();
                }
                if let Some(eos) = tokenizer.eos_id() {
                    args.eos_id = eos;
                }
            }
            if cfg.model.max_seq_len.is_none() {
                args.max_seq_len = cfg.training.seq_len.max(cfg.validation.seq_len);
            }
            args.validate()?;
            Ok(Llama3::new(&args)?)
        },
    )
    .with_hf_adapter(|m: &Llama3| {
        Ok(std::sync::Arc::new(hf_adapter(&m.args)?)
            as std::sync::Arc<dyn titan_checkpoint::StateDictAdapter>)
    })
}

/// The Hugging Face state-dict adapter for these Llama arguments (key map and the q/k
/// permutation between torchtitan's interleaved RoPE pairs and HF's rotate-half layout).
pub fn hf_adapter(a: &LlamaArgs) -> Result<titan_checkpoint::LlamaAdapter> {
    let scaling = a
        .rope_scaling
        .map(|s| titan_checkpoint::hf::config::Llama3RopeScaling {
            rope_type: "llama3".into(),
            factor: s.scaling_factor as f64,
            low_freq_factor: s.low_freq_factor as f64,
            high_freq_factor: s.high_freq_factor as f64,
            original_max_position_embeddings: s.original_max_position_embeddings as usize,
        });
    Ok(titan_checkpoint::LlamaAdapter::new(
        titan_checkpoint::LlamaArgs {
            dim: a.dim,
            n_layers: a.n_layers,
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads(),
            head_dim: a.head_dim(),
            vocab_size: a.vocab_size,
            ffn_hidden_dim: a.ffn_hidden_dim(),
            norm_eps: a.norm_eps,
            rope_theta: a.rope_theta,
            rope_scaling: scaling,
            max_seq_len: a.max_seq_len,
        },
    )?)
}
