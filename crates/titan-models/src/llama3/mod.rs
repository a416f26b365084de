//! Llama 3 (torchtitan's `llama3`): pre-norm decoder with RMSNorm, RoPE with Llama 3.1
//! scaling, grouped-query attention and a SwiGLU feed-forward.

pub mod args;
pub mod block;
pub mod describe;
pub mod golden;
pub mod model;

pub use args::{AttnMaskType, LlamaArgs, FLAVORS};
pub use block::{LlamaBlock, LlamaBlockSaved, LlamaCtx};
pub use describe::ModelDescription;
pub use model::{doc_ids_from_eos, Llama3, LlamaHeadSaved, LlamaStemSaved, TokenBatch};
