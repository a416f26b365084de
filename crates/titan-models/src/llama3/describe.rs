//! A Llama 3 model described by shape only: parameter names, shapes and init rules, parameter
//! count, FLOPs per token and activation memory, with no tensor allocated. An 8B or 405B
//! description is instant.

use titan_core::{Init, ParamSpec};

use super::args::LlamaArgs;

/// Parameter names in torchtitan's state-dict order.
pub mod names {
    pub const TOK_EMBEDDINGS: &str = "tok_embeddings.weight";
    pub const NORM: &str = "norm.weight";
    pub const OUTPUT: &str = "output.weight";

    /// `layers.{i}.<suffix>`.
    pub fn layer(i: usize, suffix: &str) -> String {
        format!("layers.{i}.{suffix}")
    }
}

/// The init std of `wo`, `w2`, `w3` in layer `layer_id`.
pub fn depth_init_std(args: &LlamaArgs, layer_id: usize) -> f64 {
    if args.depth_init {
        0.02 / (2.0 * (layer_id as f64 + 1.0)).sqrt()
    } else {
        0.02 / (2.0 * args.n_layers as f64).sqrt()
    }
}

/// The specs of one transformer block's parameters, in state-dict order.
pub fn block_specs(args: &LlamaArgs, i: usize) -> Vec<ParamSpec> {
    let (d, hd, f) = (args.dim, args.head_dim(), args.ffn_hidden_dim());
    let (hq, hkv) = (args.n_heads, args.n_kv_heads());
    let std_out = depth_init_std(args, i);
    let n = |s: &str| names::layer(i, s);
    vec![
        ParamSpec::new(
            n("attention.wq.weight"),
            (hq * hd, d),
            Init::trunc_normal(0.02),
        ),
        ParamSpec::new(
            n("attention.wk.weight"),
            (hkv * hd, d),
            Init::trunc_normal(0.02),
        ),
        ParamSpec::new(
            n("attention.wv.weight"),
            (hkv * hd, d),
            Init::trunc_normal(0.02),
        ),
        ParamSpec::new(
            n("attention.wo.weight"),
            (d, hq * hd),
            Init::trunc_normal(std_out),
        ),
        ParamSpec::new(
            n("feed_forward.w1.weight"),
            (f, d),
            Init::trunc_normal(0.02),
        ),
        ParamSpec::new(
            n("feed_forward.w2.weight"),
            (d, f),
            Init::trunc_normal(std_out),
        ),
        ParamSpec::new(
            n("feed_forward.w3.weight"),
            (f, d),
            Init::trunc_normal(std_out),
        ),
        ParamSpec::new(n("attention_norm.weight"), d, Init::Ones),
        ParamSpec::new(n("ffn_norm.weight"), d, Init::Ones),
    ]
}

/// The embedding's spec: `N(0, 1)`.
pub fn embedding_spec(args: &LlamaArgs) -> ParamSpec {
    ParamSpec::new(
        names::TOK_EMBEDDINGS,
        (args.vocab_size, args.dim),
        Init::Normal { std: 1.0 },
    )
}

/// The output projection's spec: trunc-normal with std `dim^-0.5`, cut at 3 std.
pub fn output_spec(args: &LlamaArgs) -> ParamSpec {
    let std = (args.dim as f64).powf(-0.5);
    ParamSpec::new(
        names::OUTPUT,
        (args.vocab_size, args.dim),
        Init::TruncNormal {
            std,
            a: -3.0 * std,
            b: 3.0 * std,
        },
    )
}

/// The final norm's spec.
pub fn norm_spec(args: &LlamaArgs) -> ParamSpec {
    ParamSpec::new(names::NORM, args.dim, Init::Ones)
}

/// Everything about a model that does not need its weights.
#[derive(Debug, Clone)]
pub struct ModelDescription {
    pub args: LlamaArgs,
    pub params: Vec<ParamSpec>,
}

impl ModelDescription {
    pub fn new(args: &LlamaArgs) -> Self {
        let mut params = vec![embedding_spec(args)];
        for i in 0..args.n_layers {
            params.extend(block_specs(args, i));
        }
        params.push(norm_spec(args));
        params.push(output_spec(args));
        Self {
            args: args.clone(),
            params,
        }
    }

    /// Total parameters.
    pub fn num_params(&self) -> u64 {
        self.params.iter().map(|p| p.numel() as u64).sum()
    }

    /// Parameters of the token embedding (not counted in FLOPs: a lookup, not a matmul).
    pub fn num_embedding_params(&self) -> u64 {
        (self.args.vocab_size * self.args.dim) as u64
    }

    /// torchtitan's FLOPs per token: `6 * (params - embedding) + 12 * n_layers * dim * seq_len`
    /// (the output projection counts; attention is not discounted for causality).
    pub fn flops_per_token(&self, seq_len: usize) -> u64 {
        let a = &self.args;
        6 * (self.num_params() - self.num_embedding_params())
            + 12 * (a.n_layers * a.n_heads * a.head_dim() * seq_len) as u64
    }

