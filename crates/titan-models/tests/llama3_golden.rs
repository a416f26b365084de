//! Titan's Llama 3 against an independent PyTorch implementation (scripts/llama3_reference.py):
//! the debugmodel with Titan's init at the golden seed, fixed tokens, logits and loss in f32.
//! The fixture's logits came from PyTorch; the weights are re-drawn here and tied to the
//! fixture by their checksum (the 25 MB weight file itself is not committed).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use titan_core::testing::rel_err;
use titan_core::{Executor, NoHooks};
use titan_models::llama3::golden;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama3_debug_golden")
}

#[test]
fn debugmodel_matches_pytorch_reference() {
    let dir = fixture();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let mut model = golden::model(&Device::Cpu).unwrap();
    let checksum = format!("{:016x}", golden::weights_checksum(&model).unwrap());
    assert_eq!(
        checksum,
        meta["weights_checksum_fnv1a64"].as_str().unwrap(),
        "init changed: regenerate the fixture"
    );

    let expected =
        candle_core::safetensors::load(dir.join("logits.safetensors"), &Device::Cpu).unwrap();
    let expected: &Tensor = &expected["logits"];
    let (tokens, labels) = golden::tokens_and_labels();
    let batch = model
        .make_batch(&tokens, golden::BATCH, golden::SEQ, None)
        .unwrap();
    let logits = model.logits(&batch).unwrap();
    let e = rel_err(&logits, expected).unwrap();
    let max_abs = (&logits - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        e < 1e-5,
        "logits relative error {e:e} (max abs {max_abs:e})"
    );

    let valid = labels.iter().filter(|&&l| l >= 0).count();
    let label_tensor = model.make_labels(&labels).unwrap();
    let loss = Executor::default()
        .forward_loss(
            &mut model,
            &batch,
            &label_tensor,
            1.0 / valid as f64,
            &mut NoHooks,
        )
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let want = meta["loss"].as_f64().unwrap();
    assert!(
        ((loss - want) / want).abs() < 1e-5,
        "loss {loss} vs PyTorch {want}"
    );
}
