//! A Hugging Face weights folder: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`weight_map`: tensor name -> file), plus `config.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use safetensors::tensor::TensorInfo;
use serde::{Deserialize, Serialize};

use crate::host::{candle_dtype, tensor_from_le_bytes};
use crate::safetensors_io::SafetensorsHeader;
use crate::{Error, Result};

/// Single-file weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Model configuration.
pub const CONFIG_FILE: &str = "config.json";

/// `model.safetensors.index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfIndex {
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub weight_map: BTreeMap<String, String>,
}

/// The name of shard `i` (0-based) of `n`, as `save_pretrained` names them.
pub fn shard_file_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// An opened Hugging Face weights folder.
#[derive(Debug)]
pub struct HfFolder {
    pub dir: PathBuf,
    /// Tensor name -> file name.
    weight_map: BTreeMap<String, String>,
    /// File name -> parsed header.
    headers: BTreeMap<String, SafetensorsHeader>,
}

impl HfFolder {
    /// Open `dir`: the index if present, else the single file.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let weight_map: BTreeMap<String, String>;
        let mut headers = BTreeMap::new();
        if index_path.is_file() {
            let bytes = std::fs::read(&index_path).map_err(Error::io("read", &index_path))?;
            let index: HfIndex =
                serde_json::from_slice(&bytes).map_err(Error::json(&index_path))?;
            weight_map = index.weight_map;
            for file in weight_map.values() {
                if !headers.contains_key(file) {
                    headers.insert(file.clone(), SafetensorsHeader::read(&dir.join(file))?);
                }
            }
            for (name, file) in &weight_map {
                if !headers[file].tensors.contains_key(name) {
                    return Err(Error::Hf {
                        path: dir.join(file),
                        reason: format!(
                            "{INDEX_FILE} maps `{name}` to this file, which does not hold it"
                        ),
                    });
                }
            }
        } else if single.is_file() {
            let header = SafetensorsHeader::read(&single)?;
            weight_map = header
                .tensors
                .keys()
                .map(|k| (k.clone(), SINGLE_FILE.to_string()))
                .collect();
            headers.insert(SINGLE_FILE.to_string(), header);
        } else {
            return Err(Error::Hf {
                path: dir.to_path_buf(),
                reason: format!("neither {INDEX_FILE} nor {SINGLE_FILE} is here: point at the folder holding the weights"),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            weight_map,
            headers,
        })
    }

    /// Tensor names.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.weight_map.keys()
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.weight_map.contains_key(name)
    }

    /// Header entry of a tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        let file = self.weight_map.get(name)?;
        self.headers.get(file)?.tensors.get(name)
    }

    /// `config.json`'s path, if the folder has one.
    pub fn config_path(&self) -> Option<PathBuf> {
        let p = self.dir.join(CONFIG_FILE);
        p.is_file().then_some(p)
    }

    /// Read one tensor to host memory in its stored dtype.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let file_name = self.weight_map.get(name).ok_or_else(|| Error::Hf {
            path: self.dir.clone(),
            reason: format!("no tensor `{name}`"),
        })?;
        let header = &self.headers[file_name];
        let info = &header.tensors[name];
        let dtype = candle_dtype(info.dtype).ok_or_else(|| Error::Hf {
            path: header.path.clone(),
            reason: format!("tensor `{name}` has dtype {:?}, which Titan does not read (quantized checkpoints are not supported)", info.dtype),
        })?;
        let mut file = File::open(&header.path).map_err(Error::io("open", &header.path))?;
        let bytes = header.read_tensor(&mut file, name)?;
        tensor_from_le_bytes(&bytes, dtype, &info.shape)
    }
}
