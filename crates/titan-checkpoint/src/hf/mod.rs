//! Hugging Face interop: a [`StateDictAdapter`] maps a model's torchtitan state dict to HF's
//! and back; this module uses one to export a Titan checkpoint as an HF folder, import an HF
//! folder as a Titan checkpoint, or load an HF folder's tensors straight into a model.
//!
//! An HF folder is `config.json` plus `model.safetensors`, or shards
//! `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json` when larger than
//! [`HfExportOptions::max_shard_bytes`].

pub mod config;
pub mod files;
pub mod llama;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use safetensors::tensor::TensorInfo;

use crate::host::{dtype_name, st_dtype, tensor_to_le_bytes};
use crate::index::{CheckpointIndex, FileEntry, ShardEntry, TensorEntry};
use crate::layout::{self, rank_file_name, read_index};
use crate::load::ShardReader;
use crate::progress::ByteProgress;
use crate::request::TensorRequest;
use crate::safetensors_io::{SafetensorsWriter, TensorHeader};
use crate::xxh64::to_hex;
use crate::{keys, Error, Result};

use files::{HfFolder, HfIndex, CONFIG_FILE, INDEX_FILE, SINGLE_FILE};

/// Subfolder of a step folder holding its Hugging Face export (`last_save_in_hf`).
pub const EXPORT_SUBDIR: &str = "hf";

/// Maps one model's torchtitan state dict (FQNs without the `model.` prefix) to Hugging
/// Face's and back. Each weight maps to one HF weight of the same shape.
// `from_hf*` take `&self` (the model dimensions): torchtitan's names, kept for familiarity.
#[allow(clippy::wrong_self_convention)]
pub trait StateDictAdapter: Send + Sync {
    /// Every torchtitan FQN of the model with its shape, in state-dict order.
    fn fqn_shapes(&self) -> Vec<(String, Vec<usize>)>;
    /// The HF name of a torchtitan FQN.
    fn to_hf_name(&self, fqn: &str) -> Result<String>;
    /// The torchtitan FQN of an HF name; `None` for HF tensors Titan drops (RoPE caches).
    fn from_hf_name(&self, hf_name: &str) -> Result<Option<String>>;
    /// A torchtitan tensor's values in HF layout.
    fn to_hf_tensor(&self, fqn: &str, t: &Tensor) -> Result<Tensor>;
    /// An HF tensor's values in torchtitan layout (`fqn` is the torchtitan name).
    fn from_hf_tensor(&self, fqn: &str, t: &Tensor) -> Result<Tensor>;
    /// The HF tensor to read when `hf_name` is absent (tied embeddings), if any.
    fn hf_fallback(&self, _hf_name: &str) -> Option<String> {
        None
    }
    /// `config.json` for weights stored as `dtype`.
    fn hf_config(&self, dtype: DType) -> Result<serde_json::Value>;
    /// Refuse an HF `config.json` that describes another model.
    fn check_hf_config(&self, config_path: &Path) -> Result<()>;

    /// A whole torchtitan state dict in HF names and layout.
    fn to_hf(&self, state: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        state
            .iter()
            .map(|(fqn, t)| Ok((self.to_hf_name(fqn)?, self.to_hf_tensor(fqn, t)?)))
            .collect()
    }

    /// A whole HF state dict in torchtitan names and layout (fallbacks applied, dropped
    /// tensors left out).
    fn from_hf(&self, state: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (hf, t) in state {
            if let Some(fqn) = self.from_hf_name(hf)? {
                let v = self.from_hf_tensor(&fqn, t)?;
                out.insert(fqn, v);
            }
        }
        for (fqn, _) in self.fqn_shapes() {
            if out.contains_key(&fqn) {
                continue;
            }
            if let Some(t) = self
                .hf_fallback(&self.to_hf_name(&fqn)?)
                .and_then(|fb| state.get(&fb))
            {
                let v = self.from_hf_tensor(&fqn, t)?;
                out.insert(fqn, v);
            }
        }
        Ok(out)
    }
}

/// How to write a Hugging Face folder.
#[derive(Debug, Clone, PartialEq)]
pub struct HfExportOptions {
    /// dtype of the exported weights; `None` keeps the checkpoint's.
    pub dtype: Option<DType>,
    /// Start a new `model-0000i-of-0000n.safetensors` file past this many bytes of tensors
    /// (`save_pretrained`'s default is 5 GB).
    pub max_shard_bytes: u64,
}