    /// Bytes of activations one block saves per token for backward with every activation
    /// kept, `act_bytes` per element (2 for bf16, 4 for f32). `attn_probs` adds the naive
    /// kernel's `heads x seq` f32 probabilities per token; a flash kernel keeps one f32 per head.
    pub fn block_activation_bytes_per_token(
        &self,
        act_bytes: usize,
        seq_len: usize,
        attn_probs: bool,
    ) -> u64 {
        let a = &self.args;
        let (d, f, kv) = (a.dim, a.ffn_hidden_dim(), a.n_kv_heads() * a.head_dim());
        // x, hn1, q, k, v, attention out, o (reshaped), h, hn2, w1 out, w3 out, gate.
        let elems = d + d + d + 2 * kv + d + d + d + d + 3 * f;
        let f32_extras = 2 * 4 // rstd of both norms
            + if attn_probs { a.n_heads * seq_len * 4 } else { a.n_heads * 4 };
        (elems * act_bytes + f32_extras) as u64
    }

    /// Bytes of the head's saved activations per token (norm input and output, logits in the
    /// compute dtype, f32 log-sum-exp).
    pub fn head_activation_bytes_per_token(&self, act_bytes: usize) -> u64 {
        let a = &self.args;
        ((2 * a.dim + a.vocab_size) * act_bytes + 4 + 4 + 4) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flops(flavor: &str, seq: usize) -> (u64, u64) {
        let d = ModelDescription::new(&LlamaArgs::flavor(flavor).unwrap());
        (d.num_params(), d.flops_per_token(seq))
    }

    #[test]
    fn param_counts_and_flops_match_torchtitan() {
        assert_eq!(flops("debugmodel", 2048), (6_163_712, 71_585_280));
        assert_eq!(flops("8B", 8192), (8_030_261_248, 57_914_449_920));
        assert_eq!(flops("1B", 2048).0, 1_498_482_688);
        // anchors.md: 8.220e9 FLOPs/token at seq 2048.
        assert_eq!(flops("1B", 2048).1 / 1_000_000, 8_220);
        assert_eq!(flops("70B", 8192).0, 70_553_706_496);
        assert_eq!(flops("405B", 8192).0, 405_853_388_800);
        // The 3B shape untied: torchtitan 0.3's tied 3,212,749,824 plus one 128256 x 3072 output.
        assert_eq!(flops("3B", 8192).0, 3_212_749_824 + 128_256 * 3072);
    }

    #[test]
    fn ffn_hidden_dims() {
        let h = |f: &str| LlamaArgs::flavor(f).unwrap().ffn_hidden_dim();
        assert_eq!(h("debugmodel"), 768);
        assert_eq!(h("1B"), 8192);
        assert_eq!(h("8B"), 14336);
        assert_eq!(h("70B"), 28672);
        assert_eq!(h("405B"), 53248);
    }

    #[test]
    fn init_rules_follow_torchtitan() {
        let args = LlamaArgs::flavor("debugmodel").unwrap();
        let d = ModelDescription::new(&args);
        let init = |name: &str| d.params.iter().find(|p| p.name == name).unwrap().init;
        assert_eq!(init("tok_embeddings.weight"), Init::Normal { std: 1.0 });
        assert_eq!(
            init("layers.3.attention.wq.weight"),
            Init::trunc_normal(0.02)
        );
        assert_eq!(
            init("layers.3.feed_forward.w1.weight"),
            Init::trunc_normal(0.02)
        );
        // Depth-scaled: 0.02 / sqrt(2 * (layer_id + 1)).
        let depth = 0.02 / (2.0f64 * 4.0).sqrt();
        assert_eq!(
            init("layers.3.attention.wo.weight"),
            Init::trunc_normal(depth)
        );
        assert_eq!(
            init("layers.3.feed_forward.w2.weight"),
            Init::trunc_normal(depth)
        );
        assert_eq!(
            init("layers.3.feed_forward.w3.weight"),
            Init::trunc_normal(depth)
        );
        assert_eq!(init("layers.3.ffn_norm.weight"), Init::Ones);
        assert_eq!(init("norm.weight"), Init::Ones);
        let std = 256f64.powf(-0.5);
        assert_eq!(
            init("output.weight"),
            Init::TruncNormal {
                std,
                a: -3.0 * std,
                b: 3.0 * std
            }
        );
        // depth_init = false: 0.02 / sqrt(2 * n_layers) everywhere.
        let flat = ModelDescription::new(&LlamaArgs {
            depth_init: false,
            ..args
        });
        let wo = flat
            .params
            .iter()
            .find(|p| p.name == "layers.0.attention.wo.weight")
            .unwrap()
            .init;
        assert_eq!(wo, Init::trunc_normal(0.02 / (12f64).sqrt()));
    }

    #[test]
    fn big_descriptions_are_shape_only() {
        let d = ModelDescription::new(&LlamaArgs::flavor("405B").unwrap());
        assert_eq!(d.params.len(), 126 * 9 + 3);
        assert_eq!(d.params[1].name, "layers.0.attention.wq.weight");
        assert_eq!(d.params.last().unwrap().name, "output.weight");
    }
}
