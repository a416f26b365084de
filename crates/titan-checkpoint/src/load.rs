//! Reading a step: each requested region is assembled from whichever saved shards overlap
//! it, whatever the number of ranks that saved (resharding). Every shard read is checked
//! against its XXH64 first; a file whose size differs from the index is refused.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::host::{candle_dtype, tensor_from_le_bytes};
use crate::index::CheckpointIndex;
use crate::layout::read_index;
use crate::progress::ByteProgress;
use crate::region::copy_part;
use crate::request::TensorRequest;
use crate::safetensors_io::SafetensorsHeader;
use crate::xxh64::{from_hex, xxh64, Xxh64};
use crate::{keys, Error, Result};

/// What a load restored.
#[derive(Debug, Clone)]
pub struct LoadedState {
    /// The step the checkpoint was saved at (0 for seed checkpoints and HF imports).
    pub step: u64,
    /// The folder it was read from.
    pub source: PathBuf,
    /// Only the model was restored (seed checkpoint, model-only checkpoint or load).
    pub model_only: bool,
    /// Requested regions by request name, as host tensors in their saved dtype.
    pub tensors: HashMap<String, Tensor>,
    /// Blobs not excluded.
    pub blobs: BTreeMap<String, serde_json::Value>,
    /// Requested names not restored because they were excluded or the load was model-only:
    /// the trainer keeps their fresh values.
    pub skipped: Vec<String>,
}

/// Which top-level keys a load restores.
#[derive(Debug, Clone, Default)]
pub struct LoadFilter {
    /// Restore `model.*` only.
    pub model_only: bool,
    /// Top-level keys not restored.
    pub exclude: Vec<String>,
}

impl LoadFilter {
    fn keeps(&self, name: &str) -> bool {
        let key = keys::top_level(name);
        !(self.exclude.iter().any(|e| e == key) || (self.model_only && key != keys::MODEL))
    }

    /// Every excluded key must be a known key or present in the checkpoint (torchtitan raises
    /// on unknown keys: a typo would otherwise silently restore what it meant to skip).
    fn check_keys(&self, index: &CheckpointIndex) -> Result<()> {
        let present = index.top_level_keys();
        for key in &self.exclude {
            if !keys::KNOWN.contains(&key.as_str()) && !present.contains(key) {
                let mut known: Vec<String> = keys::KNOWN.iter().map(|k| k.to_string()).collect();
                known.extend(
                    present
                        .iter()
                        .filter(|k| !keys::KNOWN.contains(&k.as_str()))
                        .cloned(),
                );
                return Err(Error::UnknownExcludeKey {
                    key: key.clone(),
                    known,
                });
            }
        }
        Ok(())
    }
}

/// Load `requests` and the blobs from the complete step folder `dir`.
pub fn load_step_dir(
    dir: &Path,
    requests: &[TensorRequest],
    filter: &LoadFilter,
    interactive: bool,
) -> Result<LoadedState> {
    let index = read_index(dir)?;
    filter.check_keys(&index)?;
    // A model-only checkpoint can only restore the model, whatever was asked.
    let filter = LoadFilter {
        model_only: filter.model_only || index.model_only,
        exclude: filter.exclude.clone(),
    };
    let (wanted, skipped): (Vec<&TensorRequest>, Vec<&TensorRequest>) =
        requests.iter().partition(|r| filter.keeps(&r.name));
    let skipped: Vec<String> = skipped.into_iter().map(|r| r.name.clone()).collect();
    if !skipped.is_empty() {
        tracing::info!(
            "Loading {}: {} requested tensors not restored (model_only = {}, exclude_from_loading = {:?})",
            dir.display(),
            skipped.len(),
            filter.model_only,
            filter.exclude
        );
    }
    let tensors = read_regions(dir, &index, &wanted, interactive)?;
    let blobs = index
        .blobs
        .iter()
        .filter(|(k, _)| filter.keeps(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(LoadedState {
        step: index.step,
        source: dir.to_path_buf(),
        model_only: filter.model_only,
        tensors,
        blobs,
        skipped,
    })
}

/// An open shard file whose size and header were checked against the index.
struct OpenShardFile {
    file: File,
    header: SafetensorsHeader,
}

/// Reads regions of a checkpoint's tensors, keeping shard files open between reads.
pub(crate) struct ShardReader<'a> {
    dir: &'a Path,
    index: &'a CheckpointIndex,
    files: HashMap<String, OpenShardFile>,
}

impl<'a> ShardReader<'a> {
    pub fn new(dir: &'a Path, index: &'a CheckpointIndex) -> Self {
        Self {
            dir,
            index,
            files: HashMap::new(),
        }
    }

    /// Check a request against the index; returns the bytes its read will touch.
    pub fn plan(&self, req: &TensorRequest) -> Result<u64> {
        let entry = self
            .index
            .tensors
            .get(&req.name)
            .ok_or_else(|| Error::MissingTensor {
                name: req.name.clone(),
                dir: self.dir.to_path_buf(),
            })?;
        if entry.global_shape != req.global_shape {
            return Err(Error::ShapeMismatch {
                name: req.name.clone(),
                dir: self.dir.to_path_buf(),
                saved: entry.global_shape.clone(),
                expected: req.global_shape.clone(),
            });
        }
        if let Some(why) = req.region().out_of_bounds(&req.global_shape) {
            return Err(Error::Request {
                name: req.name.clone(),
                reason: why,
            });
        }
        let elem = self.index.dtype_of(&req.name, entry)?.size_in_bytes() as u64;
        let want = req.region();
        Ok(entry
            .shards
            .iter()
            .filter(|s| s.region().intersect(&want).is_some())
            .map(|s| s.shape.iter().product::<usize>() as u64 * elem)
            .sum())
    }

    /// Assemble the requested region (a host tensor in the saved dtype).
    pub fn read(&mut self, req: &TensorRequest, progress: &mut ByteProgress) -> Result<Tensor> {
        self.plan(req)?;
        let (dir, index) = (self.dir, self.index);
        let entry = &index.tensors[&req.name];
        let dtype = index.dtype_of(&req.name, entry)?;
        let elem = dtype.size_in_bytes();
        let want = req.region();
        let mut dst = Vec::new();
        let mut covered = 0usize;
        // Identical replicas saved by several ranks: read one.
        let mut done_regions = Vec::new();
        for shard in &entry.shards {
            let have = shard.region();
            let Some(part) = have.intersect(&want) else {
                continue;
            };
            if done_regions.contains(&have) {
                continue;
            }
            let open = match self.files.entry(shard.file.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(open_shard_file(dir, index, &shard.file)?)
                }
            };
            let path = dir.join(&shard.file);
            let mismatch = |reason: String| Error::ShardMismatch {
                file: path.clone(),
                tensor: req.name.clone(),
                reason,
            };
            let info = open.header.tensors.get(&req.name).ok_or_else(|| {
                mismatch("the index lists this shard but the file does not hold it".into())
            })?;
            if candle_dtype(info.dtype) != Some(dtype) || info.shape != shard.shape {
                return Err(mismatch(format!(
                    "file holds dtype {:?} shape {:?}, index says {} shape {:?}",
                    info.dtype, info.shape, entry.dtype, shard.shape
                )));
            }
            let bytes = open.header.read_tensor(&mut open.file, &req.name)?;
            let expected = from_hex(&shard.xxh64)
                .ok_or_else(|| mismatch(format!("bad checksum `{}` in the index", shard.xxh64)))?;
            let got = xxh64(&bytes);
            if got != expected {
                return Err(Error::TensorChecksum {
                    file: path,
                    tensor: req.name.clone(),
                    expected,
                    got,
                });
            }
            progress.advance(bytes.len() as u64);
            if have == want {
                // Same layout as saved: the shard is the answer, no copy.
                return tensor_from_le_bytes(&bytes, dtype, &req.shape);
            }
            if dst.is_empty() {
                dst = vec![0u8; want.volume() * elem];
            }
            copy_part(&bytes, &have, &mut dst, &want, &part, elem);
            covered += part.volume();
            done_regions.push(have);
        }
        if covered != want.volume() {
            return Err(Error::BadLayout {
                name: req.name.clone(),
                step: index.step,
                reason: format!(
                    "saved shards cover {covered} of the {} requested elements at offset {:?} shape {:?}",
                    want.volume(),
                    req.offset,
                    req.shape
                ),
            });
        }
        tensor_from_le_bytes(&dst, dtype, &req.shape)
    }
}

