//! `[model]`: which model and flavor to train, plus Titan's per-argument overrides.

use crate::declare::{choice, section};

choice! {
    /// Attention mask over a packed sequence.
    pub enum AttnMaskType {
        /// Plain causal mask over the whole row.
        Causal = "causal",
        /// Causal within each document of the packed row (documents end at EOS).
        BlockCausal = "block_causal",
    }
}

section! {
    /// Model selection, assets and model converters.
    ///
    /// The `dim` .. `attn_mask_type` options are Titan extensions: each, when set, overrides the
    /// flavor's value of the same torchtitan `TransformerModelArgs` field; unset keeps the flavor's.
    pub struct Model {
        /// Which model to train.
        pub name: String = String::from("llama3"),
        /// Which model config (flavor) to train, e.g. `debugmodel`, `8B`.
        pub flavor: String = String::from("debugmodel"),
        /// Path to the Hugging Face assets folder (tokenizer, config.json, safetensors weights).
        ///
        /// Titan: unset (the default) uses Titan's embedded tokenizer. torchtitan's default is
        /// `./tests/assets/tokenizer`, which Titan does not ship.
        pub hf_assets_path: Option<String> = None,
        /// DEPRECATED: use `model.hf_assets_path`; when set it replaces `hf_assets_path`.
        pub tokenizer_path: Option<String> = None,
        /// Comma-separated list of model converters to apply, e.g. `quantize.linear.float8`.
        pub converters: Vec<String> = Vec::new(),
        /// Print the model definition after all converters have been applied.
        pub print_after_conversion: bool = false,
        /// (Titan) Model width; overrides the flavor's `dim`.
        pub dim: Option<usize> = None,
        /// (Titan) Number of transformer blocks; overrides the flavor's `n_layers`.
        pub n_layers: Option<usize> = None,
        /// (Titan) Number of attention heads; overrides the flavor's `n_heads`.
        pub n_heads: Option<usize> = None,
        /// (Titan) Number of key/value heads (GQA); overrides the flavor's `n_kv_heads`.
        pub n_kv_heads: Option<usize> = None,
        /// (Titan) Vocabulary size; overrides the flavor's `vocab_size`.
        pub vocab_size: Option<usize> = None,
        /// (Titan) FFN hidden size is rounded up to a multiple of this; overrides the flavor's `multiple_of`.
        pub multiple_of: Option<usize> = None,
        /// (Titan) FFN hidden-size multiplier; overrides the flavor's `ffn_dim_multiplier`.
        pub ffn_dim_multiplier: Option<f64> = None,
        /// (Titan) RMSNorm epsilon; overrides the flavor's `norm_eps`.
        pub norm_eps: Option<f64> = None,
        /// (Titan) RoPE base frequency; overrides the flavor's `rope_theta`.
        pub rope_theta: Option<f64> = None,
        /// (Titan) Llama-3.1 RoPE frequency scaling on (true) or off (false); overrides the flavor's.
        pub rope_scaling: Option<bool> = None,
        /// (Titan) Longest sequence the RoPE table supports; overrides the flavor's `max_seq_len`.
        pub max_seq_len: Option<usize> = None,
        /// (Titan) Depth-scaled init of output projections (per layer) vs by total depth; overrides the flavor's `depth_init`.
        pub depth_init: Option<bool> = None,
        /// (Titan) Attention mask: `causal` or `block_causal` (per document); overrides the flavor's `attn_mask_type`.
        pub attn_mask_type: Option<AttnMaskType> = None,
    }
}
