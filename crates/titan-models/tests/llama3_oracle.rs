//! A whole 2-layer Llama 3 against an f64 reference written with plain candle ops (forward) and
//! candle's autograd (backward), and activation checkpointing modes against each other.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use titan_core::ops::rope::rope_frequencies;
use titan_core::testing::oracle::{allowed_mask, attention_oracle, rope_oracle};
use titan_core::testing::{bitwise_eq, rel_err};
use titan_core::{ActivationCheckpoint, Executor, LayeredModel, MicrobatchInfo, Module, NoHooks};
use titan_models::llama3::{doc_ids_from_eos, AttnMaskType, Llama3, LlamaArgs};

const CPU: Device = Device::Cpu;
const B: usize = 2;
const S: usize = 8;

fn tiny_args(mask: AttnMaskType) -> LlamaArgs {
    LlamaArgs {
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(2),
        vocab_size: 64,
        multiple_of: 16,
        attn_mask_type: mask,
        eos_id: 5,
        ..LlamaArgs::flavor("debugmodel").unwrap()
    }
}

fn tokens() -> Vec<u32> {
    // Two EOS (id 5) in the first row, one in the second: three, then two documents.
    vec![1, 9, 5, 33, 2, 5, 60, 7, 12, 13, 14, 5, 63, 0, 8, 40]
}

fn labels() -> Vec<i64> {
    let t = tokens();
    let mut l: Vec<i64> = t.iter().skip(1).map(|&x| x as i64).collect();
    l.push(-100);
    l[3] = -100;
    l
}

fn build(mask: AttnMaskType) -> Llama3 {
    let mut m = Llama3::new(&tiny_args(mask)).unwrap();
    m.set_device(&CPU, DType::F32, S).unwrap();
    m.init_weights(1234).unwrap();
    m
}

fn run(model: &mut Llama3, ac: ActivationCheckpoint) -> (f32, usize) {
    let batch = model.make_batch(&tokens(), B, S, None).unwrap();
    let valid = labels().iter().filter(|&&l| l >= 0).count();
    let label_tensor = model.make_labels(&labels()).unwrap();
    let report = Executor::new(ac)
        .forward_backward(
            model,
            &batch,
            &label_tensor,
            1.0 / valid as f64,
            &mut NoHooks,
            MicrobatchInfo::single(),
        )
        .unwrap();
    (
        report.loss.to_scalar::<f32>().unwrap(),
        report.peak_saved_bytes,
    )
}

fn rms(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let denom = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
        .unwrap()
        .sqrt()
        .unwrap();
    x.broadcast_div(&denom).unwrap().broadcast_mul(w).unwrap()
}

/// The reference: returns the f64 loss and the autograd gradients by parameter name.
fn reference(model: &Llama3) -> (Tensor, HashMap<String, Tensor>) {
    let a = &model.args;
    let vars: Vec<(String, Var)> = model
        .params()
        .iter()
        .map(|p| {
            (
                p.name().to_string(),
                Var::from_tensor(&p.master().unwrap().to_dtype(DType::F64).unwrap()).unwrap(),
            )
        })
        .collect();
    let w: HashMap<&str, &Tensor> = vars
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor()))
        .collect();
    let (d, hq, hkv, hd) = (a.dim, a.n_heads, a.n_kv_heads(), a.head_dim());
    let toks = tokens();
    let ids = Tensor::from_slice(&toks, B * S, &CPU).unwrap();
    let mut h = w["tok_embeddings.weight"]
        .index_select(&ids, 0)
        .unwrap()
        .reshape((B, S, d))
        .unwrap();
    let freqs = rope_frequencies(hd, a.rope_theta, a.rope_scaling);
    let positions: Vec<u32> = (0..B * S).map(|i| (i % S) as u32).collect();
    let docs = doc_ids_from_eos(&toks, S, a.eos_id);
    let block = a.attn_mask_type == AttnMaskType::BlockCausal;
    let allowed = allowed_mask(B, S, block.then_some(docs.as_slice())).unwrap();
    let lin =
        |x: &Tensor, name: String| x.broadcast_matmul(&w[name.as_str()].t().unwrap()).unwrap();
    for l in 0..a.n_layers {
        let p = |s: &str| format!("layers.{l}.{s}");
        let n1 = rms(&h, w[p("attention_norm.weight").as_str()], a.norm_eps);
        let q = lin(&n1, p("attention.wq.weight"))
            .reshape((B, S, hq, hd))
            .unwrap();
        let k = lin(&n1, p("attention.wk.weight"))
            .reshape((B, S, hkv, hd))
            .unwrap();
        let v = lin(&n1, p("attention.wv.weight"))
            .reshape((B, S, hkv, hd))
            .unwrap();
        let q = rope_oracle(&q, &freqs, &positions)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let k = rope_oracle(&k, &freqs, &positions)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let v = v.transpose(1, 2).unwrap().contiguous().unwrap();
        let o = attention_oracle(&q, &k, &v, &allowed, 1.0 / (hd as f64).sqrt()).unwrap();
        let o = o.transpose(1, 2).unwrap().reshape((B, S, d)).unwrap();
        h = (h + lin(&o, p("attention.wo.weight"))).unwrap();
        let n2 = rms(&h, w[p("ffn_norm.weight").as_str()], a.norm_eps);
        let g = (lin(&n2, p("feed_forward.w1.weight")).silu().unwrap()
            * lin(&n2, p("feed_forward.w3.weight")))
        .unwrap();
        h = (h + lin(&g, p("feed_forward.w2.weight"))).unwrap();
    }
    let nf = rms(&h, w["norm.weight"], a.norm_eps);
    let logits = lin(&nf, "output.weight".into())
        .reshape((B * S, a.vocab_size))
        .unwrap();
    let logp = logits
        .broadcast_sub(&logits.exp().unwrap().sum_keepdim(1).unwrap().log().unwrap())
        .unwrap();
    let lab = labels();
    let mut onehot = vec![0f64; B * S * a.vocab_size];
    for (i, &t) in lab.iter().enumerate() {
        if t >= 0 {
            onehot[i * a.vocab_size + t as usize] = 1.0;
        }
    }
    let valid = lab.iter().filter(|&&l| l >= 0).count() as f64;
    let onehot = Tensor::from_vec(onehot, (B * S, a.vocab_size), &CPU).unwrap();
    let loss = ((logp * onehot).unwrap().sum_all().unwrap() * (-1.0 / valid)).unwrap();
    let grads = loss.backward().unwrap();
    let by_name = vars
        .iter()
        .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone()))
        .collect();
    (loss, by_name)
}