/// Assemble each request from the shards of `index` (files in `dir`).
pub(crate) fn read_regions(
    dir: &Path,
    index: &CheckpointIndex,
    requests: &[&TensorRequest],
    interactive: bool,
) -> Result<HashMap<String, Tensor>> {
    let mut reader = ShardReader::new(dir, index);
    // Check every request before reading anything: a wrong model fails fast.
    let mut total = 0u64;
    for req in requests {
        total += reader.plan(req)?;
    }
    let mut progress =
        ByteProgress::new(format!("loading step {}", index.step), total, interactive);
    let mut out = HashMap::with_capacity(requests.len());
    for req in requests {
        out.insert(req.name.clone(), reader.read(req, &mut progress)?);
    }
    progress.finish();
    Ok(out)
}

fn open_shard_file(dir: &Path, index: &CheckpointIndex, name: &str) -> Result<OpenShardFile> {
    let path = dir.join(name);
    let entry = index.files.get(name).ok_or_else(|| Error::NotACheckpoint {
        dir: dir.to_path_buf(),
        reason: format!("the index names shard file `{name}` without a file entry"),
    })?;
    let file = File::open(&path).map_err(Error::io("open", &path))?;
    let got = file.metadata().map_err(Error::io("stat", &path))?.len();
    if got != entry.bytes {
        return Err(Error::FileSize {
            file: path,
            expected: entry.bytes,
            got,
        });
    }
    let header = SafetensorsHeader::read(&path)?;
    Ok(OpenShardFile { file, header })
}

/// Hash every file of a complete step folder against the index (a full integrity check;
/// loads check the tensors they read).
pub fn verify_step_dir(dir: &Path, interactive: bool) -> Result<()> {
    use std::io::Read;
    let index = read_index(dir)?;
    let total = index.files.values().map(|f| f.bytes).sum();
    let mut progress =
        ByteProgress::new(format!("verifying step {}", index.step), total, interactive);
    for (name, entry) in &index.files {
        let path = dir.join(name);
        let mut file = File::open(&path).map_err(Error::io("open", &path))?;
        let got_len = file.metadata().map_err(Error::io("stat", &path))?.len();
        if got_len != entry.bytes {
            return Err(Error::FileSize {
                file: path,
                expected: entry.bytes,
                got: got_len,
            });
        }
        let mut h = Xxh64::new();
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = file.read(&mut buf).map_err(Error::io("read", &path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            progress.advance(n as u64);
        }
        let expected = from_hex(&entry.xxh64).unwrap_or(0);
        if h.digest() != expected {
            return Err(Error::FileChecksum {
                file: path,
                expected,
                got: h.digest(),
            });
        }
    }
    progress.finish();
    Ok(())
}
