//! JSON datasets: JSON lines (C4's `c4-train.*.json.gz`, torchtitan's `c4_test/data.json`), one
//! record per line, optionally gzip-compressed; or a file holding one JSON array of records.
//! Each record is an object whose `text_field` (usually `"text"`) holds the document.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::files::{list_files, open_text, utf8};
use super::{DocumentReader, DocumentSource};
use crate::error::{Error, Result};

/// Local JSON-lines (or JSON-array) files with a text field.
pub struct JsonSource {
    description: String,
    files: Arc<Vec<JsonFile>>,
    text_field: Arc<str>,
    total: u64,
}

struct JsonFile {
    path: PathBuf,
    records: u64,
    /// Texts of a JSON-array file, parsed up front (array files are small test sets).
    array_texts: Option<Vec<String>>,
}

fn is_json_name(name: &str) -> bool {
    [".json", ".jsonl", ".json.gz", ".jsonl.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

impl JsonSource {
    /// Opens `path` (a file, or a folder searched recursively for `*.json[l][.gz]`); with
    /// `name_filter`, a folder's files must also contain that string in their name (e.g.
    /// `"c4-train."` picks C4's training files out of its `en/` folder). Counts the records of
    /// every file now so ranks can split them.
    pub fn open(
        dataset: &str,
        path: &Path,
        text_field: &str,
        name_filter: Option<&str>,
    ) -> Result<Self> {
        let accept =
            |name: &str| is_json_name(name) && name_filter.is_none_or(|f| name.contains(f));
        let wanted = match name_filter {
            Some(filter) => format!("JSON-lines (*{filter}*.json[l][.gz])"),
            None => "JSON-lines (*.json, *.jsonl, optionally .gz)".to_string(),
        };
        let paths = list_files(dataset, path, &accept, &wanted)?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            files.push(scan_file(path, text_field)?);
        }
        let total = files.iter().map(|f| f.records).sum();
        if total == 0 {
            return Err(Error::EmptyDataset {
                dataset: dataset.to_string(),
                path: path.display().to_string(),
                hint: "no JSON records found (blank lines are skipped); add records or fix dataset_path".into(),
            });
        }
        Ok(JsonSource {
            description: path.display().to_string(),
            files: Arc::new(files),
            text_field: text_field.into(),
            total,
        })
    }
}

impl DocumentSource for JsonSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn num_records(&self) -> u64 {
        self.total
    }

    fn open_at(&self, start: u64) -> Result<Box<dyn DocumentReader>> {
        let mut file_index = 0;
        let mut skip = start;
        while file_index < self.files.len() && skip >= self.files[file_index].records {
            skip -= self.files[file_index].records;
            file_index += 1;
        }
        Ok(Box::new(JsonReader {
            files: Arc::clone(&self.files),
            text_field: Arc::clone(&self.text_field),
            file_index,
            skip,
            lines: None,
            line_number: 0,
            array_index: 0,
            line: Vec::new(),
        }))
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Counts a file's records (non-blank lines) without parsing them; a file whose first non-blank
/// byte is `[` is a JSON array and is parsed whole.
fn scan_file(path: PathBuf, text_field: &str) -> Result<JsonFile> {
    let mut reader = open_text(&path)?;
    let mut line = Vec::new();
    let mut records = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(&path, "read", e))?;
        if n == 0 {
            break;
        }
        if is_blank(&line) {
            continue;
        }
        if records == 0 && line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            let texts = parse_array_file(&path, text_field)?;
            return Ok(JsonFile {
                path,
                records: texts.len() as u64,
                array_texts: Some(texts),
            });
        }
        records += 1;
    }
    Ok(JsonFile {
        path,
        records,
        array_texts: None,
    })
}

fn parse_array_file(path: &Path, text_field: &str) -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    open_text(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, "read", e))?;
    let text = utf8(bytes, path, || "the file".to_string())?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::InvalidJson {
        path: path.display().to_string(),
        line: e.line() as u64,
        message: e.to_string(),
    })?;
    match value {
        Value::Array(records) => records
            .into_iter()
            .enumerate()
            .map(|(i, record)| text_of(record, text_field, path, || format!("array element {i}")))
            .collect(),
        other => Err(Error::InvalidJson {
            path: path.display().to_string(),
            line: 1,
            message: format!("expected a JSON array, found {}", kind(&other)),
        }),
    }
}

