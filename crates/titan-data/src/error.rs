//! The crate's one error type. Every message names what is wrong (file, line, row, key, value)
//! and what to do about it, because data errors reach users long after they wrote the config.

use std::path::PathBuf;

/// Everything that can go wrong while loading tokenizers, reading datasets or packing batches.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Files ===
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("dataset '{dataset}': path {path} does not exist; {hint}")]
    MissingPath {
        dataset: String,
        path: PathBuf,
        hint: String,
    },
    #[error("dataset '{dataset}' needs a local copy: set dataset_path ({hint})")]
    PathRequired { dataset: String, hint: String },

    // === Records ===
    #[error("{path}: line {line} is not valid JSON ({message}); fix or delete that line")]
    InvalidJson {
        path: String,
        line: u64,
        message: String,
    },
    #[error(
        "{path}: {location} is not valid UTF-8 (bad byte at offset {offset}); \
         re-encode the file as UTF-8"
    )]
    NotUtf8 {
        path: String,
        location: String,
        offset: usize,
    },
    #[error(
        "{path}: {location} has no string field '{field}' (fields: {found}); \
         set text_field to the field that holds the document text"
    )]
    MissingTextField {
        path: String,
        location: String,
        field: String,
        found: String,
    },
    #[error(
        "{path}: Parquet file has no column '{column}' (columns: {found}); \
         set text_field to the column that holds the document text"
    )]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{path}: {location}: {message}")]
    Parquet {
        path: PathBuf,
        location: String,
        message: String,
    },
    #[error(
        "dataset source {source_name} ended at record {record} but reported {records} records; \
         its DocumentSource::num_records must count every record"
    )]
    SourceEnded {
        source_name: String,
        record: u64,
        records: u64,
    },
    #[error("dataset '{dataset}' at {path} is empty: {hint}")]
    EmptyDataset {
        dataset: String,
        path: String,
        hint: String,
    },

    // === Registry and configuration ===
    #[error("dataset '{name}' is not registered; known datasets: {known}. Register it with DatasetRegistry::register or pick a known one")]
    UnknownDataset { name: String, known: String },
    #[error("dataset '{dataset}' has no validation split; set the validation dataset explicitly")]
    NoValidationSplit { dataset: String },
    #[error("invalid data loader setting {key} = {value}: {hint}")]
    Config {
        key: &'static str,
        value: String,
        hint: String,
    },
    #[error(
        "dataset '{dataset}' has {records} records, so data-parallel rank {rank} of {world_size} \
         gets none; use fewer data-parallel ranks or a larger dataset"
    )]
    EmptyShard {
        dataset: String,
        records: u64,
        rank: usize,
        world_size: usize,
    },

    // === Tokenizer ===
    #[error("tokenizer {origin}: {message}")]
    Tokenizer { origin: String, message: String },
    #[error("tokenizer {origin} has no {which} token: {hint}")]
    MissingSpecialToken {
        origin: String,
        which: &'static str,
        hint: String,
    },
    #[error(
        "token id {id}{context} is >= the model's vocab_size {vocab_size}; \
         use a model whose vocab_size covers the tokenizer (or a tokenizer that fits the model)"
    )]
    TokenOutOfVocab {
        id: u32,
        vocab_size: usize,
        context: String,
    },

    // === Loader state ===
    #[error(
        "data loader state was saved with {key} = {saved} but this loader has {key} = {current}; \
         resume with the same {key} (resharding a data loader is not supported)"
    )]
    StateMismatch {
        key: &'static str,
        saved: String,
        current: String,
    },
    #[error("data loader state is not valid JSON ({0}); was it written by LoaderState::to_json?")]
    StateFormat(#[source] serde_json::Error),
    #[error("the data loader stopped after an earlier error: {0}; rebuild it (or load a saved state) to continue")]
    LoaderFailed(String),

    // === Corpus building ===
    #[error("building the corpus: {0}")]
    CorpusBuild(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
