//! Where documents come from. A [`DocumentSource`] is a numbered list of records (documents);
//! the loader reads them in order and checkpoints the record index, so any source that can
//! reopen at record `k` resumes exactly. Built-in sources: JSON lines, plain-text folders,
//! Parquet files and in-memory lists (the embedded corpus).

mod files;
mod json;
mod memory;
mod parquet_file;
mod text_dir;

pub(crate) use json::read_jsonl_bytes;
pub use json::JsonSource;
pub use memory::InMemorySource;
pub use parquet_file::ParquetSource;
pub use text_dir::TextDirSource;

use crate::error::Result;

/// A dataset as a numbered list of documents.
///
/// Implement this to plug your own data into the loader (see `docs/datasets.md`). Records are
/// numbered `0..num_records()`; data-parallel ranks each read a contiguous block of them, and a
/// checkpoint stores how far a rank got, so `open_at(k)` must yield record `k` first.
pub trait DocumentSource: Send + Sync {
    /// What this source reads (a path, a name), for logs and errors.
    fn describe(&self) -> String;
    /// Number of records. Known up front so ranks can split the list contiguously.
    fn num_records(&self) -> u64;
    /// A reader that yields records `start`, `start + 1`, ... in order.
    fn open_at(&self, start: u64) -> Result<Box<dyn DocumentReader>>;
}

/// Sequential reader over a [`DocumentSource`]'s records.
pub trait DocumentReader: Send {
    /// The next record's text; `None` after the last record.
    fn next_document(&mut self) -> Result<Option<String>>;
}
