//! The trainer's errors: each names what went wrong and what to do.

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Errors of the composed crates, boxed to keep `Result` small.
    #[error(transparent)]
    Config(Box<titan_config::Error>),
    #[error(transparent)]
    Core(Box<titan_core::Error>),
    #[error(transparent)]
    Model(Box<titan_models::Error>),
    #[error(transparent)]
    Data(Box<titan_data::Error>),
    #[error(transparent)]
    Optim(Box<titan_optim::Error>),
    #[error(transparent)]
    Metrics(Box<titan_metrics::Error>),
    #[error(transparent)]
    Checkpoint(Box<titan_checkpoint::Error>),
    #[error(transparent)]
    Candle(Box<candle_core::Error>),

    /// The loss or gradient norm stopped being a finite number.
    #[error("step {step}: {what} is {value} (not finite); training stopped before the optimizer step, so no checkpoint holds these weights. Lower optimizer.lr, raise lr_scheduler.warmup_steps or check the data")]
    NonFinite {
        step: u64,
        what: &'static str,
        value: f64,
    },

    /// A model name no train spec is registered for.
    #[error("model.name = {name:?} is not registered; registered models: {known}")]
    UnknownModel { name: String, known: String },

    /// The requested device cannot be used.
    #[error("{0}")]
    Device(String),

    /// Batch-size arithmetic that does not work out.
    #[error("{0}")]
    BatchSize(String),

    /// A finite dataset ran out before `training.steps`.
    #[error("the training dataset {dataset:?} ran out at step {step} of {steps}; use a larger dataset, fewer training.steps, or an infinite loader")]
    DataExhausted {
        dataset: String,
        step: u64,
        steps: u64,
    },

    /// Anything else.
    #[error("{0}")]
    Msg(String),
}

/// `Result` with the trainer's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<titan_parallel::Error> for Error {
    fn from(e: titan_parallel::Error) -> Self {
        Error::Msg(e.to_string())
    }
}

macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Config(titan_config::Error),
    Core(titan_core::Error),
    Model(titan_models::Error),
    Data(titan_data::Error),
    Optim(titan_optim::Error),
    Metrics(titan_metrics::Error),
    Checkpoint(titan_checkpoint::Error),
    Candle(candle_core::Error),
);
