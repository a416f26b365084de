//! The engine's modules and functions, each with an explicit forward and backward.
//!
//! Math conventions: hidden states are `(batch, seq, dim)`; matmuls run in the input's dtype
//! (bf16 on GPU, f32 on CPU) with candle's f32 accumulation; normalization, RoPE, softmax and
//! the loss compute in f32 and cast back; parameter gradients accumulate in f32.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod flash_attention;
pub mod fused;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

pub use attention::{AttentionKernel, AttnMask, AttnSaved, MaskKind, NaiveAttention};
pub use cross_entropy::{
    cross_entropy_backward, cross_entropy_forward, cross_entropy_forward_backward,
    CrossEntropySaved, IGNORE_INDEX,
};
pub use embedding::Embedding;
pub use flash_attention::FlashAttention;
pub use linear::Linear;
pub use rmsnorm::RmsNorm;
pub use rope::{apply_rope, apply_rope_backward, RopeScaling, RopeTables};
pub use swiglu::{swiglu_backward, swiglu_forward};
