//! Writes the inputs of the Llama 3 golden test for the PyTorch reference
//! (`scripts/llama3_reference.py`): debugmodel weights drawn by Titan's init with the golden
//! seed, the fixed tokens and labels, and the model arguments.
//!
//! `cargo run -p titan-models --example write_golden_inputs -- OUT_DIR`

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use titan_core::Module;
use titan_models::llama3::golden;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_golden_inputs OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;
    let model = golden::model(&Device::Cpu)?;
    let weights: HashMap<String, Tensor> = model
        .params()
        .iter()
        .map(|p| {
            (
                p.name().to_string(),
                p.master().expect("materialized").clone(),
            )
        })
        .collect();
    candle_core::safetensors::save(&weights, out.join("weights.safetensors"))?;
    let (tokens, labels) = golden::tokens_and_labels();
    let (b, s) = (golden::BATCH, golden::SEQ);
    let t: HashMap<String, Tensor> = [
        (
            "tokens".to_string(),
            Tensor::from_vec(
                tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                (b, s),
                &Device::Cpu,
            )?,
        ),
        (
            "labels".to_string(),
            Tensor::from_vec(labels, (b, s), &Device::Cpu)?,
        ),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&t, out.join("tokens.safetensors"))?;
    std::fs::write(
        out.join("args.json"),
        serde_json::to_string_pretty(&model.args)?,
    )?;
    println!(
        "weights checksum {:016x}",
        golden::weights_checksum(&model)?
    );
    let _ = DType::F32;
    Ok(())
}
