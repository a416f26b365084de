//! Documents held in memory: the embedded corpus, tests, and small custom datasets.

use std::sync::Arc;

use super::{DocumentReader, DocumentSource};
use crate::error::Result;

/// A fixed list of documents.
#[derive(Clone)]
pub struct InMemorySource {
    name: String,
    documents: Arc<Vec<String>>,
}

impl InMemorySource {
    /// `name` appears in logs and errors.
    pub fn new(name: impl Into<String>, documents: Vec<String>) -> Self {
        InMemorySource {
            name: name.into(),
            documents: Arc::new(documents),
        }
    }

    pub(crate) fn shared(name: impl Into<String>, documents: Arc<Vec<String>>) -> Self {
        InMemorySource {
            name: name.into(),
            documents,
        }
    }

    /// The documents.
    pub fn documents(&self) -> &[String] {
        &self.documents
    }
}

impl DocumentSource for InMemorySource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn num_records(&self) -> u64 {
        self.documents.len() as u64
    }

    fn open_at(&self, start: u64) -> Result<Box<dyn DocumentReader>> {
        Ok(Box::new(InMemoryReader {
            documents: Arc::clone(&self.documents),
            next: usize::try_from(start).unwrap_or(usize::MAX),
        }))
    }
}

struct InMemoryReader {
    documents: Arc<Vec<String>>,
    next: usize,
}

impl DocumentReader for InMemoryReader {
    fn next_document(&mut self) -> Result<Option<String>> {
        let document = self.documents.get(self.next).cloned();
        self.next = self.next.saturating_add(1);
        Ok(document)
    }
}
