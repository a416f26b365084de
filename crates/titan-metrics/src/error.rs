//! The metrics crate's error type: one enum whose messages say what went wrong and how to fix it.

use std::path::PathBuf;

/// Errors raised while computing or writing metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Files ===
    /// A metrics file or folder could not be created or written.
    #[error("could not {action} `{path}`: {source}; check that `metrics.dump_folder` points to a writable folder with free space")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // === Inputs ===
    /// A configuration value the logger cannot work with.
    #[error("metrics config `{key}` = {value} is invalid: {fix}")]
    InvalidConfig {
        key: &'static str,
        value: String,
        fix: &'static str,
    },

    /// A number handed to the logger that no metric can be computed from.
    #[error("metric input `{field}` = {value} is invalid: {fix}")]
    InvalidInput {
        field: &'static str,
        value: String,
        fix: &'static str,
    },

    // === Sinks ===
    /// A user-provided sink failed; the message is the sink's own.
    #[error("metrics sink `{sink}` failed: {message}")]
    Sink { sink: String, message: String },
}

impl Error {
    /// Wrap an I/O error with the action and the path it concerned.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with the metrics crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
