//! A folder of plain-text files, one document per `.txt` file (searched recursively, in path
//! order).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::files::{list_files, utf8};
use super::{DocumentReader, DocumentSource};
use crate::error::{Error, Result};

/// One document per `.txt` file.
pub struct TextDirSource {
    description: String,
    files: Arc<Vec<PathBuf>>,
}

impl TextDirSource {
    /// Lists `path`'s `.txt` files (or takes `path` itself if it is a file).
    pub fn open(dataset: &str, path: &Path) -> Result<Self> {
        let files = list_files(
            dataset,
            path,
            &|name| name.ends_with(".txt"),
            "plain-text (*.txt)",
        )?;
        Ok(TextDirSource {
            description: path.display().to_string(),
            files: Arc::new(files),
        })
    }
}

impl DocumentSource for TextDirSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn num_records(&self) -> u64 {
        self.files.len() as u64
    }

    fn open_at(&self, start: u64) -> Result<Box<dyn DocumentReader>> {
        Ok(Box::new(TextDirReader {
            files: Arc::clone(&self.files),
            next: usize::try_from(start).unwrap_or(usize::MAX),
        }))
    }
}

struct TextDirReader {
    files: Arc<Vec<PathBuf>>,
    next: usize,
}

impl DocumentReader for TextDirReader {
    fn next_document(&mut self) -> Result<Option<String>> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
        utf8(bytes, path, || "the file".to_string()).map(Some)
    }
}
