//! Llama 3 arguments and torchtitan 0.2.2's flavors.

use titan_core::ops::RopeScaling;

use crate::{Error, Result};

/// How attention is masked (torchtitan's `attn_mask_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnMaskType {
    /// Plain causal attention over the whole packed sequence.
    Causal,
    /// Causal within each document of the packed sequence (documents end at `eos_id`).
    BlockCausal,
}

/// torchtitan's `TransformerModelArgs` for Llama 3.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaArgs {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// `None` means multi-head attention (`n_kv_heads = n_heads`).
    pub n_kv_heads: Option<usize>,
    pub vocab_size: usize,
    pub multiple_of: usize,
    pub ffn_dim_multiplier: Option<f64>,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Llama 3.1 frequency scaling; `None` turns it off.
    pub rope_scaling: Option<RopeScaling>,
    pub max_seq_len: usize,
    /// Depth-scaled init of `wo`, `w2`, `w3`: `0.02 / sqrt(2 (layer_id + 1))` when true,
    /// `0.02 / sqrt(2 n_layers)` when false.
    pub depth_init: bool,
    pub attn_mask_type: AttnMaskType,
    /// The token that ends a document (for block-causal masks).
    pub eos_id: u32,
}

impl Default for LlamaArgs {
    /// torchtitan 0.2.2's `TransformerModelArgs` defaults.
    fn default() -> Self {
        Self {
            dim: 4096,
            n_layers: 32,
            n_heads: 32,
            n_kv_heads: None,
            vocab_size: 128256,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: Some(RopeScaling::default()),
            max_seq_len: 131072,
            depth_init: true,
            attn_mask_type: AttnMaskType::Causal,
            eos_id: 0,
        }
    }
}

/// The flavor names [`LlamaArgs::flavor`] knows.
pub const FLAVORS: &[&str] = &[
    "debugmodel",
    "debugmodel_flex_attn",
    "1B",
    "3B",
    "8B",
    "8B_flex",
    "70B",
    "405B",
];

impl LlamaArgs {
    /// torchtitan 0.2.2's `llama3_args[flavor]`, plus `1B` (the anchor benchmark shape:
    /// Llama 3.2 1B with an untied output) and `3B` (torchtitan 0.3's shape, untied).
    pub fn flavor(name: &str) -> Result<Self> {
        let base = Self {
            rope_theta: 500000.0,
            ..Self::default()
        };
        let args = match name {
            "debugmodel" => Self {
                dim: 256,
                n_layers: 6,
                n_heads: 16,
                vocab_size: 2048,
                ..base
            },
            "debugmodel_flex_attn" => Self {
                dim: 256,
                n_layers: 6,
                n_heads: 16,
                vocab_size: 2048,
                attn_mask_type: AttnMaskType::BlockCausal,
                ..base
            },
            "1B" => Self {
                dim: 2048,
                n_layers: 16,
                n_heads: 32,
                n_kv_heads: Some(8),
                ffn_dim_multiplier: Some(1.5),
                multiple_of: 256,
                ..base
            },
            "3B" => Self {
                dim: 3072,
                n_layers: 28,
                n_heads: 24,
                n_kv_heads: Some(8),
                ffn_dim_multiplier: Some(1.0),
                multiple_of: 1024,
                ..base
            },
            "8B" | "8B_flex" => Self {
                dim: 4096,
                n_layers: 32,
                n_heads: 32,
                n_kv_heads: Some(8),
                ffn_dim_multiplier: Some(1.3),
                multiple_of: 1024,
                attn_mask_type: if name == "8B_flex" {
                    AttnMaskType::BlockCausal
                } else {
                    AttnMaskType::Causal
                },
                ..base
            },
            "70B" => Self {
                dim: 8192,
                n_layers: 80,
                n_heads: 64,
                n_kv_heads: Some(8),
                ffn_dim_multiplier: Some(1.3),
                multiple_of: 4096,
                ..base
            },
            "405B" => Self {
                dim: 16384,
                n_layers: 126,
                n_heads: 128,
                n_kv_heads: Some(8),
                ffn_dim_multiplier: Some(1.2),
                multiple_of: 4096,
                ..base
            },
            other => {
                return Err(Error::UnknownFlavor {
                    model: "llama3",
                    flavor: other.to_string(),
                    known: FLAVORS.join(", "),
                })
            }
        };
        Ok(args)
    }

    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// torchtitan's SwiGLU hidden size: `int(2 * 4 * dim / 3)`, times the multiplier, rounded up
    /// to a multiple of `multiple_of`.
    pub fn ffn_hidden_dim(&self) -> usize {
        let mut h = (2 * 4 * self.dim) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            h = (m * h as f64) as usize;
        }
        self.multiple_of * h.div_ceil(self.multiple_of)
    }

    /// Check the arguments describe a buildable model; errors name the argument.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::InvalidArgs {
                model: "llama3",
                why,
            })
        };
        if self.dim == 0 || self.n_layers == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!(
                "dim ({}), n_layers ({}), n_heads ({}) and vocab_size ({}) must be positive",
                self.dim, self.n_layers, self.n_heads, self.vocab_size
            ));
        }
        if self.dim % self.n_heads != 0 {
            return bad(format!(
                "dim {} is not divisible by n_heads {}",
                self.dim, self.n_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!(
                "head_dim {} (dim / n_heads) must be even for RoPE",
                self.head_dim()
            ));
        }
        let kv = self.n_kv_heads();
        if kv == 0 || self.n_heads % kv != 0 {
            return bad(format!(
                "n_heads {} is not a multiple of n_kv_heads {kv}",
                self.n_heads
            ));
        }
        if self.multiple_of == 0 {
            return bad("multiple_of must be positive".into());
        }
        if self.norm_eps <= 0.0 || self.rope_theta <= 0.0 {
            return bad(format!(
                "norm_eps ({}) and rope_theta ({}) must be positive",
                self.norm_eps, self.rope_theta
            ));
        }
        if self.max_seq_len == 0 {
            return bad("max_seq_len must be positive".into());
        }
        Ok(())
    }
}
