//! The checkpoint error type: every variant names the file or folder, the tensor or key, and
//! what to do about it.

use std::path::PathBuf;

/// Errors raised while saving, loading or converting checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Tensor substrate ===
    /// An error from candle (device copy, cast, reshape).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error from the engine (a parameter refused a loaded tensor).
    #[error(transparent)]
    Core(#[from] titan_core::Error),

    // === Configuration and requests ===
    /// A `[checkpoint]` option has a value this crate refuses.
    #[error("checkpoint.{field} = {value}: {fix}")]
    Config {
        field: &'static str,
        value: String,
        fix: String,
    },

    /// A save or load request that cannot be honoured as given (bad shard geometry, duplicate
    /// names, rank outside the world).
    #[error("bad checkpoint request for `{name}`: {reason}")]
    Request { name: String, reason: String },

    /// A tensor dtype the on-disk format does not carry.
    #[error("tensor `{name}` has dtype {dtype:?}, which Titan checkpoints do not store: cast it to f32, bf16, f16, f64, u8, u32, i16, i32 or i64 first")]
    UnsupportedDType {
        name: String,
        dtype: candle_core::DType,
    },

    /// `exclude_from_loading` names a key that is neither a known state key nor present in
    /// the checkpoint.
    #[error("checkpoint.exclude_from_loading has unknown key `{key}`: known keys are {known:?}")]
    UnknownExcludeKey { key: String, known: Vec<String> },

    // === Files and folders ===
    /// A file-system operation failed.
    #[error("{op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file could not be read or written.
    #[error("JSON in `{path}`: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A folder that is not a complete Titan checkpoint was asked for.
    #[error("`{dir}` is not a complete Titan checkpoint: {reason}")]
    NotACheckpoint { dir: PathBuf, reason: String },

    /// `load_step` (or an explicit step) names a checkpoint that does not exist.
    #[error("no complete checkpoint for step {step} in `{folder}` (complete steps: {available:?}): set checkpoint.load_step to one of them, or -1 for the latest")]
    StepNotFound {
        step: u64,
        folder: PathBuf,
        available: Vec<u64>,
    },

    /// A safetensors file whose header cannot be parsed or does not fit the file.
    #[error("safetensors file `{path}`: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    // === Integrity ===
    /// A shard file is shorter or longer than the index recorded.
    #[error("`{file}` is {got} bytes but the checkpoint index recorded {expected}: the file was truncated or replaced; restore it, or load an older step")]
    FileSize {
        file: PathBuf,
        expected: u64,
        got: u64,
    },

    /// A tensor's bytes do not hash to the checksum recorded at save time.
    #[error("checksum mismatch for tensor `{tensor}` in `{file}` (xxh64 expected {expected:016x}, got {got:016x}): the file is corrupt; restore it, or load an older step")]
    TensorChecksum {
        file: PathBuf,
        tensor: String,
        expected: u64,
        got: u64,
    },

    /// A whole file does not hash to the checksum recorded at save time.
    #[error("checksum mismatch for `{file}` (xxh64 expected {expected:016x}, got {got:016x}): the file is corrupt; restore it, or load an older step")]
    FileChecksum {
        file: PathBuf,
        expected: u64,
        got: u64,
    },

    /// A tensor the caller needs is absent from the checkpoint.
    #[error("tensor `{name}` is not in checkpoint `{dir}`: the checkpoint was saved by a different model or with other state; add its top-level key to checkpoint.exclude_from_loading to start it fresh")]
    MissingTensor { name: String, dir: PathBuf },

    /// The saved global shape differs from the one the caller expects.
    #[error("tensor `{name}` in `{dir}` has global shape {saved:?}, but the model expects {expected:?}: the model configuration differs from the one that saved the checkpoint")]
    ShapeMismatch {
        name: String,
        dir: PathBuf,
        saved: Vec<usize>,
        expected: Vec<usize>,
    },

    /// The index and a shard file disagree about a tensor.
    #[error("tensor `{tensor}` in `{file}`: {reason}")]
    ShardMismatch {
        file: PathBuf,
        tensor: String,
        reason: String,
    },

    /// The saved shards of a tensor do not tile its global shape.
    #[error("tensor `{name}` at step {step}: {reason}")]
    BadLayout {
        name: String,
        step: u64,
        reason: String,
    },

    /// Two ranks saved different values under one blob name.
    #[error("blob `{name}` was saved by rank {first_rank} and rank {second_rank} with different values: give per-rank state per-rank names (e.g. `dataloader.rank3`)")]
    BlobConflict {
        name: String,
        first_rank: usize,
        second_rank: usize,
    },

    /// A rank's partial index disagrees with the others (another step, world size or kind).
    #[error("partial index `{path}`: {reason}; every rank must save the same step with the same world_size")]
    PartialIndex { path: PathBuf, reason: String },

    /// A rank's partial index is missing when rank 0 finalizes.
    #[error("rank {rank} wrote no partial index `{path}`: call Checkpointer::finalize only after every rank's save (and wait) returned Ok, behind a barrier")]
    MissingRank { rank: usize, path: PathBuf },

    // === Async ===
    /// The background writer thread panicked.
    #[error("the background checkpoint writer for step {step} panicked; the step was not saved")]
    WriterPanicked { step: u64 },

    // === Hugging Face interop ===
    /// A Hugging Face folder, config or tensor Titan cannot map.
    #[error("Hugging Face checkpoint `{path}`: {reason}")]
    Hf { path: PathBuf, reason: String },

    /// A tensor whose name or shape the state-dict adapter does not know.
    #[error("state-dict adapter: tensor `{name}`: {reason}")]
    Adapter { name: String, reason: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wrap an I/O error with the operation and the path it concerned.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// Wrap a JSON error with the path it concerned.
    pub(crate) fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> Error {
        let path = path.into();
        move |source| Error::Json { path, source }
    }
}
