//! Errors of the kernel launchers.

/// Why a fused kernel could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The CUDA driver refused a module load or a launch.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// The inputs are outside what the kernel supports (dtype, device, layout, size); the
    /// caller falls back to the plain path or reports it.
    #[error("{kernel}: {why}")]
    Unsupported { kernel: &'static str, why: String },
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn unsupported<T>(kernel: &'static str, why: impl Into<String>) -> Result<T> {
    Err(Error::Unsupported {
        kernel,
        why: why.into(),
    })
}
