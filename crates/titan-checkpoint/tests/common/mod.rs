//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use titan_checkpoint::{CheckpointConfig, Checkpointer};

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("titan-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch folder");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn folder(&self) -> PathBuf {
        self.0.join("checkpoint")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An enabled config writing to `folder`.
pub fn config(folder: &Path) -> CheckpointConfig {
    CheckpointConfig {
        enable: true,
        folder: folder.to_path_buf(),
        interval: 1,
        keep_latest_k: 0,
        ..Default::default()
    }
}

pub fn checkpointer(cfg: CheckpointConfig) -> Checkpointer {
    let mut c = Checkpointer::new(cfg).expect("valid config");
    c.set_interactive(false);
    c
}

/// Deterministic, non-repeating f32 values (a 64-bit LCG), including awkward bit patterns.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.7
        })
        .collect()
}

pub fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu).expect("tensor")
}

/// Raw bits plus dtype, for bitwise comparisons: bf16/f16 -> f32 is exact and injective, so
/// equal f32 bits mean equal stored bits.
pub fn bits(t: &Tensor) -> (DType, Vec<u32>) {
    let v = t
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .expect("to f32");
    (t.dtype(), v.into_iter().map(f32::to_bits).collect())
}
