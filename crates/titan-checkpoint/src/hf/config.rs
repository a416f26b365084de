//! `config.json` of a Hugging Face `LlamaForCausalLM`: the fields Titan writes and reads.
//! Unknown fields of real configs (`transformers_version`, token ids, ...) are ignored on
//! read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Llama 3 RoPE frequency scaling (`rope_scaling` with `rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Always `"llama3"` for this scaling; older configs spell the key `type`.
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl Llama3RopeScaling {
    /// torchtitan's Llama 3 scaling: factor 8, low 1, high 4, original 8192.
    pub fn llama3_default() -> Self {
        Self {
            rope_type: "llama3".into(),
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }
    }
}

fn default_act() -> String {
    "silu".into()
}

fn default_model_type() -> String {
    "llama".into()
}

fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".into()]
}

/// The `LlamaForCausalLM` fields of `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfLlamaConfig {
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    /// Absent in MHA configs: equal to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub num_hidden_layers: usize,
    pub vocab_size: usize,
    #[serde(default = "HfLlamaConfig::default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "HfLlamaConfig::default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<Llama3RopeScaling>,
    #[serde(default = "HfLlamaConfig::default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Absent in older configs: `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "HfLlamaConfig::default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "HfLlamaConfig::default_pretraining_tp")]
    pub pretraining_tp: usize,
    #[serde(default = "HfLlamaConfig::default_use_cache")]
    pub use_cache: bool,
    /// Passed through (ints or lists in real configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
}

impl HfLlamaConfig {
    fn default_eps() -> f64 {
        1e-6
    }
    fn default_theta() -> f64 {
        10000.0
    }
    fn default_max_pos() -> usize {
        2048
    }
    fn default_init_range() -> f64 {
        0.02
    }
    fn default_pretraining_tp() -> usize {
        1
    }
    fn default_use_cache() -> bool {
        true
    }

    /// KV heads, defaulting to the attention heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head dimension, defaulting to `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Read `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
        let cfg: HfLlamaConfig = serde_json::from_slice(&bytes).map_err(Error::json(path))?;
        if !cfg.architectures.iter().any(|a| a == "LlamaForCausalLM") {
            return Err(Error::Hf {
                path: path.to_path_buf(),
                reason: format!(
                    "architectures {:?} do not include LlamaForCausalLM",
                    cfg.architectures
                ),
            });
        }
        if cfg.attention_bias || cfg.mlp_bias || cfg.hidden_act != "silu" {
            return Err(Error::Hf {
                path: path.to_path_buf(),
                reason: format!(
                    "attention_bias = {}, mlp_bias = {}, hidden_act = {}: Titan's Llama has no biases and uses silu",
                    cfg.attention_bias, cfg.mlp_bias, cfg.hidden_act
                ),
            });
        }
        Ok(cfg)
    }

    /// Write `config.json` (pretty, durable).
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(Error::json(path))?;
        crate::layout::write_durably(path, &bytes)
    }
}
