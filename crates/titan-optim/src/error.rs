//! The optimizer crate's error type: each message says what is wrong and how to fix it.

use candle_core::Shape;

/// Errors raised by optimizers, clipping and LR schedules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Substrate ===
    /// An error from candle (dtype, device or kernel failure).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error from the engine (e.g. a parameter shape check).
    #[error(transparent)]
    Core(#[from] titan_core::Error),

    /// A fused CUDA kernel failed to load or launch (inputs it does not take fall back to
    /// the composite path instead).
    #[error("fused optimizer kernel: {0}")]
    Kernel(String),

    // === Configuration ===
    /// A configuration value outside its valid range.
    #[error("invalid config `{key}` = {value}: {reason}")]
    InvalidConfig {
        key: &'static str,
        value: String,
        reason: String,
    },

    // === Step inputs ===
    /// The learning rate passed to a step is negative or not finite.
    #[error("learning rate {lr} passed to the optimizer step is not a finite value >= 0: check the LR schedule (lr_scheduler.*) and optimizer.lr")]
    InvalidLr { lr: f64 },

    /// `max_norm` for gradient clipping is not a positive number.
    #[error("training.max_norm = {max_norm} is invalid: it must be > 0 (use a large value such as 1e9 to effectively disable clipping)")]
    InvalidMaxNorm { max_norm: f64 },

    /// A parameter has a gradient but no f32 master to update.
    #[error("parameter `{param}` has a gradient but no f32 master values: materialize it (or hand the optimizer its local shard) before stepping")]
    MissingMaster { param: String },

    /// Two parameters given to one step share a name; state is keyed by name.
    #[error("parameter name `{param}` appears twice in one optimizer step: optimizer state is keyed by name, so every parameter (or shard) handed to one optimizer needs a unique FQN")]
    DuplicateParam { param: String },

    // === State ===
    /// Stored optimizer state does not fit the parameter it belongs to.
    #[error("optimizer state `{key}` has shape {got:?} but parameter `{param}` has shape {expected:?}: the state was saved for a different model or sharding; load a matching checkpoint or exclude the optimizer from loading")]
    StateShape {
        param: String,
        key: String,
        expected: Shape,
        got: Shape,
    },

    /// A state dict lists a parameter but lacks one of its tensors.
    #[error("optimizer state for parameter `{param}` is missing tensor `{key}`: the checkpoint is incomplete or was written by another optimizer; load a complete checkpoint or exclude the optimizer from loading")]
    MissingStateKey { param: String, key: String },

    /// A state dict holds a tensor that belongs to no listed parameter.
    #[error("optimizer state tensor `{key}` belongs to no parameter listed in the state's step counts: expected only `<fqn>.exp_avg` / `<fqn>.exp_avg_sq` keys for parameters in `steps`")]
    UnexpectedStateKey { key: String },

    /// A state tensor is not a floating-point tensor.
    #[error("optimizer state tensor `{key}` has dtype {dtype:?}; expected a float tensor (f32): the checkpoint entry is corrupt or not optimizer state")]
    StateDType {
        key: String,
        dtype: candle_core::DType,
    },

    /// Optimizer state names a parameter this optimizer was not given.
    #[error("optimizer state holds parameter `{param}`, which is not among the model's parameters: the checkpoint was saved for a different model (or pipeline stage); load a matching checkpoint or exclude the optimizer from loading")]
    UnknownStateParam { param: String },
}

#[cfg(feature = "cuda")]
impl From<titan_kernels::Error> for Error {
    fn from(e: titan_kernels::Error) -> Self {
        match e {
            titan_kernels::Error::Candle(e) => Error::Candle(e),
            other => Error::Kernel(other.to_string()),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
