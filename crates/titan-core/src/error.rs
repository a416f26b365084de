//! The engine's error type: one enum, variants that name what went wrong and where.

use candle_core::Shape;

/// Errors raised by the training engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Tensor substrate ===
    /// An error from candle (shape, dtype, device or kernel failure).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A fused CUDA kernel failed to load or launch (not "unsupported input": those fall
    /// back to the composite path).
    #[error("fused kernel: {0}")]
    Kernel(String),

    // === Parameters ===
    /// A module read a parameter whose compute copy does not exist (not materialized, or a
    /// sharding strategy released it and forgot to gather it back).
    #[error("parameter `{name}` is not materialized on a device: materialize the model (or gather the shard) before forward/backward")]
    NotMaterialized { name: String },

    /// A tensor given for a parameter has the wrong shape.
    #[error("parameter `{name}`: expected shape {expected:?}, got {got:?}")]
    ParamShape {
        name: String,
        expected: Shape,
        got: Shape,
    },

    /// A gradient was requested from a module whose saved state is missing.
    #[error("{module}: backward called without the state saved by forward")]
    MissingSaved { module: &'static str },

    // === Inputs ===
    /// A token id outside the embedding table.
    #[error("token id {id} is out of range for vocab_size {vocab_size}: the tokenizer and the model disagree; set model.vocab_size to at least {min_vocab}")]
    TokenOutOfRange {
        id: u32,
        vocab_size: usize,
        min_vocab: u64,
    },

    /// Shapes of an input batch that the model cannot take.
    #[error("bad input: {0}")]
    BadInput(String),

    /// Anything else, with a message that says what and why.
    #[error("{0}")]
    Msg(String),
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

/// `Result` with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Return early with an [`Error::Msg`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Msg(format!($($arg)*)))
    };
}
