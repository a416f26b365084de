//! `--memory_estimation.enable`: what one training step will need, from the model's shape
//! alone (no weight is allocated, so a 405B estimate runs on a laptop).

use titan_config::JobConfig;

use crate::model::TrainableModel;
use crate::spec::TrainSpec;
use crate::Result;

/// Estimated bytes per device for one training step.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    pub num_params: u64,
    pub flops_per_token: u64,
    /// f32 master weights on this rank.
    pub master_bytes: u64,
    /// Compute-dtype parameter copies (gathered units under FSDP: one unit at a time is
    /// ignored here; the estimate assumes full copies without FSDP).
    pub compute_param_bytes: u64,
    /// f32 gradients.
    pub grad_bytes: u64,
    /// f32 AdamW moments.
    pub optimizer_bytes: u64,
    /// Saved activations of one microbatch with the configured checkpointing.
    pub activation_bytes: u64,
    pub total_bytes: u64,
    pub compute_dtype_bytes: usize,
    pub data_parallel_shard: usize,
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        writeln!(
            f,
            "parameters:            {}",
            titan_metrics::pyfmt::int_grouped(self.num_params as i128)
        )?;
        writeln!(
            f,
            "FLOPs per token:       {:.3e}",
            self.flops_per_token as f64
        )?;
        writeln!(
            f,
            "master weights (f32):  {:>10.2} GiB",
            gib(self.master_bytes)
        )?;
        writeln!(
            f,
            "compute copies:        {:>10.2} GiB",
            gib(self.compute_param_bytes)
        )?;
        writeln!(
            f,
            "gradients (f32):       {:>10.2} GiB",
            gib(self.grad_bytes)
        )?;
        writeln!(
            f,
            "AdamW moments (f32):   {:>10.2} GiB",
            gib(self.optimizer_bytes)
        )?;
        writeln!(
            f,
            "saved activations:     {:>10.2} GiB",
            gib(self.activation_bytes)
        )?;
        write!(
            f,
            "estimated peak:        {:>10.2} GiB per device (data_parallel_shard_degree {})",
            gib(self.total_bytes),
            self.data_parallel_shard
        )
    }
}

/// Estimate from the config's model, batch, device dtype and checkpointing.
pub fn estimate<M: TrainableModel>(spec: &TrainSpec<M>, cfg: &JobConfig) -> Result<MemoryEstimate> {
    // The tokenizer only refines the vocabulary size; an estimate for a model whose files are
    // not on this machine uses the flavor's.
    let tokenizer = match (spec.build_tokenizer)(cfg) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::info!(
                "estimating without a tokenizer ({e}): using the flavor's vocabulary size"
            );
            None
        }
    };
    let model = (spec.build_model)(cfg, tokenizer.as_deref())?;
    let cuda = !matches!(cfg.training.device, titan_config::Device::Cpu);
    let act = if cuda && cfg.training.mixed_precision_param == titan_config::FloatDtype::Bfloat16 {
        2
    } else {
        4
    };
    let s = model.summary(cfg.training.seq_len, act);
    let shard = cfg.parallelism.data_parallel_shard_degree.max(1) as u64;
    let n = s.num_params;
    let tokens = (cfg.training.local_batch_size * cfg.training.seq_len) as u64;
    let (l, full, op, input) = (
        s.n_blocks as u64,
        s.block_activation_bytes_per_token,
        s.block_op_ac_bytes_per_token,
        s.block_input_bytes_per_token,
    );
    // Kept across the step, plus one block's full state alive while it is recomputed.
    let per_token = s.head_activation_bytes_per_token
        + match crate::train::ac_policy(cfg)? {
            titan_core::ActivationCheckpoint::None => l * full,
            titan_core::ActivationCheckpoint::Full => l * input + full,
            titan_core::ActivationCheckpoint::EveryNth(n) => {
                let recomputed = l / n as u64;
                (l - recomputed) * full + recomputed * input + full
            }
            titan_core::ActivationCheckpoint::Op => l * op,
        };
    let master_bytes = 4 * n / shard;
    let compute_param_bytes = if act == 4 { 0 } else { act as u64 * n / shard };
    let grad_bytes = 4 * n / shard;
    let optimizer_bytes = 8 * n / shard;
    let activation_bytes = per_token * tokens;
    Ok(MemoryEstimate {
        num_params: n,
        flops_per_token: s.flops_per_token,
        master_bytes,
        compute_param_bytes,
        grad_bytes,
        optimizer_bytes,
        activation_bytes,
        total_bytes: master_bytes
            + compute_param_bytes
            + grad_bytes
            + optimizer_bytes
            + activation_bytes,
        compute_dtype_bytes: act,
        data_parallel_shard: shard as usize,
    })
}