impl Default for HfExportOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            max_shard_bytes: 5_000_000_000,
        }
    }
}

/// How to import a Hugging Face folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HfImportOptions {
    /// dtype of the imported tensors; `None` keeps the HF files' (usually bf16). Titan's f32
    /// masters are made from either.
    pub dtype: Option<DType>,
}

/// A sibling of `out` to write into before renaming it to `out`; refuses a non-empty `out`.
fn staging_dir_for(out: &Path) -> Result<PathBuf> {
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            return Err(Error::Io {
                op: "write into",
                path: out.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "folder exists and is not empty: choose a new output folder",
                ),
            });
        }
    }
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::io("create folder", parent))?;
    let name = out
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    layout::remove_dir_if_exists(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(Error::io("create folder", &tmp))?;
    Ok(tmp)
}

/// Move a finished staging folder to `out` (an empty `out` is replaced).
fn publish_staged(tmp: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir(out).map_err(Error::io("remove empty folder", out))?;
    }
    layout::publish(tmp, out)
}

/// Export the model of the complete Titan checkpoint `step_dir` as a Hugging Face folder
/// `out_dir` (which must not exist or be empty).
pub fn export_checkpoint(
    step_dir: &Path,
    adapter: &dyn StateDictAdapter,
    out_dir: &Path,
    opts: &HfExportOptions,
) -> Result<()> {
    let index = read_index(step_dir)?;
    let tmp = staging_dir_for(out_dir)?;
    export_with_index(step_dir, &index, adapter, &tmp, opts, true)?;
    publish_staged(&tmp, out_dir)?;
    tracing::info!(
        "Exported {} to Hugging Face folder {}",
        step_dir.display(),
        out_dir.display()
    );
    Ok(())
}

/// One tensor of an export, planned before anything is written.
struct ExportItem {
    fqn: String,
    hf_name: String,
    shape: Vec<usize>,
    dtype: DType,
    bytes: u64,
}

