//! Llama 3: torchtitan (v0.2.2) FQNs <-> Hugging Face `LlamaForCausalLM` names, and the q/k
//! row permutation between torchtitan's RoPE layout and HF's.
//!
//! torchtitan rotates interleaved pairs (rows `2j, 2j+1` of each head); HF rotates halves
//! (rows `j, j + head_dim/2`). torchtitan's `to_hf` is
//! `w.view(H, rows/H/2, 2, dim).transpose(1, 2).reshape(rows, dim)`, `from_hf` its inverse
//! `w.view(H, 2, rows/H/2, dim).transpose(1, 2).reshape(rows, dim)`; H is `n_heads` for `wq`
//! and `n_kv_heads` for `wk`.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::config::{HfLlamaConfig, Llama3RopeScaling};
use super::StateDictAdapter;
use crate::{Error, Result};

/// The model dimensions the mapping needs (torchtitan's `TransformerModelArgs` subset).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaArgs {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// `dim / n_heads` in torchtitan's Llama 3.
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Feed-forward hidden size (torchtitan computes it from `multiple_of` and
    /// `ffn_dim_multiplier`).
    pub ffn_hidden_dim: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// `max_position_embeddings` (torchtitan's `max_seq_len`).
    pub max_seq_len: usize,
}

impl LlamaArgs {
    /// The dimensions a `config.json` describes.
    pub fn from_hf_config(cfg: &HfLlamaConfig) -> Self {
        Self {
            dim: cfg.hidden_size,
            n_layers: cfg.num_hidden_layers,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.kv_heads(),
            head_dim: cfg.head_dim(),
            vocab_size: cfg.vocab_size,
            ffn_hidden_dim: cfg.intermediate_size,
            norm_eps: cfg.rms_norm_eps,
            rope_theta: cfg.rope_theta,
            rope_scaling: cfg.rope_scaling.clone(),
            max_seq_len: cfg.max_position_embeddings,
        }
    }

