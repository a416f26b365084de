//! Errors in describing or building a model.

/// Errors in model arguments or construction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flavor name no model defines.
    #[error("unknown {model} flavor `{flavor}`; known flavors: {known}")]
    UnknownFlavor {
        model: &'static str,
        flavor: String,
        known: String,
    },

    /// Arguments that do not describe a valid model.
    #[error("invalid {model} arguments: {why}")]
    InvalidArgs { model: &'static str, why: String },

    /// An engine error while building or running the model.
    #[error(transparent)]
    Core(#[from] titan_core::Error),

    /// A tensor error while building the model.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with the models' [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
