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

/// A launcher's result with `Unsupported` turned into `Ok(None)` (logged at debug level), so
/// the caller falls back to its composite path; driver and candle failures stay errors.
pub fn supported<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::Unsupported { kernel, why }) => {
            tracing::debug!("fused {kernel} not used: {why}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn unsupported<T>(kernel: &'static str, why: impl Into<String>) -> Result<T> {
    Err(Error::Unsupported {
        kernel,
        why: why.into(),
    })
}
