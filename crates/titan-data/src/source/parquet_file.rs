//! Parquet files with a string column of documents (FineWeb's format: `text` column), read with
//! parquet's column reader (no Arrow), one row group at a time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::files::{list_files, utf8};
use super::{DocumentReader, DocumentSource};
use crate::error::{Error, Result};

/// Parquet files (a file or a folder of `*.parquet`) with a text column.
pub struct ParquetSource {
    description: String,
    files: Arc<Vec<ParquetFile>>,
    total: u64,
}

struct ParquetFile {
    path: PathBuf,
    column_index: usize,
    max_def_level: i16,
    /// Rows in each row group, from the footer.
    row_group_rows: Vec<u64>,
}

/// Rows decoded per `read_records` call.
const READ_BATCH: usize = 1024;

impl ParquetSource {
    /// Reads every file's footer: finds `text_column` and the row counts.
    pub fn open(dataset: &str, path: &Path, text_column: &str) -> Result<Self> {
        let paths = list_files(
            dataset,
            path,
            &|name| name.ends_with(".parquet"),
            "Parquet (*.parquet)",
        )?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            files.push(inspect(path, text_column)?);
        }
        let total = files.iter().flat_map(|f| f.row_group_rows.iter()).sum();
        if total == 0 {
            return Err(Error::EmptyDataset {
                dataset: dataset.to_string(),
                path: path.display().to_string(),
                hint: "the Parquet files hold no rows; add data or fix dataset_path".into(),
            });
        }
        Ok(ParquetSource {
            description: path.display().to_string(),
            files: Arc::new(files),
            total,
        })
    }
}

fn parquet_error(
    path: &Path,
    location: impl Into<String>,
    e: parquet::errors::ParquetError,
) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        location: location.into(),
        message: format!("{e} (is this a valid Parquet file?)"),
    }
}

fn open_reader(path: &Path) -> Result<SerializedFileReader<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    SerializedFileReader::new(file).map_err(|e| parquet_error(path, "footer", e))
}

fn inspect(path: PathBuf, text_column: &str) -> Result<ParquetFile> {
    let reader = open_reader(&path)?;
    let metadata = reader.metadata();
    let schema = metadata.file_metadata().schema_descr();
    let columns = schema.columns();
    let Some(column_index) = columns
        .iter()
        .position(|c| c.path().string() == text_column)
    else {
        let names: Vec<String> = columns.iter().map(|c| c.path().string()).collect();
        return Err(Error::MissingColumn {
            path,
            column: text_column.to_string(),
            found: format!("[{}]", names.join(", ")),
        });
    };
    let column = &columns[column_index];
    if column.physical_type() != PhysicalType::BYTE_ARRAY || column.max_rep_level() > 0 {
        return Err(Error::Parquet {
            path,
            location: format!("column '{text_column}'"),
            message: format!(
                "is {:?}{}, not a string column; set text_field to a string column",
                column.physical_type(),
                if column.max_rep_level() > 0 {
                    " (repeated)"
                } else {
                    ""
                }
            ),
        });
    }
    let max_def_level = column.max_def_level();
    let row_group_rows = metadata
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows().max(0) as u64)
        .collect();
    Ok(ParquetFile {
        path,
        column_index,
        max_def_level,
        row_group_rows,
    })
}

impl DocumentSource for ParquetSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn num_records(&self) -> u64 {
        self.total
    }

    fn open_at(&self, start: u64) -> Result<Box<dyn DocumentReader>> {
        let (mut file_index, mut row_group, mut skip) = (0, 0, start);
        'find: while let Some(file) = self.files.get(file_index) {
            while let Some(&rows) = file.row_group_rows.get(row_group) {
                if skip < rows {
                    break 'find;
                }
                skip -= rows;
                row_group += 1;
            }
            file_index += 1;
            row_group = 0;
        }
        Ok(Box::new(ParquetReader {
            files: Arc::clone(&self.files),
            file_index,
            row_group,
            skip: skip as usize,
            reader: None,
            texts: Vec::new(),
            next_text: 0,
            texts_origin: (0, 0),
        }))
    }
}