    /// `config.json` for these dimensions, weights stored as `dtype`.
    pub fn to_hf_config(&self, dtype: DType) -> HfLlamaConfig {
        HfLlamaConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            hidden_size: self.dim,
            intermediate_size: self.ffn_hidden_dim,
            num_attention_heads: self.n_heads,
            num_key_value_heads: Some(self.n_kv_heads),
            num_hidden_layers: self.n_layers,
            vocab_size: self.vocab_size,
            rms_norm_eps: self.norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling.clone(),
            max_position_embeddings: self.max_seq_len,
            tie_word_embeddings: false,
            torch_dtype: Some(torch_dtype_name(dtype).into()),
            head_dim: Some(self.head_dim),
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
            attention_dropout: 0.0,
            initializer_range: 0.02,
            pretraining_tp: 1,
            use_cache: true,
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

/// PyTorch's name of a dtype, as `torch_dtype` spells it.
pub fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Rows of `wq`/`wk` from torchtitan's interleaved RoPE pairs to HF's rotate-half layout.
pub fn permute_to_hf(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / n_heads.max(1) / 2;
    Ok(w.reshape((n_heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The inverse of [`permute_to_hf`].
pub fn permute_from_hf(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / n_heads.max(1) / 2;
    Ok(w.reshape((n_heads, 2, half, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// What a per-layer torchtitan FQN is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LayerWeight {
    Wq,
    Wk,
    Wv,
    Wo,
    W1,
    W2,
    W3,
    AttentionNorm,
    FfnNorm,
}

const LAYER_WEIGHTS: [(LayerWeight, &str, &str); 9] = [
    (
        LayerWeight::Wq,
        "attention.wq.weight",
        "self_attn.q_proj.weight",
    ),
    (
        LayerWeight::Wk,
        "attention.wk.weight",
        "self_attn.k_proj.weight",
    ),
    (
        LayerWeight::Wv,
        "attention.wv.weight",
        "self_attn.v_proj.weight",
    ),
    (
        LayerWeight::Wo,
        "attention.wo.weight",
        "self_attn.o_proj.weight",
    ),
    (
        LayerWeight::W1,
        "feed_forward.w1.weight",
        "mlp.gate_proj.weight",
    ),
    (
        LayerWeight::W2,
        "feed_forward.w2.weight",
        "mlp.down_proj.weight",
    ),
    (
        LayerWeight::W3,
        "feed_forward.w3.weight",
        "mlp.up_proj.weight",
    ),
    (
        LayerWeight::AttentionNorm,
        "attention_norm.weight",
        "input_layernorm.weight",
    ),
    (
        LayerWeight::FfnNorm,
        "ffn_norm.weight",
        "post_attention_layernorm.weight",
    ),
];

const GLOBAL_WEIGHTS: [(&str, &str); 3] = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// torchtitan Llama 3 <-> Hugging Face `LlamaForCausalLM`.
#[derive(Debug, Clone)]
pub struct LlamaAdapter {
    pub args: LlamaArgs,
}

impl LlamaAdapter {
    /// An adapter for these dimensions (checked: heads divide, head_dim is even).
    pub fn new(args: LlamaArgs) -> Result<Self> {
        let bad = |reason: String| {
            Err(Error::Adapter {
                name: "<llama args>".into(),
                reason,
            })
        };
        if args.n_heads == 0 || args.n_kv_heads == 0 || args.n_heads % args.n_kv_heads != 0 {
            return bad(format!(
                "n_heads {} must be a positive multiple of n_kv_heads {}",
                args.n_heads, args.n_kv_heads
            ));
        }
        if args.head_dim == 0 || args.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim {} must be even (RoPE rotates pairs)",
                args.head_dim
            ));
        }
        Ok(Self { args })
    }

    /// An adapter for the model a `config.json` describes.
    pub fn from_hf_config_file(path: &Path) -> Result<Self> {
        Self::new(LlamaArgs::from_hf_config(&HfLlamaConfig::read(path)?))
    }

    /// Split `layers.{i}.<rest>` into `(i, rest)`.
    fn split_layer<'a>(&self, name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
        let rest = name.strip_prefix(prefix)?;
        let (idx, tail) = rest.split_once('.')?;
        let i: usize = idx.parse().ok()?;
        (i < self.args.n_layers).then_some((i, tail))
    }

    fn layer_weight(&self, fqn: &str) -> Option<(usize, LayerWeight, &'static str)> {
        let (i, tail) = self.split_layer(fqn, "layers.")?;
        LAYER_WEIGHTS
            .iter()
            .find(|(_, t, _)| *t == tail)
            .map(|(w, _, hf)| (i, *w, *hf))
    }

    fn shape_of(&self, fqn: &str) -> Option<Vec<usize>> {
        let a = &self.args;
        let (q_rows, kv_rows) = (a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim);
        if let Some((_, w, _)) = self.layer_weight(fqn) {
            return Some(match w {
                LayerWeight::Wq => vec![q_rows, a.dim],
                LayerWeight::Wk | LayerWeight::Wv => vec![kv_rows, a.dim],
                LayerWeight::Wo => vec![a.dim, q_rows],
                LayerWeight::W1 | LayerWeight::W3 => vec![a.ffn_hidden_dim, a.dim],
                LayerWeight::W2 => vec![a.dim, a.ffn_hidden_dim],
                LayerWeight::AttentionNorm | LayerWeight::FfnNorm => vec![a.dim],
            });
        }
        match fqn {
            "tok_embeddings.weight" | "output.weight" => Some(vec![a.vocab_size, a.dim]),
            "norm.weight" => Some(vec![a.dim]),
            _ => None,
        }
    }

    fn check_shape(&self, fqn: &str, t: &Tensor) -> Result<()> {
        let expected = self.shape_of(fqn).ok_or_else(|| Error::Adapter {
            name: fqn.into(),
            reason: format!(
                "not a torchtitan Llama 3 weight of a {}-layer model",
                self.args.n_layers
            ),
        })?;
        if t.dims() != expected.as_slice() {
            return Err(Error::Adapter {
                name: fqn.into(),
                reason: format!(
                    "shape {:?} differs from {expected:?} implied by the model arguments",
                    t.dims()
                ),
            });
        }
        Ok(())
    }

    /// Which permutation (by head count) a weight needs, if any.
    fn rope_heads(&self, fqn: &str) -> Option<usize> {
        match self.layer_weight(fqn) {
            Some((_, LayerWeight::Wq, _)) => Some(self.args.n_heads),
            Some((_, LayerWeight::Wk, _)) => Some(self.args.n_kv_heads),
            _ => None,
        }
    }
}

impl StateDictAdapter for LlamaAdapter {
    fn fqn_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![];
        let mut push = |fqn: String| {
            let shape = self.shape_of(&fqn).unwrap_or_default();
            out.push((fqn, shape));
        };
        push("tok_embeddings.weight".into());
        for i in 0..self.args.n_layers {
            for (_, tail, _) in LAYER_WEIGHTS {
                push(format!("layers.{i}.{tail}"));
            }
        }
        push("norm.weight".into());
        push("output.weight".into());
        out
    }

    fn to_hf_name(&self, fqn: &str) -> Result<String> {
        if let Some((i, _, hf_tail)) = self.layer_weight(fqn) {
            return Ok(format!("model.layers.{i}.{hf_tail}"));
        }
        GLOBAL_WEIGHTS
            .iter()
            .find(|(t, _)| *t == fqn)
            .map(|(_, hf)| hf.to_string())
            .ok_or_else(|| Error::Adapter {
                name: fqn.into(),
                reason: format!(
                    "no Hugging Face name: not a torchtitan Llama 3 weight of a {}-layer model",
                    self.args.n_layers
                ),
            })
    }

    fn from_hf_name(&self, hf_name: &str) -> Result<Option<String>> {
        if let Some((i, tail)) = self.split_layer(hf_name, "model.layers.") {
            if tail == "self_attn.rotary_emb.inv_freq" {
                return Ok(None);
            }
            if let Some((_, t, _)) = LAYER_WEIGHTS.iter().find(|(_, _, hf)| *hf == tail) {
                return Ok(Some(format!("layers.{i}.{t}")));
            }
        }
        if let Some((t, _)) = GLOBAL_WEIGHTS.iter().find(|(_, hf)| *hf == hf_name) {
            return Ok(Some(t.to_string()));
        }
        Err(Error::Adapter {
            name: hf_name.into(),
            reason: format!(
                "not a LlamaForCausalLM weight of a {}-layer model without biases",
                self.args.n_layers
            ),
        })
    }

    fn to_hf_tensor(&self, fqn: &str, t: &Tensor) -> Result<Tensor> {
        self.check_shape(fqn, t)?;
        match self.rope_heads(fqn) {
            Some(h) => permute_to_hf(t, h),
            None => Ok(t.clone()),
        }
    }

    fn from_hf_tensor(&self, fqn: &str, t: &Tensor) -> Result<Tensor> {
        self.check_shape(fqn, t)?;
        match self.rope_heads(fqn) {
            Some(h) => permute_from_hf(t, h),
            None => Ok(t.clone()),
        }
    }

    fn hf_fallback(&self, hf_name: &str) -> Option<String> {
        // Tied embeddings (Llama 3.2 1B/3B): no lm_head, the output projection is the
        // embedding table.
        (hf_name == "lm_head.weight").then(|| "model.embed_tokens.weight".to_string())
    }

    fn hf_config(&self, dtype: DType) -> Result<serde_json::Value> {
        serde_json::to_value(self.args.to_hf_config(dtype)).map_err(|e| Error::Adapter {
            name: "config.json".into(),
            reason: e.to_string(),
        })
    }

    fn check_hf_config(&self, config_path: &Path) -> Result<()> {
        let cfg = HfLlamaConfig::read(config_path)?;
        let theirs = LlamaArgs::from_hf_config(&cfg);
        let a = &self.args;
        let pairs = [
            ("hidden_size", a.dim, theirs.dim),
            ("num_hidden_layers", a.n_layers, theirs.n_layers),
            ("num_attention_heads", a.n_heads, theirs.n_heads),
            ("num_key_value_heads", a.n_kv_heads, theirs.n_kv_heads),
            ("head_dim", a.head_dim, theirs.head_dim),
            ("vocab_size", a.vocab_size, theirs.vocab_size),
            ("intermediate_size", a.ffn_hidden_dim, theirs.ffn_hidden_dim),
        ];
        for (field, ours, hf) in pairs {
            if ours != hf {
                return Err(Error::Hf {
                    path: config_path.to_path_buf(),
                    reason: format!("{field} = {hf}, but the Titan model has {ours}: pick the model flavor that matches this checkpoint"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn column(values: &[f32]) -> Tensor {
        Tensor::from_slice(values, (values.len(), 1), &Device::Cpu).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Hand-computed: with head_dim 6, torchtitan's interleaved pairs (0,1) (2,3) (4,5) become
    /// HF's halves: first the pair starts 0,2,4, then the pair ends 1,3,5 — per head.
    #[test]
    fn permutation_matches_hand_computed_layout() {
        let w = column(&(0..12).map(|i| i as f32).collect::<Vec<_>>());
        let hf = permute_to_hf(&w, 2).unwrap();
        assert_eq!(
            rows(&hf),
            vec![0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.]
        );
        assert_eq!(rows(&permute_from_hf(&hf, 2).unwrap()), rows(&w));
        // One head of 4: (x0,x1),(x2,x3) -> x0,x2,x1,x3.
        assert_eq!(
            rows(&permute_to_hf(&column(&[10., 11., 12., 13.]), 1).unwrap()),
            vec![10., 12., 11., 13.]
        );
    }

    #[test]
    fn permutation_moves_whole_rows() {
        let w = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let hf = permute_to_hf(&w, 1).unwrap();
        let got = hf.to_vec2::<f32>().unwrap();
        let src = w.to_vec2::<f32>().unwrap();
        assert_eq!(
            got,
            vec![
                src[0].clone(),
                src[2].clone(),
                src[1].clone(),
                src[3].clone()
            ]
        );
    }

    fn tiny() -> LlamaAdapter {
        LlamaAdapter::new(LlamaArgs {
            dim: 8,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            vocab_size: 11,
            ffn_hidden_dim: 12,
            norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: Some(Llama3RopeScaling::llama3_default()),
            max_seq_len: 64,
        })
        .unwrap()
    }

    #[test]
    fn names_map_both_ways() {
        let a = tiny();
        let expect = [
            ("tok_embeddings.weight", "model.embed_tokens.weight"),
            (
                "layers.1.attention.wq.weight",
                "model.layers.1.self_attn.q_proj.weight",
            ),
            (
                "layers.0.attention.wk.weight",
                "model.layers.0.self_attn.k_proj.weight",
            ),
            (
                "layers.0.attention.wv.weight",
                "model.layers.0.self_attn.v_proj.weight",
            ),
            (
                "layers.0.attention.wo.weight",
                "model.layers.0.self_attn.o_proj.weight",
            ),
            (
                "layers.0.feed_forward.w1.weight",
                "model.layers.0.mlp.gate_proj.weight",
            ),
            (
                "layers.0.feed_forward.w2.weight",
                "model.layers.0.mlp.down_proj.weight",
            ),
            (
                "layers.0.feed_forward.w3.weight",
                "model.layers.0.mlp.up_proj.weight",
            ),
            (
                "layers.1.attention_norm.weight",
                "model.layers.1.input_layernorm.weight",
            ),
            (
                "layers.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
            ("norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
        ];
        for (titan, hf) in expect {
            assert_eq!(a.to_hf_name(titan).unwrap(), hf);
            assert_eq!(a.from_hf_name(hf).unwrap().as_deref(), Some(titan));
        }
        assert_eq!(a.fqn_shapes().len(), 2 + 2 * 9 + 1);
        assert!(
            a.to_hf_name("layers.2.attention.wq.weight").is_err(),
            "layer beyond n_layers"
        );
        assert_eq!(
            a.from_hf_name("model.layers.0.self_attn.rotary_emb.inv_freq")
                .unwrap(),
            None
        );
        assert!(a
            .from_hf_name("model.layers.0.self_attn.q_proj.bias")
            .is_err());
    }

    #[test]
    fn shapes_are_checked() {
        let a = tiny();
        let wk = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(a.to_hf_tensor("layers.0.attention.wk.weight", &wk).is_ok());
        let err = a
            .to_hf_tensor("layers.0.attention.wq.weight", &wk)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layers.0.attention.wq.weight") && err.contains("[8, 8]"),
            "{err}"
        );
    }

    #[test]
    fn config_fields() {
        let cfg = tiny().args.to_hf_config(DType::BF16);
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(v["architectures"][0], "LlamaForCausalLM");
        assert_eq!(v["torch_dtype"], "bfloat16");
        assert_eq!(v["num_key_value_heads"], 1);
        assert_eq!(v["head_dim"], 4);
        assert_eq!(v["rope_scaling"]["rope_type"], "llama3");
        assert_eq!(v["rope_scaling"]["original_max_position_embeddings"], 8192);
        assert_eq!(v["tie_word_embeddings"], false);
        assert_eq!(v["hidden_act"], "silu");
        let back: HfLlamaConfig = serde_json::from_value(v).unwrap();
        assert_eq!(LlamaArgs::from_hf_config(&back), tiny().args);
    }
}
