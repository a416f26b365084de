//! Peak saved-activation bytes of one debugmodel forward+backward per activation
//! checkpointing mode, measured by the executor (CPU, f32).
//!
//! `cargo run --release -p titan-models --example ac_memory -- [BATCH] [SEQ]`

use candle_core::{DType, Device};
use titan_core::{ActivationCheckpoint, Executor, MicrobatchInfo, NoHooks};
use titan_models::llama3::{Llama3, LlamaArgs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let b: usize = argv.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    let s: usize = argv.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let args = LlamaArgs::flavor("debugmodel")?;
    println!("| mode | peak saved activations (MiB) | vs none |\n|---|---|---|");
    let mut base = 0usize;
    for (name, ac) in [
        ("none", ActivationCheckpoint::None),
        ("selective op", ActivationCheckpoint::Op),
        (
            "selective 2 (every 2nd block)",
            ActivationCheckpoint::EveryNth(2),
        ),
        ("full", ActivationCheckpoint::Full),
    ] {
        let mut m = Llama3::new(&args)?;
        m.set_device(&Device::Cpu, DType::F32, s)?;
        m.init_weights(0)?;
        let tokens: Vec<u32> = (0..b * s)
            .map(|i| (i * 31 % args.vocab_size) as u32)
            .collect();
        let labels: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let batch = m.make_batch(&tokens, b, s, None)?;
        let target = m.make_labels(&labels)?;
        let r = Executor::new(ac).forward_backward(
            &mut m,
            &batch,
            &target,
            1.0 / (b * s) as f64,
            &mut NoHooks,
            MicrobatchInfo::single(),
        )?;
        if base == 0 {
            base = r.peak_saved_bytes;
        }
        println!(
            "| {name} | {:.1} | {:.0}% |",
            r.peak_saved_bytes as f64 / 1048576.0,
            100.0 * r.peak_saved_bytes as f64 / base as f64
        );
    }
    Ok(())
}