/// Export from an already-read index (also used by finalize, before the folder is
/// complete).
pub(crate) fn export_with_index(
    dir: &Path,
    index: &CheckpointIndex,
    adapter: &dyn StateDictAdapter,
    out_dir: &Path,
    opts: &HfExportOptions,
    interactive: bool,
) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(Error::io("create folder", out_dir))?;
    let mut items = Vec::new();
    for (fqn, shape) in adapter.fqn_shapes() {
        let name = keys::model(&fqn);
        let entry = index
            .tensors
            .get(&name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.clone(),
                dir: dir.to_path_buf(),
            })?;
        if entry.global_shape != shape {
            return Err(Error::ShapeMismatch {
                name,
                dir: dir.to_path_buf(),
                saved: entry.global_shape.clone(),
                expected: shape,
            });
        }
        let dtype = opts.dtype.unwrap_or(index.dtype_of(&name, entry)?);
        let bytes = (shape.iter().product::<usize>() * dtype.size_in_bytes()) as u64;
        let hf_name = adapter.to_hf_name(&fqn)?;
        items.push(ExportItem {
            fqn,
            hf_name,
            shape,
            dtype,
            bytes,
        });
    }
    let known: std::collections::BTreeSet<String> =
        items.iter().map(|i| keys::model(&i.fqn)).collect();
    for name in index
        .tensors
        .keys()
        .filter(|n| keys::top_level(n) == keys::MODEL && !known.contains(*n))
    {
        tracing::warn!(
            "Hugging Face export skips `{name}`: the state-dict adapter does not know it"
        );
    }

    // Greedy grouping into files of at most max_shard_bytes (a larger tensor gets its own).
    let mut groups: Vec<Vec<usize>> = vec![];
    let mut current_bytes = 0u64;
    for (i, item) in items.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if current_bytes + item.bytes <= opts.max_shard_bytes => g.push(i),
            _ => {
                groups.push(vec![i]);
                current_bytes = 0;
            }
        }
        current_bytes += item.bytes;
    }
    let n_files = groups.len().max(1);
    let file_name = |g: usize| {
        if n_files == 1 {
            SINGLE_FILE.to_string()
        } else {
            files::shard_file_name(g, n_files)
        }
    };

    let total: u64 = items.iter().map(|i| i.bytes).sum();
    let mut progress = ByteProgress::new("exporting to Hugging Face", total, interactive);
    let mut reader = ShardReader::new(dir, index);
    let mut quiet = ByteProgress::new("", 0, false);
    let mut weight_map = BTreeMap::new();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    for (g, group) in groups.iter().enumerate() {
        let path = out_dir.join(file_name(g));
        let headers = group
            .iter()
            .map(|&i| {
                let it = &items[i];
                Ok(TensorHeader {
                    name: it.hf_name.clone(),
                    dtype: st_dtype(&it.hf_name, it.dtype)?,
                    shape: it.shape.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut writer = SafetensorsWriter::create(&path, &headers, &metadata)?;
        for &i in group {
            let it = &items[i];
            let name = keys::model(&it.fqn);
            let t = reader.read(&TensorRequest::full(name, it.shape.clone()), &mut quiet)?;
            let hf = adapter.to_hf_tensor(&it.fqn, &t)?.to_dtype(it.dtype)?;
            if hf.dims() != it.shape.as_slice() {
                return Err(Error::Adapter {
                    name: it.fqn.clone(),
                    reason: format!(
                        "to_hf_tensor changed the shape {:?} to {:?}",
                        it.shape,
                        hf.dims()
                    ),
                });
            }
            writer.write_tensor(&it.hf_name, &tensor_to_le_bytes(&it.hf_name, &hf)?)?;
            progress.advance(it.bytes);
            weight_map.insert(it.hf_name.clone(), file_name(g));
        }
        writer.finish()?;
    }
    progress.finish();
    if n_files > 1 {
        let mut meta = serde_json::Map::new();
        meta.insert("total_size".into(), total.into());
        let index = HfIndex {
            metadata: meta,
            weight_map,
        };
        let path = out_dir.join(INDEX_FILE);
        let bytes = serde_json::to_vec_pretty(&index).map_err(Error::json(&path))?;
        layout::write_durably(&path, &bytes)?;
    }
    let config_dtype = items.first().map(|i| i.dtype).unwrap_or(DType::F32);
    let config = adapter.hf_config(config_dtype)?;
    let path = out_dir.join(CONFIG_FILE);
    let bytes = serde_json::to_vec_pretty(&config).map_err(Error::json(&path))?;
    layout::write_durably(&path, &bytes)
}

/// The HF tensor that holds `fqn`'s values in `folder` (its own, or the adapter's fallback).
fn hf_source(folder: &HfFolder, adapter: &dyn StateDictAdapter, fqn: &str) -> Result<String> {
    let hf = adapter.to_hf_name(fqn)?;
    if folder.contains(&hf) {
        return Ok(hf);
    }
    match adapter.hf_fallback(&hf) {
        Some(fb) if folder.contains(&fb) => {
            tracing::info!(
                "`{hf}` is absent from {}: using `{fb}` (tied weights)",
                folder.dir.display()
            );
            Ok(fb)
        }
        _ => Err(Error::Hf {
            path: folder.dir.clone(),
            reason: format!("tensor `{hf}` (Titan `{fqn}`) is missing"),
        }),
    }
}

fn open_checked(hf_dir: &Path, adapter: &dyn StateDictAdapter) -> Result<HfFolder> {
    let folder = HfFolder::open(hf_dir)?;
    if let Some(cfg) = folder.config_path() {
        adapter.check_hf_config(&cfg)?;
    }
    for name in folder.names() {
        if let Err(e) = adapter.from_hf_name(name) {
            tracing::warn!("ignoring Hugging Face tensor: {e}");
        }
    }
    Ok(folder)
}

/// Convert the Hugging Face folder `hf_dir` into a complete, model-only Titan checkpoint
/// folder `out_dir` (step 0, one rank), usable as `checkpoint.initial_load_path`.
pub fn import_checkpoint(
    hf_dir: &Path,
    adapter: &dyn StateDictAdapter,
    out_dir: &Path,
    opts: &HfImportOptions,
) -> Result<()> {
    let folder = open_checked(hf_dir, adapter)?;
    let mut plan = Vec::new();
    for (fqn, shape) in adapter.fqn_shapes() {
        let src = hf_source(&folder, adapter, &fqn)?;
        let info: &TensorInfo = folder.info(&src).ok_or_else(|| Error::Hf {
            path: hf_dir.to_path_buf(),
            reason: format!("no header for `{src}`"),
        })?;
        if info.shape != shape {
            return Err(Error::ShapeMismatch {
                name: src,
                dir: hf_dir.to_path_buf(),
                saved: info.shape.clone(),
                expected: shape,
            });
        }
        let dtype = match opts.dtype {
            Some(d) => d,
            None => crate::host::candle_dtype(info.dtype).ok_or_else(|| Error::Hf {
                path: hf_dir.to_path_buf(),
                reason: format!(
                    "tensor `{src}` has dtype {:?}, which Titan does not read",
                    info.dtype
                ),
            })?,
        };
        plan.push((fqn, src, shape, dtype));
    }
    let tmp = staging_dir_for(out_dir)?;
    let file_name = rank_file_name(0);
    let headers = plan
        .iter()
        .map(|(fqn, _, shape, dtype)| {
            let name = keys::model(fqn);
            Ok(TensorHeader {
                dtype: st_dtype(&name, *dtype)?,
                name,
                shape: shape.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let total: u64 = headers.iter().map(|h| h.byte_len() as u64).sum();
    let mut progress = ByteProgress::new("importing from Hugging Face", total, true);
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut writer = SafetensorsWriter::create(&tmp.join(&file_name), &headers, &metadata)?;
    let mut index = CheckpointIndex::new(0, 1, None, true);
    for (fqn, src, shape, dtype) in &plan {
        let name = keys::model(fqn);
        let t = adapter
            .from_hf_tensor(fqn, &folder.read(src)?)?
            .to_dtype(*dtype)?;
        let bytes = tensor_to_le_bytes(&name, &t)?;
        let hash = writer.write_tensor(&name, &bytes)?;
        progress.advance(bytes.len() as u64);
        index.tensors.insert(
            name.clone(),
            TensorEntry {
                dtype: dtype_name(st_dtype(&name, *dtype)?),
                global_shape: shape.clone(),
                shards: vec![ShardEntry {
                    rank: 0,
                    file: file_name.clone(),
                    offset: vec![0; shape.len()],
                    shape: shape.clone(),
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
            rank: 0,
            bytes: written.bytes,
            xxh64: to_hex(written.xxh64),
        },
    );
    index.validate_layout()?;
    layout::write_index_and_marker(&tmp, &index)?;
    publish_staged(&tmp, out_dir)?;
    tracing::info!(
        "Imported Hugging Face folder {} as Titan checkpoint {}",
        hf_dir.display(),
        out_dir.display()
    );
    Ok(())
}

/// Load the `model.*` requests straight from a Hugging Face folder (torchtitan's
/// `initial_load_in_hf`). Returns the tensors and the names of non-model requests (skipped).
pub fn load_hf(
    hf_dir: &Path,
    adapter: &dyn StateDictAdapter,
    requests: &[TensorRequest],
    interactive: bool,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let folder = open_checked(hf_dir, adapter)?;
    let mut out = HashMap::new();
    let mut skipped = Vec::new();
    let mut plan = Vec::new();
    for req in requests {
        let Some(fqn) = keys::model_fqn(&req.name) else {
            skipped.push(req.name.clone());
            continue;
        };
        let src = hf_source(&folder, adapter, fqn)?;
        let info = folder.info(&src).ok_or_else(|| Error::Hf {
            path: hf_dir.to_path_buf(),
            reason: format!("no header for `{src}`"),
        })?;
        if info.shape != req.global_shape {
            return Err(Error::ShapeMismatch {
                name: req.name.clone(),
                dir: hf_dir.to_path_buf(),
                saved: info.shape.clone(),
                expected: req.global_shape.clone(),
            });
        }
        if let Some(why) = req.region().out_of_bounds(&req.global_shape) {
            return Err(Error::Request {
                name: req.name.clone(),
                reason: why,
            });
        }
        let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
        plan.push((req, fqn, src, bytes));
    }
    let total = plan.iter().map(|p| p.3).sum();
    let mut progress = ByteProgress::new("loading Hugging Face weights", total, interactive);
    for (req, fqn, src, bytes) in plan {
        let mut t = adapter.from_hf_tensor(fqn, &folder.read(&src)?)?;
        for (d, (&start, &len)) in req.offset.iter().zip(&req.shape).enumerate() {
            if start != 0 || len != req.global_shape[d] {
                t = t.narrow(d, start, len)?;
            }
        }
        out.insert(req.name.clone(), t.contiguous()?);
        progress.advance(bytes);
    }
    progress.finish();
    Ok((out, skipped))
}