struct ParquetReader {
    files: Arc<Vec<ParquetFile>>,
    file_index: usize,
    /// Next row group to decode.
    row_group: usize,
    /// Rows to drop from the next decoded row group (resuming mid-group).
    skip: usize,
    reader: Option<SerializedFileReader<File>>,
    texts: Vec<Option<String>>,
    next_text: usize,
    /// File index and first row number of the decoded row group, for error messages.
    texts_origin: (usize, u64),
}

impl ParquetReader {
    /// Decodes the next row group's text column into `texts`; false when no file is left.
    fn load_next_row_group(&mut self) -> Result<bool> {
        loop {
            let Some(file) = self.files.get(self.file_index) else {
                return Ok(false);
            };
            if self.row_group >= file.row_group_rows.len() {
                self.file_index += 1;
                self.row_group = 0;
                self.reader = None;
                continue;
            }
            if self.reader.is_none() {
                self.reader = Some(open_reader(&file.path)?);
            }
            let Some(reader) = self.reader.as_ref() else {
                continue;
            };
            let first_row: u64 = file.row_group_rows[..self.row_group].iter().sum();
            let texts = read_row_group(reader, file, self.row_group, first_row)?;
            self.texts_origin = (self.file_index, first_row);
            self.row_group += 1;
            self.next_text = self.skip.min(texts.len());
            self.skip = 0;
            self.texts = texts;
            return Ok(true);
        }
    }
}

/// The text column of one row group; each entry is `Some(text)`, or `None` for a null (an error
/// reported when that row is reached, so skipped rows cannot fail a resume).
fn read_row_group(
    reader: &SerializedFileReader<File>,
    file: &ParquetFile,
    index: usize,
    first_row: u64,
) -> Result<Vec<Option<String>>> {
    let path = &file.path;
    let where_ = || format!("row group {index}");
    let row_group = reader
        .get_row_group(index)
        .map_err(|e| parquet_error(path, where_(), e))?;
    let column = row_group
        .get_column_reader(file.column_index)
        .map_err(|e| parquet_error(path, where_(), e))?;
    let ColumnReader::ByteArrayColumnReader(mut column) = column else {
        return Err(Error::Parquet {
            path: path.clone(),
            location: where_(),
            message:
                "the text column is not a byte-array column; set text_field to a string column"
                    .into(),
        });
    };
    let rows = file.row_group_rows[index] as usize;
    let mut texts = Vec::with_capacity(rows);
    let mut values: Vec<ByteArray> = Vec::new();
    let mut def_levels: Vec<i16> = Vec::new();
    let nullable = file.max_def_level > 0;
    while texts.len() < rows {
        values.clear();
        def_levels.clear();
        let defs = if nullable {
            Some(&mut def_levels)
        } else {
            None
        };
        let (records, _, _) = column
            .read_records(READ_BATCH, defs, None, &mut values)
            .map_err(|e| parquet_error(path, where_(), e))?;
        if records == 0 {
            break;
        }
        let mut values = values.drain(..);
        for r in 0..records {
            let row = first_row + (texts.len() as u64);
            let present = !nullable || def_levels.get(r).copied() == Some(file.max_def_level);
            if !present {
                texts.push(None);
                continue;
            }
            let Some(value) = values.next() else {
                return Err(Error::Parquet {
                    path: path.clone(),
                    location: format!("row {row}"),
                    message: "fewer values than rows in the text column (corrupt file?)".into(),
                });
            };
            let text = utf8(value.data().to_vec(), path, || {
                format!("row {row} of column '{}'", column_name(file, reader))
            })?;
            texts.push(Some(text));
        }
    }
    Ok(texts)
}

fn column_name(file: &ParquetFile, reader: &SerializedFileReader<File>) -> String {
    reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .column(file.column_index)
        .path()
        .string()
}

impl DocumentReader for ParquetReader {
    fn next_document(&mut self) -> Result<Option<String>> {
        while self.next_text >= self.texts.len() {
            if !self.load_next_row_group()? {
                return Ok(None);
            }
        }
        let index = self.next_text;
        self.next_text += 1;
        match self.texts[index].take() {
            Some(text) => Ok(Some(text)),
            None => {
                let (file_index, first_row) = self.texts_origin;
                let path = self
                    .files
                    .get(file_index)
                    .map(|f| f.path.clone())
                    .unwrap_or_default();
                Err(Error::Parquet {
                    path,
                    location: format!("row {}", first_row + index as u64),
                    message: "the text is null; drop null rows from the file".into(),
                })
            }
        }
    }
}
