//! Writes the golden debugmodel as a Titan checkpoint, exports it to a Hugging Face folder,
//! and saves Titan's logits for the golden tokens: the inputs of `scripts/hf_logits_check.py`.
//!
//! `cargo run -p titan-trainer --example golden_hf_export -- OUT_DIR`

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use titan_checkpoint::{
    keys, CheckpointConfig, Checkpointer, HfExportOptions, SaveRequest, ShardedTensor,
};
use titan_core::Module;
use titan_models::llama3::golden;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: golden_hf_export OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;
    let model = golden::model(&Device::Cpu)?;
    let mut ck = Checkpointer::new(CheckpointConfig {
        enable: true,
        folder: out.join("checkpoint"),
        ..Default::default()
    })?;
    let mut req = SaveRequest::single(0, false);
    for p in model.params() {
        req.tensors.push(ShardedTensor::full(
            keys::model(p.name()),
            p.master().ok_or("materialized")?.clone(),
        ));
    }
    ck.save(req)?;
    ck.wait()?;
    let adapter = titan_trainer::llama::hf_adapter(&model.args)?;
    titan_checkpoint::export_checkpoint(
        &ck.step_dir(0),
        &adapter,
        &out.join("hf"),
        &HfExportOptions::default(),
    )?;
    let (tokens, _) = golden::tokens_and_labels();
    let batch = model.make_batch(&tokens, golden::BATCH, golden::SEQ, None)?;
    let logits = model.logits(&batch)?;
    let t: HashMap<String, Tensor> = [("logits".to_string(), logits)].into_iter().collect();
    candle_core::safetensors::save(&t, out.join("titan_logits.safetensors"))?;
    println!("wrote {}", out.display());
    Ok(())
}
