//! The checkpoint index (`index.json`): every tensor's global shape and dtype, where each of
//! its shards lies (rank, file, offset, shape, checksum), every file's size and checksum, and
//! the JSON blobs. Each rank writes a partial index; rank 0 merges them at finalize.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::host::parse_dtype_name;
use crate::region::Region;
use crate::{Error, Result};

/// `format` field of every index.
pub const FORMAT_NAME: &str = "titan-checkpoint";
/// `version` field of indexes this crate writes (and the only one it reads).
pub const FORMAT_VERSION: u32 = 1;
/// `checksum` field: the algorithm of every `xxh64` field.
pub const CHECKSUM_NAME: &str = "xxh64";

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub rank: usize,
    pub bytes: u64,
    /// XXH64 of the whole file, 16 hex digits.
    pub xxh64: String,
}

/// One saved shard of a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub rank: usize,
    /// File name inside the step folder; the tensor is stored there under its full name.
    pub file: String,
    /// Start of the shard in each dimension of the global tensor.
    pub offset: Vec<usize>,
    /// Shard extent in each dimension.
    pub shape: Vec<usize>,
    /// XXH64 of the shard's bytes.
    pub xxh64: String,
}

impl ShardEntry {
    pub fn region(&self) -> Region {
        Region::new(self.offset.clone(), self.shape.clone())
    }
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// safetensors spelling: `F32`, `BF16`, ...
    pub dtype: String,
    pub global_shape: Vec<usize>,
    pub shards: Vec<ShardEntry>,
}

/// `index.json` of a step folder, or a rank's partial index (`rank` set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointIndex {
    pub format: String,
    pub version: u32,
    pub step: u64,
    pub world_size: usize,
    /// Set in a rank's partial index only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Only `model.*` tensors were saved (seed checkpoint, or last save with
    /// `last_save_model_only`).
    pub model_only: bool,
    pub checksum: String,
    pub files: BTreeMap<String, FileEntry>,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub blobs: BTreeMap<String, serde_json::Value>,
}

impl CheckpointIndex {
    /// An empty index for `step`.
    pub fn new(step: u64, world_size: usize, rank: Option<usize>, model_only: bool) -> Self {
        Self {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            step,
            world_size,
            rank,
            model_only,
            checksum: CHECKSUM_NAME.into(),
            files: BTreeMap::new(),
            tensors: BTreeMap::new(),
            blobs: BTreeMap::new(),
        }
    }

