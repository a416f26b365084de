//! The golden case shared by the PyTorch comparison test and the script that produces its
//! expected values: debugmodel weights from Titan's init at a fixed seed, fixed tokens.

use candle_core::{DType, Device};
use titan_core::Module;

use super::{Llama3, LlamaArgs};
use crate::Result;

pub const SEED: u64 = 20261125;
pub const BATCH: usize = 2;
pub const SEQ: usize = 32;

/// The debugmodel with the golden weights, f32, on `device`.
pub fn model(device: &Device) -> Result<Llama3> {
    let mut m = Llama3::new(&LlamaArgs::flavor("debugmodel")?)?;
    m.set_device(device, DType::F32, SEQ)?;
    m.init_weights(SEED)?;
    Ok(m)
}

/// Fixed tokens `(BATCH, SEQ)` and their next-token labels, the last of each row ignored.
pub fn tokens_and_labels() -> (Vec<u32>, Vec<i64>) {
    let vocab = 2048u64;
    let tokens: Vec<u32> = (0..(BATCH * SEQ) as u64)
        .map(|i| (titan_core::rng::mix64(i ^ 0x5eed) % vocab) as u32)
        .collect();
    let mut labels = Vec::with_capacity(tokens.len());
    for row in tokens.chunks(SEQ) {
        labels.extend(row.iter().skip(1).map(|&t| t as i64));
        labels.push(-100);
    }
    (tokens, labels)
}

/// FNV-1a over every parameter's f32 bits in state-dict order: ties the committed expected
/// values to the weights they were computed from.
pub fn weights_checksum(model: &Llama3) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in model.params() {
        for b in p.name().bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let master = p
            .master()
            .ok_or_else(|| titan_core::Error::NotMaterialized {
                name: p.name().into(),
            })?;
        for v in master.flatten_all()?.to_vec1::<f32>()? {
            for b in v.to_bits().to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    Ok(h)
}
