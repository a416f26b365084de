//! Writing a step: stage a rank's tensors in host memory, write its shard file and partial
//! index into the step's temporary folder, and (rank 0, after every rank wrote) finalize:
//! merge, write `index.json` and `COMPLETE`, rename to `step-N`, purge old steps.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::hf::{self, HfExportOptions, StateDictAdapter};
use crate::host::{dtype_name, st_dtype, tensor_to_le_bytes};
use crate::index::{CheckpointIndex, FileEntry, ShardEntry, TensorEntry};
use crate::layout::{self, rank_file_name, rank_index_name, step_dir_name, temp_dir_name};
use crate::progress::ByteProgress;
use crate::region::Region;
use crate::request::SaveRequest;
use crate::safetensors_io::{SafetensorsWriter, TensorHeader};
use crate::xxh64::to_hex;
use crate::{keys, Error, Result};

/// A tensor copied to host memory, ready to be written without touching the device again.
pub(crate) struct StagedTensor {
    pub name: String,
    pub dtype: DType,
    pub global_shape: Vec<usize>,
    pub region: Region,
    pub bytes: Vec<u8>,
}

/// One rank's save, detached from training state.
pub(crate) struct StagedSave {
    pub step: u64,
    pub rank: usize,
    pub world_size: usize,
    pub model_only: bool,
    pub tensors: Vec<StagedTensor>,
    pub blobs: BTreeMap<String, serde_json::Value>,
}

impl StagedSave {
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes.len() as u64).sum()
    }
}