    /// Parse an index, refusing other formats and versions.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self> {
        let index: CheckpointIndex = serde_json::from_slice(bytes).map_err(Error::json(path))?;
        if index.format != FORMAT_NAME
            || index.version != FORMAT_VERSION
            || index.checksum != CHECKSUM_NAME
        {
            return Err(Error::NotACheckpoint {
                dir: path.to_path_buf(),
                reason: format!(
                    "index says format `{}` version {} checksum `{}`; this build reads `{FORMAT_NAME}` version {FORMAT_VERSION} with `{CHECKSUM_NAME}`",
                    index.format, index.version, index.checksum
                ),
            });
        }
        Ok(index)
    }

    /// The dtype of a tensor entry.
    pub fn dtype_of(&self, name: &str, entry: &TensorEntry) -> Result<DType> {
        parse_dtype_name(&entry.dtype).ok_or_else(|| Error::BadLayout {
            name: name.into(),
            step: self.step,
            reason: format!("dtype `{}` is not one Titan reads", entry.dtype),
        })
    }

    /// The top-level keys present: `model`, `optimizer`, ... and blob keys.
    pub fn top_level_keys(&self) -> BTreeSet<String> {
        self.tensors
            .keys()
            .chain(self.blobs.keys())
            .map(|n| crate::keys::top_level(n).to_string())
            .collect()
    }

    /// Merge the partial indexes of ranks `0..world_size` (in rank order) into one.
    pub fn merge(
        step: u64,
        partials: Vec<(std::path::PathBuf, CheckpointIndex)>,
    ) -> Result<CheckpointIndex> {
        let Some((_, first)) = partials.first() else {
            return Err(Error::BadLayout {
                name: "<all>".into(),
                step,
                reason: "no partial index to merge".into(),
            });
        };
        let world_size = first.world_size;
        let model_only = first.model_only;
        let mut merged = CheckpointIndex::new(step, world_size, None, model_only);
        let mut blob_rank: BTreeMap<String, usize> = BTreeMap::new();
        for (expected_rank, (path, p)) in partials.into_iter().enumerate() {
            let bad = |reason: String| Error::PartialIndex {
                path: path.clone(),
                reason,
            };
            if p.step != step {
                return Err(bad(format!("it is for step {}, not {step}", p.step)));
            }
            if p.world_size != world_size {
                return Err(bad(format!(
                    "world_size {} differs from rank 0's {world_size}",
                    p.world_size
                )));
            }
            if p.rank != Some(expected_rank) {
                return Err(bad(format!(
                    "it says rank {:?}, expected {expected_rank}",
                    p.rank
                )));
            }
            if p.model_only != model_only {
                return Err(bad(format!(
                    "model_only = {} differs from rank 0's {model_only}",
                    p.model_only
                )));
            }
            for (file, entry) in p.files {
                if merged.files.insert(file.clone(), entry).is_some() {
                    return Err(bad(format!(
                        "file `{file}` is also claimed by another rank"
                    )));
                }
            }
            for (name, entry) in p.tensors {
                match merged.tensors.get_mut(&name) {
                    None => {
                        merged.tensors.insert(name, entry);
                    }
                    Some(have) => {
                        if have.dtype != entry.dtype || have.global_shape != entry.global_shape {
                            return Err(Error::BadLayout {
                                name,
                                step,
                                reason: format!(
                                    "rank {expected_rank} saved dtype {} global shape {:?}, an earlier rank dtype {} global shape {:?}",
                                    entry.dtype, entry.global_shape, have.dtype, have.global_shape
                                ),
                            });
                        }
                        have.shards.extend(entry.shards);
                    }
                }
            }
            for (name, value) in p.blobs {
                match merged.blobs.get(&name) {
                    None => {
                        blob_rank.insert(name.clone(), expected_rank);
                        merged.blobs.insert(name, value);
                    }
                    Some(have) if *have == value => {}
                    Some(_) => {
                        return Err(Error::BlobConflict {
                            name: name.clone(),
                            first_rank: blob_rank.get(&name).copied().unwrap_or(0),
                            second_rank: expected_rank,
                        })
                    }
                }
            }
        }
        merged.validate_layout()?;
        Ok(merged)
    }

    /// Every tensor's shards lie inside its global shape, name a known file, and tile it
    /// exactly (identical shards saved by several ranks count once; partial overlaps and gaps
    /// are errors).
    pub fn validate_layout(&self) -> Result<()> {
        for (name, entry) in &self.tensors {
            let bad = |reason: String| Error::BadLayout {
                name: name.clone(),
                step: self.step,
                reason,
            };
            self.dtype_of(name, entry)?;
            for s in &entry.shards {
                if let Some(why) = s.region().out_of_bounds(&entry.global_shape) {
                    return Err(bad(format!("shard of rank {}: {why}", s.rank)));
                }
                if !self.files.contains_key(&s.file) {
                    return Err(bad(format!(
                        "shard of rank {} names unknown file `{}`",
                        s.rank, s.file
                    )));
                }
            }
            let mut regions: Vec<Region> = entry.shards.iter().map(ShardEntry::region).collect();
            regions.sort_by(|a, b| a.offset.cmp(&b.offset).then(a.shape.cmp(&b.shape)));
            regions.dedup();
            // Sweep along dim 0: only shards starting before this one ends can overlap it.
            for i in 0..regions.len() {
                for j in i + 1..regions.len() {
                    if !regions[i].offset.is_empty()
                        && regions[j].offset[0] >= regions[i].offset[0] + regions[i].shape[0]
                    {
                        break;
                    }
                    if let Some(common) = regions[i].intersect(&regions[j]) {
                        if common.volume() > 0 {
                            return Err(bad(format!(
                                "shards {:?}+{:?} and {:?}+{:?} overlap without being identical",
                                regions[i].offset,
                                regions[i].shape,
                                regions[j].offset,
                                regions[j].shape
                            )));
                        }
                    }
                }
            }
            let covered: usize = regions.iter().map(Region::volume).sum();
            let global: usize = entry.global_shape.iter().product();
            if covered != global {
                return Err(bad(format!(
                    "shards cover {covered} of {global} elements of global shape {:?}: some rank did not save its part",
                    entry.global_shape
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(
        rank: usize,
        world: usize,
        rows: (usize, usize),
    ) -> (std::path::PathBuf, CheckpointIndex) {
        let mut p = CheckpointIndex::new(3, world, Some(rank), false);
        let file = format!("rank-{rank}.safetensors");
        p.files.insert(
            file.clone(),
            FileEntry {
                rank,
                bytes: 1,
                xxh64: "0".repeat(16),
            },
        );
        p.tensors.insert(
            "model.w".into(),
            TensorEntry {
                dtype: "F32".into(),
                global_shape: vec![5, 2],
                shards: vec![ShardEntry {
                    rank,
                    file,
                    offset: vec![rows.0, 0],
                    shape: vec![rows.1 - rows.0, 2],
                    xxh64: "0".repeat(16),
                }],
            },
        );
        p.blobs
            .insert("train_state".into(), serde_json::json!({"step": 3}));
        (format!("rank-{rank}.index.json").into(), p)
    }

    #[test]
    fn merges_tilings_and_rejects_gaps_overlaps_and_conflicts() {
        let merged =
            CheckpointIndex::merge(3, vec![partial(0, 2, (0, 3)), partial(1, 2, (3, 5))]).unwrap();
        assert_eq!(merged.tensors["model.w"].shards.len(), 2);
        assert_eq!(merged.rank, None);

        let gap = CheckpointIndex::merge(3, vec![partial(0, 2, (0, 2)), partial(1, 2, (3, 5))])
            .unwrap_err();
        assert!(gap.to_string().contains("cover 8 of 10"), "{gap}");
        let overlap = CheckpointIndex::merge(3, vec![partial(0, 2, (0, 4)), partial(1, 2, (3, 5))])
            .unwrap_err();
        assert!(overlap.to_string().contains("overlap"), "{overlap}");

        let mut conflicting = partial(1, 2, (3, 5));
        conflicting
            .1
            .blobs
            .insert("train_state".into(), serde_json::json!({"step": 4}));
        let err = CheckpointIndex::merge(3, vec![partial(0, 2, (0, 3)), conflicting]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BlobConflict {
                    first_rank: 0,
                    second_rank: 1,
                    ..
                }
            ),
            "{err}"
        );

        let wrong_world =
            CheckpointIndex::merge(3, vec![partial(0, 2, (0, 3)), partial(1, 3, (3, 5))])
                .unwrap_err();
        assert!(
            wrong_world.to_string().contains("world_size 3"),
            "{wrong_world}"
        );
    }

    #[test]
    fn identical_replicas_count_once() {
        let (_, mut a) = partial(0, 2, (0, 5));
        let (_, b) = partial(1, 2, (0, 5));
        a.files.extend(b.files);
        a.tensors
            .get_mut("model.w")
            .unwrap()
            .shards
            .extend(b.tensors["model.w"].shards.clone());
        assert!(a.validate_layout().is_ok());
    }
}