fn matches_reference(mask: AttnMaskType) {
    let mut model = build(mask);
    let (ref_loss, ref_grads) = reference(&model);
    let (loss, _) = run(&mut model, ActivationCheckpoint::None);
    let ref_loss = ref_loss.to_scalar::<f64>().unwrap();
    assert!(
        ((loss as f64 - ref_loss) / ref_loss).abs() < 1e-6,
        "loss {loss} vs reference {ref_loss}"
    );
    for p in model.params() {
        let e = rel_err(p.grad().unwrap(), &ref_grads[p.name()]).unwrap();
        assert!(e < 1e-6, "{}: gradient relative error {e:e}", p.name());
    }
}

#[test]
fn two_layer_model_matches_f64_reference_causal() {
    matches_reference(AttnMaskType::Causal);
}

#[test]
fn two_layer_model_matches_f64_reference_block_causal() {
    matches_reference(AttnMaskType::BlockCausal);
}

#[test]
fn activation_checkpointing_gives_bitwise_identical_gradients() {
    let modes = [
        ActivationCheckpoint::None,
        ActivationCheckpoint::Full,
        ActivationCheckpoint::EveryNth(2),
        ActivationCheckpoint::Op,
    ];
    let runs: Vec<(Llama3, f32, usize)> = modes
        .iter()
        .map(|&ac| {
            let mut m = build(AttnMaskType::BlockCausal);
            let (loss, peak) = run(&mut m, ac);
            (m, loss, peak)
        })
        .collect();
    let (base, base_loss, base_peak) = &runs[0];
    for ((m, loss, peak), mode) in runs.iter().zip(modes).skip(1) {
        assert_eq!(loss.to_bits(), base_loss.to_bits(), "{mode:?} loss");
        for (p, q) in m.params().iter().zip(base.params()) {
            assert!(
                bitwise_eq(p.grad().unwrap(), q.grad().unwrap()).unwrap(),
                "{mode:?}: {} differs",
                p.name()
            );
        }
        assert!(
            peak < base_peak,
            "{mode:?} should keep fewer activation bytes ({peak} vs {base_peak})"
        );
    }
}

#[test]
fn gradients_accumulate_over_microbatches() {
    let mut once = build(AttnMaskType::Causal);
    run(&mut once, ActivationCheckpoint::None);
    let mut twice = build(AttnMaskType::Causal);
    run(&mut twice, ActivationCheckpoint::None);
    run(&mut twice, ActivationCheckpoint::None);
    for (p, q) in once.params().iter().zip(twice.params()) {
        let doubled = (p.grad().unwrap() * 2.0).unwrap();
        assert!(
            rel_err(q.grad().unwrap(), &doubled).unwrap() < 1e-6,
            "{}",
            p.name()
        );
    }
}

#[test]
fn out_of_range_token_is_a_clear_error() {
    let m = build(AttnMaskType::Causal);
    let mut t = tokens();
    t[3] = 64;
    let err = m.make_batch(&t, B, S, None).unwrap_err().to_string();
    assert!(err.contains("64") && err.contains("vocab_size 64"), "{err}");
}

#[test]
fn units_cover_every_parameter_once() {
    let mut m = build(AttnMaskType::Causal);
    let units = m.units();
    let mut names: Vec<String> = Vec::new();
    for u in units {
        names.extend(m.unit_params_mut(u).iter().map(|p| p.name().to_string()));
    }
    let all: Vec<String> = m.params().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, all);
}
