//! Names and durability on disk: step folders, temporary folders, the completion marker, and
//! fsync of files and folders.
//!
//! ```text
//! <folder>/
//!   step-10/                      complete: renamed from .tmp-step-10 after COMPLETE was written
//!     index.json                  merged index (tensors, shards, files, blobs)
//!     rank-00000.safetensors      rank 0's shards
//!     rank-00001.safetensors
//!     COMPLETE                    marker: step and the XXH64 of index.json
//!   .tmp-step-20/                 being written (or left by a crash): never loaded
//!     rank-00000.safetensors
//!     rank-00000.index.json       rank 0's partial index, merged and removed at finalize
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::index::{CheckpointIndex, FORMAT_NAME};
use crate::xxh64::{from_hex, to_hex, xxh64};
use crate::{Error, Result};

/// Merged index file of a step folder.
pub const INDEX_FILE: &str = "index.json";
/// Completion marker; a folder without it is never loaded.
pub const COMPLETE_MARKER: &str = "COMPLETE";

/// `step-N`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step}")
}

/// The temporary folder all ranks write step `step` into.
pub fn temp_dir_name(step: u64) -> String {
    format!(".tmp-step-{step}")
}

/// A rank's shard file.
pub fn rank_file_name(rank: usize) -> String {
    format!("rank-{rank:05}.safetensors")
}

/// A rank's partial index (temporary folder only).
pub fn rank_index_name(rank: usize) -> String {
    format!("rank-{rank:05}.index.json")
}

/// The step of a `step-N` folder name.
pub fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Contents of the `COMPLETE` marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub format: String,
    pub step: u64,
    /// XXH64 of `index.json`, so an edited or damaged index is noticed before it is trusted.
    pub index_xxh64: String,
}

/// Whether `dir` holds a completion marker.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE_MARKER).is_file()
}

/// Steps of the complete checkpoints in `folder`, ascending (none if `folder` is absent).
pub fn complete_steps(folder: &Path) -> Result<Vec<u64>> {
    let entries = match fs::read_dir(folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                op: "list",
                path: folder.to_path_buf(),
                source: e,
            })
        }
    };
    let mut steps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("list", folder))?;
        let Some(step) = entry.file_name().to_str().and_then(parse_step_dir) else {
            continue;
        };
        if is_complete(&entry.path()) {
            steps.push(step);
        } else {
            tracing::debug!(
                "ignoring {}: no {COMPLETE_MARKER} marker",
                entry.path().display()
            );
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// fsync a folder, so renames and new entries inside it survive a power loss.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// Write `bytes` to `path` through a temporary sibling, fsync, rename, fsync the folder.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = dir.join(tmp_name);
    {
        let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(bytes).map_err(Error::io("write", &tmp))?;
        f.sync_all().map_err(Error::io("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(Error::io("rename into place", path))?;
    fsync_dir(dir)
}

/// Read and verify a complete step folder's index: marker present, index hash matching.
pub fn read_index(dir: &Path) -> Result<CheckpointIndex> {
    let not = |reason: String| Error::NotACheckpoint {
        dir: dir.to_path_buf(),
        reason,
    };
    let marker_path = dir.join(COMPLETE_MARKER);
    let marker_bytes = match fs::read(&marker_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not(format!(
                "no {COMPLETE_MARKER} marker (an interrupted save, or not a Titan checkpoint); load another step"
            )))
        }
        Err(e) => return Err(Error::Io { op: "read", path: marker_path, source: e }),
    };
    let marker: Marker =
        serde_json::from_slice(&marker_bytes).map_err(Error::json(&marker_path))?;
    let index_path = dir.join(INDEX_FILE);
    let index_bytes = fs::read(&index_path).map_err(Error::io("read", &index_path))?;
    let got = xxh64(&index_bytes);
    if from_hex(&marker.index_xxh64) != Some(got) {
        return Err(Error::FileChecksum {
            file: index_path,
            expected: from_hex(&marker.index_xxh64).unwrap_or(0),
            got,
        });
    }
    let index = CheckpointIndex::from_json(&index_path, &index_bytes)?;
    if marker.format != FORMAT_NAME {
        return Err(not(format!(
            "marker format is `{}`, expected `{FORMAT_NAME}`",
            marker.format
        )));
    }
    if index.step != marker.step {
        return Err(not(format!(
            "marker says step {} but index says step {}: the folder mixes two saves; load another step",
            marker.step, index.step
        )));
    }
    Ok(index)
}

/// Write `index.json` and then the `COMPLETE` marker into `dir` (durably, in that order).
pub fn write_index_and_marker(dir: &Path, index: &CheckpointIndex) -> Result<()> {
    let index_path = dir.join(INDEX_FILE);
    let bytes = serde_json::to_vec_pretty(index).map_err(Error::json(&index_path))?;
    write_durably(&index_path, &bytes)?;
    let marker = Marker {
        format: FORMAT_NAME.into(),
        step: index.step,
        index_xxh64: to_hex(xxh64(&bytes)),
    };
    let marker_path = dir.join(COMPLETE_MARKER);
    let marker_bytes = serde_json::to_vec_pretty(&marker).map_err(Error::json(&marker_path))?;
    write_durably(&marker_path, &marker_bytes)
}

/// Remove a folder tree if it exists.
pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            op: "remove",
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// Remove a file if it exists.
pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            op: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Rename the finished temporary folder to its final `step-N` name, replacing an older
/// folder of that name (which is moved aside first, so `step-N` is never half-replaced).
pub fn publish(temp: &Path, final_dir: &Path) -> Result<()> {
    let parent = final_dir.parent().unwrap_or(Path::new("."));
    let mut aside: Option<PathBuf> = None;
    if final_dir.exists() {
        let name = final_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let old = parent.join(format!(".old-{name}-{}", std::process::id()));
        remove_dir_if_exists(&old)?;
        fs::rename(final_dir, &old).map_err(Error::io("move aside", final_dir))?;
        aside = Some(old);
    }
    fs::rename(temp, final_dir).map_err(Error::io("rename into place", final_dir))?;
    fsync_dir(parent)?;
    if let Some(old) = aside {
        remove_dir_if_exists(&old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names() {
        assert_eq!(parse_step_dir(&step_dir_name(120)), Some(120));
        assert_eq!(parse_step_dir("step-"), None);
        assert_eq!(parse_step_dir("step-1x"), None);
        assert_eq!(parse_step_dir(&temp_dir_name(3)), None);
        assert_eq!(parse_step_dir("step--1"), None);
        assert_eq!(rank_file_name(3), "rank-00003.safetensors");
    }
}
