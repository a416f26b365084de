//! Streaming safetensors files: write a header then tensors one by one (hashing as they go),
//! and read a header then only the byte ranges a load needs.
//!
//! The `safetensors` crate parses and serializes whole buffers; checkpoints are larger than
//! memory can hold twice, so files are written and read here piecewise, with the crate's
//! `TensorInfo`/`Dtype` types for the header. A file written here is an ordinary safetensors
//! file (the tests read it back with `SafeTensors::deserialize`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorInfo;
use safetensors::Dtype as StDtype;

use crate::xxh64::Xxh64;
use crate::{Error, Result};

/// Larger headers are refused (safetensors' own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Name, dtype and shape of one tensor of a file, known before any data is written.
#[derive(Debug, Clone)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
}

impl TensorHeader {
    /// Bytes of the tensor's data.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// What [`SafetensorsWriter::finish`] reports.
#[derive(Debug, Clone, Copy)]
pub struct WrittenFile {
    pub bytes: u64,
    pub xxh64: u64,
}

/// Writes one safetensors file: header first, then each tensor in header order.
pub struct SafetensorsWriter {
    path: PathBuf,
    out: BufWriter<File>,
    order: Vec<(String, usize)>,
    next: usize,
    file_hash: Xxh64,
    bytes: u64,
}

impl SafetensorsWriter {
    /// Create `path` and write the header for `tensors` (their data follows in this order).
    pub fn create(
        path: &Path,
        tensors: &[TensorHeader],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(metadata));
        }
        let mut start = 0usize;
        let mut order = Vec::with_capacity(tensors.len());
        for t in tensors {
            let len = t.byte_len();
            let info = TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (start, start + len),
            };
            let value = serde_json::to_value(&info).map_err(Error::json(path))?;
            if t.name == "__metadata__" || header.insert(t.name.clone(), value).is_some() {
                return Err(Error::Request {
                    name: t.name.clone(),
                    reason: format!(
                        "appears twice in `{}` (or is the reserved name __metadata__)",
                        path.display()
                    ),
                });
            }
            order.push((t.name.clone(), len));
            start += len;
        }
        let mut json = serde_json::to_vec(&header).map_err(Error::json(path))?;
        // Pad with spaces so tensor data starts 8-byte aligned, as the reference writer does.
        while (json.len() + 8) % 8 != 0 {
            json.push(b' ');
        }
        let file = File::create(path).map_err(Error::io("create", path))?;
        let mut w = Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(8 << 20, file),
            order,
            next: 0,
            file_hash: Xxh64::new(),
            bytes: 0,
        };
        w.put(&(json.len() as u64).to_le_bytes())?;
        w.put(&json)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(Error::io("write", &self.path))?;
        self.file_hash.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Write the next tensor's data; returns its XXH64.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<u64> {
        let Some((expected_name, len)) = self.order.get(self.next).cloned() else {
            return Err(Error::Request {
                name: name.into(),
                reason: format!("not in the header of `{}`", self.path.display()),
            });
        };
        if expected_name != name || len != data.len() {
            return Err(Error::Request {
                name: name.into(),
                reason: format!(
                    "written out of order or with the wrong size to `{}` (expected `{expected_name}` of {len} bytes, got {} bytes)",
                    self.path.display(),
                    data.len()
                ),
            });
        }
        self.next += 1;
        // Hash in large chunks alongside the write, so each byte is touched once more at most.
        let mut tensor_hash = Xxh64::new();
        for chunk in data.chunks(4 << 20) {
            tensor_hash.update(chunk);
            self.put(chunk)?;
        }
        Ok(tensor_hash.digest())
    }

    /// Flush and fsync; every tensor must have been written.
    pub fn finish(mut self) -> Result<WrittenFile> {
        if self.next != self.order.len() {
            return Err(Error::Request {
                name: self.order[self.next].0.clone(),
                reason: format!("never written to `{}`", self.path.display()),
            });
        }
        self.out.flush().map_err(Error::io("write", &self.path))?;
        let file = self.out.into_inner().map_err(|e| Error::Io {
            op: "write",
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(Error::io("fsync", &self.path))?;
        Ok(WrittenFile {
            bytes: self.bytes,
            xxh64: self.file_hash.digest(),
        })
    }
}

/// A parsed safetensors header and where each tensor's bytes lie in the file.
#[derive(Debug)]
pub struct SafetensorsHeader {
    pub path: PathBuf,
    pub file_len: u64,
    /// Absolute file offset of the data section.
    pub data_start: u64,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsHeader {
    /// Read and check the header of `path` (tensors must lie inside the file).
    pub fn read(path: &Path) -> Result<Self> {
        let mut f = File::open(path).map_err(Error::io("open", path))?;
        let file_len = f.metadata().map_err(Error::io("stat", path))?.len();
        let bad = |reason: String| Error::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        if file_len < 8 {
            return Err(bad(format!(
                "{file_len} bytes is too short for a header: the file is truncated"
            )));
        }
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(Error::io("read", path))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES || 8 + n > file_len {
            return Err(bad(format!("header length {n} does not fit the {file_len}-byte file: the file is truncated or not safetensors")));
        }
        let mut json = vec![0u8; n as usize];
        f.read_exact(&mut json).map_err(Error::io("read", path))?;
        let map: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&json).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        let data_start = 8 + n;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in map {
            if name == "__metadata__" {
                metadata =
                    serde_json::from_value(value).map_err(|e| bad(format!("__metadata__: {e}")))?;
                continue;
            }
            let info: TensorInfo = serde_json::from_value(value)
                .map_err(|e| bad(format!("tensor `{name}` header: {e}")))?;
            let (s, e) = info.data_offsets;
            let expected = info.shape.iter().product::<usize>() * info.dtype.bitsize() / 8;
            if e < s || e - s != expected {
                return Err(bad(format!(
                    "tensor `{name}`: data_offsets {s}..{e} do not match dtype {:?} and shape {:?}",
                    info.dtype, info.shape
                )));
            }
            if data_start + e as u64 > file_len {
                return Err(bad(format!(
                    "tensor `{name}` ends at byte {} but the file has {file_len}: the file is truncated",
                    data_start + e as u64
                )));
            }
            tensors.insert(name, info);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file_len,
            data_start,
            tensors,
            metadata,
        })
    }

    /// Read one tensor's raw bytes from `file` (an open handle on this header's path).
    pub fn read_tensor(&self, file: &mut File, name: &str) -> Result<Vec<u8>> {
        let info = self.tensors.get(name).ok_or_else(|| Error::Safetensors {
            path: self.path.clone(),
            reason: format!("no tensor `{name}` in this file"),
        })?;
        let (s, e) = info.data_offsets;
        let mut buf = vec![0u8; e - s];
        file.seek(SeekFrom::Start(self.data_start + s as u64))
            .map_err(Error::io("seek", &self.path))?;
        file.read_exact(&mut buf)
            .map_err(Error::io("read", &self.path))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xxh64::xxh64;

    #[test]
    fn written_files_are_plain_safetensors() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("titan-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::io("mkdir", &dir))?;
        let path = dir.join("a.safetensors");
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = vec![7, 0, 8, 0, 9, 0];
        let headers = [
            TensorHeader {
                name: "w.a".into(),
                dtype: StDtype::F32,
                shape: vec![2, 3],
            },
            TensorHeader {
                name: "b".into(),
                dtype: StDtype::BF16,
                shape: vec![3],
            },
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut w = SafetensorsWriter::create(&path, &headers, &meta)?;
        assert!(w.write_tensor("b", &b).is_err(), "out of order must fail");
        assert_eq!(w.write_tensor("w.a", &a)?, xxh64(&a));
        w.write_tensor("b", &b)?;
        let written = w.finish()?;

        let raw = std::fs::read(&path).map_err(Error::io("read", &path))?;
        assert_eq!(written.bytes, raw.len() as u64);
        assert_eq!(written.xxh64, xxh64(&raw));
        let st = safetensors::SafeTensors::deserialize(&raw).map_err(|e| Error::Safetensors {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        assert_eq!(
            st.tensor("w.a").map(|t| t.data().to_vec()).ok(),
            Some(a.clone())
        );
        assert_eq!(
            st.tensor("b").map(|t| t.shape().to_vec()).ok(),
            Some(vec![3])
        );

        let h = SafetensorsHeader::read(&path)?;
        assert_eq!(h.data_start % 8, 0);
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        let mut f = File::open(&path).map_err(Error::io("open", &path))?;
        assert_eq!(h.read_tensor(&mut f, "b")?, b);
        assert_eq!(h.read_tensor(&mut f, "w.a")?, a);

        // Truncation is caught at the header, naming the tensor that no longer fits.
        std::fs::write(&path, &raw[..raw.len() - 3]).map_err(Error::io("write", &path))?;
        let err = SafetensorsHeader::read(&path).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("`b`"), "{err}");
        std::fs::remove_dir_all(&dir).map_err(Error::io("rm", &dir))?;
        Ok(())
    }
}