fn text_of(
    record: Value,
    field: &str,
    path: &Path,
    location: impl Fn() -> String,
) -> Result<String> {
    let found = match record {
        Value::Object(mut map) => match map.remove(field) {
            Some(Value::String(text)) => return Ok(text),
            Some(other) => format!("'{field}' is {} instead of a string", kind(&other)),
            None => {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                format!("[{}]", keys.join(", "))
            }
        },
        other => format!("none: the record is {}, not an object", kind(&other)),
    };
    Err(Error::MissingTextField {
        path: path.display().to_string(),
        location: location(),
        field: field.to_string(),
        found,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct JsonReader {
    files: Arc<Vec<JsonFile>>,
    text_field: Arc<str>,
    file_index: usize,
    /// Records still to pass over in the current file (resuming mid-file).
    skip: u64,
    lines: Option<Box<dyn BufRead + Send>>,
    line_number: u64,
    array_index: usize,
    line: Vec<u8>,
}

impl JsonReader {
    fn advance_file(&mut self) {
        self.file_index += 1;
        self.skip = 0;
        self.lines = None;
        self.line_number = 0;
        self.array_index = 0;
    }
}

impl DocumentReader for JsonReader {
    fn next_document(&mut self) -> Result<Option<String>> {
        loop {
            let Some(file) = self.files.get(self.file_index) else {
                return Ok(None);
            };
            if let Some(texts) = &file.array_texts {
                let index = self.array_index + self.skip as usize;
                self.skip = 0;
                match texts.get(index) {
                    Some(text) => {
                        self.array_index = index + 1;
                        return Ok(Some(text.clone()));
                    }
                    None => {
                        self.advance_file();
                        continue;
                    }
                }
            }
            if self.lines.is_none() {
                self.lines = Some(open_text(&file.path)?);
            }
            let Some(lines) = self.lines.as_mut() else {
                continue;
            };
            self.line.clear();
            let n = lines
                .read_until(b'\n', &mut self.line)
                .map_err(|e| Error::io(&file.path, "read", e))?;
            if n == 0 {
                self.advance_file();
                continue;
            }
            self.line_number += 1;
            if is_blank(&self.line) {
                continue;
            }
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            let line_number = self.line_number;
            let text = utf8(std::mem::take(&mut self.line), &file.path, || {
                format!("line {line_number}")
            })?;
            let record: Value = serde_json::from_str(&text).map_err(|e| Error::InvalidJson {
                path: file.path.display().to_string(),
                line: line_number,
                message: e.to_string(),
            })?;
            return text_of(record, &self.text_field, &file.path, || {
                format!("the record on line {line_number}")
            })
            .map(Some);
        }
    }
}

/// Texts of a JSON-lines buffer (gzip-compressed or not); `origin` names it in errors.
pub(crate) fn read_jsonl_bytes(
    bytes: &[u8],
    origin: &str,
    text_field: &str,
) -> Result<Vec<String>> {
    let path = Path::new(origin);
    let mut raw = Vec::new();
    let plain: &[u8] = if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(|e| Error::io(path, "decompress", e))?;
        &raw
    } else {
        bytes
    };
    let mut texts = Vec::new();
    for (index, line) in plain.split(|&b| b == b'\n').enumerate() {
        if is_blank(line) {
            continue;
        }
        let line_number = index as u64 + 1;
        let text = std::str::from_utf8(line).map_err(|e| Error::NotUtf8 {
            path: origin.to_string(),
            location: format!("line {line_number}"),
            offset: e.valid_up_to(),
        })?;
        let record: Value = serde_json::from_str(text).map_err(|e| Error::InvalidJson {
            path: origin.to_string(),
            line: line_number,
            message: e.to_string(),
        })?;
        texts.push(text_of(record, text_field, path, || {
            format!("the record on line {line_number}")
        })?);
    }
    Ok(texts)
}
