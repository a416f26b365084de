//! Rough CPU timing of the parts of a debugmodel step (development aid).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use titan_core::{Block, LayeredModel, SaveMode};
use titan_models::llama3::{Llama3, LlamaArgs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = LlamaArgs {
        vocab_size: 8192,
        ..LlamaArgs::flavor("debugmodel")?
    };
    let (b, s) = (8, 256);
    let mut m = Llama3::new(&args)?;
    m.set_device(&Device::Cpu, DType::F32, s)?;
    m.init_weights(0)?;
    let toks: Vec<u32> = (0..b * s).map(|i| (i * 7 % 8192) as u32).collect();
    let batch = m.make_batch(&toks, b, s, None)?;
    let labels = m.make_labels(&toks.iter().map(|&t| t as i64).collect::<Vec<_>>())?;
    let ctx = m.context(&batch)?;
    for _ in 0..2 {
        let t = Instant::now();
        let (h, stem) = m.stem_forward(&batch)?;
        let t_stem = t.elapsed();
        let t = Instant::now();
        let (y, saved) = m.layers[0].forward(&h, &ctx, SaveMode::All)?;
        let t_block_f = t.elapsed();
        let t = Instant::now();
        let (_loss, hs) = m.head_forward(&y, &labels, 1.0)?;
        let t_head_f = t.elapsed();
        let t = Instant::now();
        let d = m.head_backward(hs)?;
        let t_head_b = t.elapsed();
        let t = Instant::now();
        let dx = m.layers[0].backward(saved, &d, &ctx)?;
        let t_block_b = t.elapsed();
        let t = Instant::now();
        m.stem_backward(stem, &dx)?;
        let t_stem_b = t.elapsed();
        println!("stem f {t_stem:?} block f {t_block_f:?} head f {t_head_f:?} head b {t_head_b:?} block b {t_block_b:?} stem b {t_stem_b:?}");
    }
    let a = Tensor::randn(0f32, 1.0, (2048, 256), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (768, 256), &Device::Cpu)?;
    let t = Instant::now();
    for _ in 0..10 {
        let _ = a.matmul(&w.t()?)?;
    }
    println!("matmul 2048x256x768 x10: {:?}", t.elapsed());
    Ok(())
}
