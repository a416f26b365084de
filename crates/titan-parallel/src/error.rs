//! The crate's error type: one enum whose messages say what failed, where, and what to do.

/// Errors raised by process groups, rendezvous, the launcher, meshes and data parallelism.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Collectives ===
    /// Some ranks never reached a collective within the timeout.
    #[error(
        "{op} on process group `{group}` timed out after {waited_s:.1}s waiting for rank(s) {missing:?}: \
         they crashed, hang, or took a different code path (check their logs); if they are only slow, \
         raise comm.init_timeout_seconds (startup) or comm.train_timeout_seconds (training)"
    )]
    Timeout {
        op: String,
        group: String,
        missing: Vec<usize>,
        waited_s: f64,
    },

    /// A rank of the group is gone.
    #[error("{op} on process group `{group}`: rank {rank} {how}; the job cannot continue: see rank {rank}'s log for the cause")]
    PeerDied {
        op: String,
        group: String,
        rank: usize,
        how: String,
    },

    /// Ranks called the same collective with different shapes, dtypes or operations.
    #[error(
        "{op} on process group `{group}`: ranks disagree: {detail}. Every rank must issue the same \
         collectives, with the same shapes and dtypes, in the same order"
    )]
    Mismatch {
        op: String,
        group: String,
        detail: String,
    },

    /// NCCL or the CUDA driver failed (feature `nccl`).
    #[error("{op} on process group `{group}` (NCCL): {detail}")]
    Nccl {
        op: String,
        group: String,
        detail: String,
    },

    /// A collective called with arguments it cannot take (checked locally, before any traffic).
    #[error("{op}: {detail}")]
    InvalidArgument { op: String, detail: String },

    // === Rendezvous and launch ===
    /// A rendezvous environment variable is missing or malformed.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: String,
        value: String,
        reason: String,
    },

    /// The TCP key/value store failed.
    #[error("TCP store at {addr}: {detail}")]
    Store { addr: String, detail: String },

    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The local launcher could not start or supervise its children.
    #[error("launcher: {0}")]
    Launch(String),

    // === Meshes and data parallelism ===
    /// Parallelism degrees that do not fit the world.
    #[error("{0}")]
    Config(String),

    /// A sharding strategy was used in a way it does not support.
    #[error("{0}")]
    Sharding(String),

    // === Substrate ===
    /// An error from the training engine.
    #[error(transparent)]
    Core(#[from] titan_core::Error),

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error from the optimizer crate (gradient norms).
    #[error(transparent)]
    Optim(#[from] titan_optim::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The ranks this error blames (missing or dead), if any.
    pub fn blamed_ranks(&self) -> Vec<usize> {
        match self {
            Error::Timeout { missing, .. } => missing.clone(),
            Error::PeerDied { rank, .. } => vec![*rank],
            _ => Vec::new(),
        }
    }
}

/// Block hooks return titan-core's error type; the message keeps the full text.
impl From<Error> for titan_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(inner) => inner,
            Error::Candle(inner) => titan_core::Error::Candle(inner),
            other => titan_core::Error::Msg(other.to_string()),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
