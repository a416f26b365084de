//! Datasets by name, as torchtitan's `DATASETS` table: each name maps to a factory that opens a
//! [`DocumentSource`] from an optional path override. Users register their own datasets at run
//! time instead of editing this crate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::embedded;
use crate::error::{Error, Result};
use crate::source::{DocumentSource, InMemorySource, JsonSource, ParquetSource, TextDirSource};

/// What a factory is asked to open.
#[derive(Debug, Clone, Copy)]
pub struct SourceRequest<'a> {
    /// The dataset name being opened (lowercase).
    pub dataset: &'a str,
    /// The user's `dataset_path`, if any.
    pub path: Option<&'a Path>,
    /// The JSON field / Parquet column holding the text.
    pub text_field: &'a str,
}

impl SourceRequest<'_> {
    /// The path override, or an error telling the user to set it.
    pub fn require_path(&self, hint: &str) -> Result<&Path> {
        self.path.ok_or_else(|| Error::PathRequired {
            dataset: self.dataset.to_string(),
            hint: hint.to_string(),
        })
    }
}

/// Opens a dataset's documents.
pub type SourceFactory =
    dyn Fn(&SourceRequest<'_>) -> Result<Arc<dyn DocumentSource>> + Send + Sync;

/// A resolved dataset.
pub enum Dataset {
    /// Text documents, tokenized and packed by the loader.
    Documents(Arc<dyn DocumentSource>),
    /// Pseudo-random token ids; no tokenizer, no I/O.
    Synthetic,
}

#[derive(Clone)]
enum Kind {
    Documents(Arc<SourceFactory>),
    Synthetic,
}

#[derive(Clone)]
struct Entry {
    kind: Kind,
    validation: Option<String>,
}

/// Dataset names and how to open them.
#[derive(Clone)]
pub struct DatasetRegistry {
    entries: BTreeMap<String, Entry>,
}

impl fmt::Debug for DatasetRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl Default for DatasetRegistry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl DatasetRegistry {
    /// A registry without any dataset.
    pub fn empty() -> Self {
        DatasetRegistry {
            entries: BTreeMap::new(),
        }
    }

    /// The built-in datasets:
    /// - `sotu` / `sotu_validation`: the embedded State of the Union corpus (or, with
    ///   `dataset_path`, the `train`/`validation` JSONL files of a rebuilt copy);
    /// - `c4` / `c4_validation`: a local copy of `allenai/c4` `en` (`c4-train.*.json.gz`,
    ///   `c4-validation.*.json.gz`; `dataset_path` required);
    /// - `c4_test`: torchtitan's test set at `tests/assets/c4_test` (JSON lines);
    /// - `json`: any JSON-lines files (`dataset_path` required);
    /// - `text`: a folder of `.txt` files, one document each (`dataset_path` required);
    /// - `parquet`, `fineweb`: Parquet files with a text column (`dataset_path` required);
    /// - `synthetic`: random tokens for benchmarks.
    pub fn with_builtins() -> Self {
        let mut registry = Self::empty();
        registry.register("sotu", |req| match req.path {
            None => Ok(Arc::new(embedded::sotu_train()?) as Arc<dyn DocumentSource>),
            Some(path) => json(req, path, Some("train")),
        });
        registry.register("sotu_validation", |req| match req.path {
            None => Ok(Arc::new(embedded::sotu_validation()?) as Arc<dyn DocumentSource>),
            Some(path) => json(req, path, Some("validation")),
        });
        registry.register("c4", |req| {
            let path = req.require_path("a folder with allenai/c4 en files c4-train.*.json.gz")?;
            json(req, path, Some("c4-train."))
        });
        registry.register("c4_validation", |req| {
            let path =
                req.require_path("a folder with allenai/c4 en files c4-validation.*.json.gz")?;
            json(req, path, Some("c4-validation."))
        });
        registry.register("c4_test", |req| {
            let path = req
                .path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("tests/assets/c4_test"));
            json(req, &path, None)
        });
        registry.register("json", |req| {
            let path =
                req.require_path("a JSON-lines file or folder (*.json, *.jsonl, optionally .gz)")?;
            json(req, path, None)
        });
        registry.register("text", |req| {
            let path = req.require_path("a folder of .txt files, one document per file")?;
            Ok(Arc::new(TextDirSource::open(req.dataset, path)?) as Arc<dyn DocumentSource>)
        });
        for name in ["parquet", "fineweb"] {
            registry.register(name, |req| {
                let path =
                    req.require_path("a Parquet file or folder of *.parquet with a text column")?;
                Ok(
                    Arc::new(ParquetSource::open(req.dataset, path, req.text_field)?)
                        as Arc<dyn DocumentSource>,
                )
            });
        }
        registry.entries.insert(
            "synthetic".into(),
            Entry {
                kind: Kind::Synthetic,
                validation: Some("synthetic".into()),
            },
        );
        registry.set_validation_unchecked("sotu", "sotu_validation");
        registry.set_validation_unchecked("c4", "c4_validation");
        registry
    }

    /// Adds (or replaces) dataset `name` (stored lowercase, as torchtitan lowercases names).
    pub fn register<F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        F: Fn(&SourceRequest<'_>) -> Result<Arc<dyn DocumentSource>> + Send + Sync + 'static,
    {
        let name = name.to_lowercase();
        let validation = self.entries.get(&name).and_then(|e| e.validation.clone());
        self.entries.insert(
            name,
            Entry {
                kind: Kind::Documents(Arc::new(factory)),
                validation,
            },
        );
        self
    }

    /// Adds dataset `name` holding these documents in memory.
    pub fn register_documents(&mut self, name: &str, documents: Vec<String>) -> &mut Self {
        let source = Arc::new(InMemorySource::new(name, documents));
        self.register(name, move |_| {
            Ok(Arc::clone(&source) as Arc<dyn DocumentSource>)
        })
    }

    /// Declares `validation` as the validation split of `train` (both must be registered).
    pub fn set_validation(&mut self, train: &str, validation: &str) -> Result<&mut Self> {
        for name in [train, validation] {
            if !self.entries.contains_key(&name.to_lowercase()) {
                return Err(self.unknown(name));
            }
        }
        self.set_validation_unchecked(train, validation);
        Ok(self)
    }

    fn set_validation_unchecked(&mut self, train: &str, validation: &str) {
        if let Some(entry) = self.entries.get_mut(&train.to_lowercase()) {
            entry.validation = Some(validation.to_lowercase());
        }
    }

    /// The validation split registered for `name`.
    pub fn validation_of(&self, name: &str) -> Option<&str> {
        self.entries
            .get(&name.to_lowercase())?
            .validation
            .as_deref()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Opens dataset `name`.
    pub fn open(&self, name: &str, path: Option<&Path>, text_field: &str) -> Result<Dataset> {
        let lower = name.to_lowercase();
        let entry = self.entries.get(&lower).ok_or_else(|| self.unknown(name))?;
        match &entry.kind {
            Kind::Synthetic => Ok(Dataset::Synthetic),
            Kind::Documents(factory) => {
                let request = SourceRequest {
                    dataset: &lower,
                    path,
                    text_field,
                };
                Ok(Dataset::Documents(factory(&request)?))
            }
        }
    }

    fn unknown(&self, name: &str) -> Error {
        Error::UnknownDataset {
            name: name.to_string(),
            known: self.names().join(", "),
        }
    }
}

fn json(
    req: &SourceRequest<'_>,
    path: &Path,
    name_filter: Option<&str>,
) -> Result<Arc<dyn DocumentSource>> {
    Ok(Arc::new(JsonSource::open(
        req.dataset,
        path,
        req.text_field,
        name_filter,
    )?))
}
