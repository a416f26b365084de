//! Finding a dataset's files and opening them, gzip or not.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// The files a dataset path stands for: the path itself if it is a file, else every file below
/// it (recursively) whose name `accept`s, sorted by path so every rank sees the same order.
pub(crate) fn list_files(
    dataset: &str,
    path: &Path,
    accept: &dyn Fn(&str) -> bool,
    wanted: &str,
) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        return Err(Error::MissingPath {
            dataset: dataset.to_string(),
            path: path.to_path_buf(),
            hint: format!("set dataset_path to a {wanted} file or a folder of them"),
        });
    }
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found = Vec::new();
    collect(path, accept, &mut found)?;
    found.sort();
    if found.is_empty() {
        return Err(Error::EmptyDataset {
            dataset: dataset.to_string(),
            path: path.display().to_string(),
            hint: format!(
                "the folder holds no {wanted} files; put them there or point dataset_path at them"
            ),
        });
    }
    Ok(found)
}

fn collect(dir: &Path, accept: &dyn Fn(&str) -> bool, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list the folder", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "list the folder", e))?;
        let path = entry.path();
        if path.is_dir() {
            collect(&path, accept, found)?;
        } else if accept(&entry.file_name().to_string_lossy()) {
            found.push(path);
        }
    }
    Ok(())
}

/// Opens `path` for buffered reading, decompressing it when it starts with the gzip magic.
pub(crate) fn open_text(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, "read", e))?;
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(file),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, file)))
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// `bytes` as text, or an error naming the file, the place and the first bad byte.
pub(crate) fn utf8(
    bytes: Vec<u8>,
    path: &Path,
    location: impl FnOnce() -> String,
) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
        path: path.display().to_string(),
        location: location(),
        offset: e.utf8_error().valid_up_to(),
    })
}