/// Check a request and copy its tensors to host memory. A model-only save keeps `model.*`
/// tensors only, floats cast to `export_dtype`, and no blobs.
pub(crate) fn stage(req: SaveRequest, model_only: bool, export_dtype: DType) -> Result<StagedSave> {
    let bad = |name: &str, reason: String| Error::Request {
        name: name.to_string(),
        reason,
    };
    if req.world_size == 0 || req.rank >= req.world_size {
        return Err(bad(
            "<request>",
            format!("rank {} is outside world_size {}", req.rank, req.world_size),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut tensors = Vec::with_capacity(req.tensors.len());
    for t in req.tensors {
        if !seen.insert(t.name.clone()) {
            return Err(bad(&t.name, format!("given twice by rank {}", req.rank)));
        }
        if keys::top_level(&t.name) == t.name {
            return Err(bad(
                &t.name,
                "needs a top-level key (`model.<fqn>`, `optimizer.<fqn>.<state>`)".into(),
            ));
        }
        let region = t.region();
        if let Some(why) = region.out_of_bounds(&t.global_shape) {
            return Err(bad(&t.name, why));
        }
        if model_only && keys::top_level(&t.name) != keys::MODEL {
            continue;
        }
        let mut tensor = t.tensor;
        if model_only && tensor.dtype().is_float() && tensor.dtype() != export_dtype {
            tensor = tensor.to_dtype(export_dtype)?;
        }
        st_dtype(&t.name, tensor.dtype())?;
        let bytes = tensor_to_le_bytes(&t.name, &tensor)?;
        tensors.push(StagedTensor {
            name: t.name,
            dtype: tensor.dtype(),
            global_shape: t.global_shape,
            region,
            bytes,
        });
    }
    for name in req.blobs.keys() {
        if name.is_empty() {
            return Err(bad(name, "blob names must not be empty".into()));
        }
    }
    let blobs = if model_only {
        BTreeMap::new()
    } else {
        req.blobs
    };
    Ok(StagedSave {
        step: req.step,
        rank: req.rank,
        world_size: req.world_size,
        model_only,
        tensors,
        blobs,
    })
}

/// Write one rank's shard file and partial index into `<folder>/.tmp-step-N/`.
pub(crate) fn write_rank(folder: &Path, staged: &StagedSave, interactive: bool) -> Result<()> {
    fs::create_dir_all(folder).map_err(Error::io("create folder", folder))?;
    let temp = folder.join(temp_dir_name(staged.step));
    if staged.world_size == 1 {
        // Alone, this process owns the temporary folder: whatever is there is a crash's debris.
        layout::remove_dir_if_exists(&temp)?;
    }
    fs::create_dir_all(&temp).map_err(Error::io("create folder", &temp))?;
    // Remove this rank's stale partial index first: if this write fails, finalize must not
    // mistake an older attempt's index for this one.
    let partial_path = temp.join(rank_index_name(staged.rank));
    layout::remove_file_if_exists(&partial_path)?;

    let file_name = rank_file_name(staged.rank);
    let file_path = temp.join(&file_name);
    let headers = staged
        .tensors
        .iter()
        .map(|t| {
            Ok(TensorHeader {
                name: t.name.clone(),
                dtype: st_dtype(&t.name, t.dtype)?,
                shape: t.region.shape.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("titan.step".to_string(), staged.step.to_string()),
        ("titan.rank".to_string(), staged.rank.to_string()),
    ]);
    let mut progress = ByteProgress::new(
        format!("saving step {}", staged.step),
        staged.bytes(),
        interactive,
    );
    let mut writer = SafetensorsWriter::create(&file_path, &headers, &metadata)?;
    let mut index = CheckpointIndex::new(
        staged.step,
        staged.world_size,
        Some(staged.rank),
        staged.model_only,
    );
    for t in &staged.tensors {
        let hash = writer.write_tensor(&t.name, &t.bytes)?;
        progress.advance(t.bytes.len() as u64);
        index.tensors.insert(
            t.name.clone(),
            TensorEntry {
                dtype: dtype_name(st_dtype(&t.name, t.dtype)?),
                global_shape: t.global_shape.clone(),
                shards: vec![ShardEntry {
                    rank: staged.rank,
                    file: file_name.clone(),
                    offset: t.region.offset.clone(),
                    shape: t.region.shape.clone(),
                    xxh64: to_hex(hash),
                }],
            },
        );
    }
    let written = writer.finish()?;
    progress.finish();
    index.files.insert(
        file_name,
        FileEntry {
            rank: staged.rank,
            bytes: written.bytes,
            xxh64: to_hex(written.xxh64),
        },
    );
    index.blobs = staged.blobs.clone();
    let json = serde_json::to_vec_pretty(&index).map_err(Error::json(&partial_path))?;
    layout::write_durably(&partial_path, &json)
}

/// Merge the partial indexes of `<folder>/.tmp-step-N`, complete it and rename it to
/// `step-N`; then keep only the newest `keep_latest_k` complete steps (0 = all). With an
/// adapter, a model-only step also gets a Hugging Face export in `step-N/hf`.
pub(crate) fn finalize(
    folder: &Path,
    step: u64,
    keep_latest_k: usize,
    hf_adapter: Option<&dyn StateDictAdapter>,
    interactive: bool,
) -> Result<PathBuf> {
    let temp = folder.join(temp_dir_name(step));
    let first_path = temp.join(rank_index_name(0));
    if !first_path.is_file() {
        return Err(Error::MissingRank {
            rank: 0,
            path: first_path,
        });
    }
    let read_partial = |path: &Path| -> Result<CheckpointIndex> {
        let bytes = fs::read(path).map_err(Error::io("read", path))?;
        CheckpointIndex::from_json(path, &bytes)
    };
    let first = read_partial(&first_path)?;
    let mut partials = vec![(first_path, first)];
    for rank in 1..partials[0].1.world_size {
        let path = temp.join(rank_index_name(rank));
        if !path.is_file() {
            return Err(Error::MissingRank { rank, path });
        }
        let p = read_partial(&path)?;
        partials.push((path, p));
    }
    let merged = CheckpointIndex::merge(step, partials)?;

    // Every file the index names is there with the recorded size; anything else in the
    // temporary folder (files of ranks from an interrupted run with more ranks) goes.
    let mut keep: BTreeSet<String> = merged.files.keys().cloned().collect();
    for (name, entry) in &merged.files {
        let path = temp.join(name);
        let got = fs::metadata(&path).map_err(Error::io("stat", &path))?.len();
        if got != entry.bytes {
            return Err(Error::FileSize {
                file: path,
                expected: entry.bytes,
                got,
            });
        }
    }
    for rank in 0..merged.world_size {
        keep.insert(rank_index_name(rank));
    }
    for entry in fs::read_dir(&temp).map_err(Error::io("list", &temp))? {
        let entry = entry.map_err(Error::io("list", &temp))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let path = entry.path();
            if path.is_dir() {
                layout::remove_dir_if_exists(&path)?;
            } else {
                layout::remove_file_if_exists(&path)?;
            }
        }
    }

    if merged.model_only {
        if let Some(adapter) = hf_adapter {
            let hf_dir = temp.join(hf::EXPORT_SUBDIR);
            hf::export_with_index(
                &temp,
                &merged,
                adapter,
                &hf_dir,
                &HfExportOptions::default(),
                interactive,
            )?;
        }
    }

    layout::write_index_and_marker(&temp, &merged)?;
    for rank in 0..merged.world_size {
        layout::remove_file_if_exists(&temp.join(rank_index_name(rank)))?;
    }
    layout::fsync_dir(&temp)?;
    let final_dir = folder.join(step_dir_name(step));
    layout::publish(&temp, &final_dir)?;
    if keep_latest_k > 0 {
        purge(folder, keep_latest_k, step)?;
    }
    Ok(final_dir)
}

/// Delete complete checkpoints older than the newest `keep` ones, never `protect` (the step
/// just written) and never incomplete or temporary folders.
pub(crate) fn purge(folder: &Path, keep: usize, protect: u64) -> Result<Vec<u64>> {
    let steps = layout::complete_steps(folder)?;
    let excess = steps.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for &step in steps.iter().take(excess) {
        if step == protect {
            continue;
        }
        let dir = folder.join(step_dir_name(step));
        // Rename first so a half-deleted folder never looks like a checkpoint.
        let doomed = folder.join(format!(
            ".purge-{}-{}",
            step_dir_name(step),
            std::process::id()
        ));
        fs::rename(&dir, &doomed).map_err(Error::io("rename for removal", &dir))?;
        layout::remove_dir_if_exists(&doomed)?;
        tracing::info!(
            "Removed checkpoint {} (keep_latest_k = {keep})",
            dir.display()
        );
        removed.push(step);
    }
    Ok(removed)
}
