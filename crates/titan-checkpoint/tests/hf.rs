//! Hugging Face interop on a tiny Llama: export (single file and sharded), import, direct
//! loads, tied embeddings, and the last save in HF format.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use common::{bits, checkpointer, config, tensor, Scratch};
use titan_checkpoint::hf::config::Llama3RopeScaling;
use titan_checkpoint::hf::files::{HfIndex, CONFIG_FILE, INDEX_FILE, SINGLE_FILE};
use titan_checkpoint::hf::llama::permute_to_hf;
use titan_checkpoint::{
    export_checkpoint, import_checkpoint, keys, load_hf, CheckpointConfig, Checkpointer,
    HfExportOptions, HfImportOptions, LlamaAdapter, LlamaArgs, LoadPlan, SaveRequest,
    ShardedTensor, StateDictAdapter, TensorRequest,
};

fn adapter() -> LlamaAdapter {
    LlamaAdapter::new(LlamaArgs {
        dim: 16,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
        vocab_size: 32,
        ffn_hidden_dim: 24,
        norm_eps: 1e-5,
        rope_theta: 500000.0,
        rope_scaling: Some(Llama3RopeScaling::llama3_default()),
        max_seq_len: 128,
    })
    .unwrap()
}

/// Random weights for every FQN of the tiny model.
fn weights(a: &LlamaAdapter) -> BTreeMap<String, Tensor> {
    a.fqn_shapes()
        .into_iter()
        .enumerate()
        .map(|(i, (fqn, shape))| (fqn, tensor(&shape, 1000 + i as u64)))
        .collect()
}

/// Save `w` as a complete single-rank checkpoint at `step` and return its folder.
fn save_model(folder: &Path, w: &BTreeMap<String, Tensor>, step: u64) -> std::path::PathBuf {
    let mut ck = checkpointer(config(folder));
    let mut req = SaveRequest::single(step, false);
    req.tensors = w
        .iter()
        .map(|(fqn, t)| ShardedTensor::full(keys::model(fqn), t.clone()))
        .collect();
    ck.save(req).unwrap();
    ck.step_dir(step)
}

fn read_hf_file(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = titan_checkpoint::host::candle_dtype(view.dtype()).unwrap();
            (
                name,
                titan_checkpoint::host::tensor_from_le_bytes(view.data(), dtype, view.shape())
                    .unwrap(),
            )
        })
        .collect()
}

fn all_requests(a: &LlamaAdapter) -> Vec<TensorRequest> {
    a.fqn_shapes()
        .into_iter()
        .map(|(fqn, shape)| TensorRequest::full(keys::model(&fqn), shape))
        .collect()
}

#[test]
fn export_writes_hf_names_layout_and_config() {
    let scratch = Scratch::new("hf-export");
    let a = adapter();
    let w = weights(&a);
    let step_dir = save_model(&scratch.folder(), &w, 3);
    let out = scratch.path().join("hf");
    export_checkpoint(&step_dir, &a, &out, &HfExportOptions::default()).unwrap();

    let hf = read_hf_file(&out.join(SINGLE_FILE));
    assert_eq!(hf.len(), w.len());
    assert!(!out.join(INDEX_FILE).exists());
    // Names per the key map; q/k permuted by their own head counts; the rest unchanged.
    let q = &hf["model.layers.1.self_attn.q_proj.weight"];
    assert_eq!(
        bits(q),
        bits(&permute_to_hf(&w["layers.1.attention.wq.weight"], 4).unwrap())
    );
    let k = &hf["model.layers.0.self_attn.k_proj.weight"];
    assert_eq!(
        bits(k),
        bits(&permute_to_hf(&w["layers.0.attention.wk.weight"], 2).unwrap())
    );
    assert_ne!(
        bits(k),
        bits(&w["layers.0.attention.wk.weight"]),
        "the permutation must move rows"
    );
    for (fqn, hf_name) in [
        (
            "layers.0.attention.wv.weight",
            "model.layers.0.self_attn.v_proj.weight",
        ),
        (
            "layers.1.feed_forward.w1.weight",
            "model.layers.1.mlp.gate_proj.weight",
        ),
        (
            "layers.1.feed_forward.w2.weight",
            "model.layers.1.mlp.down_proj.weight",
        ),
        ("output.weight", "lm_head.weight"),
        ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ] {
        assert_eq!(bits(&hf[hf_name]), bits(&w[fqn]), "{fqn}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(cfg["num_attention_heads"], 4);
    assert_eq!(cfg["num_key_value_heads"], 2);
    assert_eq!(cfg["intermediate_size"], 24);
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");

    // Exporting over a non-empty folder is refused.
    let err = export_checkpoint(&step_dir, &a, &out, &HfExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

#[test]
fn titan_to_hf_to_titan_is_exact_with_sharded_files() {
    let scratch = Scratch::new("hf-roundtrip");
    let a = adapter();
    let w = weights(&a);
    let step_dir = save_model(&scratch.folder(), &w, 1);
    let out = scratch.path().join("hf");
    // Tiny limit: several model-0000i-of-0000n files and an index.
    export_checkpoint(
        &step_dir,
        &a,
        &out,
        &HfExportOptions {
            dtype: None,
            max_shard_bytes: 4096,
        },
    )
    .unwrap();
    let index: HfIndex =
        serde_json::from_slice(&std::fs::read(out.join(INDEX_FILE)).unwrap()).unwrap();
    let files: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
    assert!(files.len() > 2, "{files:?}");
    assert!(files
        .iter()
        .all(|f| f.starts_with("model-")
            && f.ends_with(&format!("-of-{:05}.safetensors", files.len()))));
    assert_eq!(index.weight_map.len(), w.len());
    let total: u64 = w.values().map(|t| (t.elem_count() * 4) as u64).sum();
    assert_eq!(index.metadata["total_size"], total);
    assert!(!out.join(SINGLE_FILE).exists());

    // Import back to a Titan checkpoint and load it: bit-identical.
    let back = scratch.path().join("imported");
    import_checkpoint(&out, &a, &back, &HfImportOptions::default()).unwrap();
    let state =
        titan_checkpoint::load_step_dir(&back, &all_requests(&a), &Default::default(), false)
            .unwrap();
    assert!(state.model_only);
    for (fqn, t) in &w {
        assert_eq!(bits(&state.tensors[&keys::model(fqn)]), bits(t), "{fqn}");
    }
    // The whole-dict adapter functions agree with the file path.
    let round = a.from_hf(&a.to_hf(&w).unwrap()).unwrap();
    for (fqn, t) in &w {
        assert_eq!(bits(&round[fqn]), bits(t), "{fqn}");
    }
}

#[test]
fn hf_folder_loads_directly_into_sharded_regions() {
    let scratch = Scratch::new("hf-load");
    let a = adapter();
    let w = weights(&a);
    let step_dir = save_model(&scratch.folder(), &w, 1);
    let out = scratch.path().join("hf");
    export_checkpoint(
        &step_dir,
        &a,
        &out,
        &HfExportOptions {
            dtype: Some(DType::BF16),
            max_shard_bytes: u64::MAX,
        },
    )
    .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");

    // Rank 1 of 2 wants the second half of wq's rows; HF's permutation is undone first.
    let wq = "layers.0.attention.wq.weight";
    let reqs = [
        TensorRequest::dim0(keys::model(wq), vec![16, 16], 8, 8),
        TensorRequest::full(keys::model("norm.weight"), vec![16]),
        TensorRequest::full(keys::optimizer("norm.weight", "exp_avg"), vec![16]),
    ];
    let (got, skipped) = load_hf(&out, &a, &reqs, false).unwrap();
    let expected = w[wq]
        .to_dtype(DType::BF16)
        .unwrap()
        .narrow(0, 8, 8)
        .unwrap();
    assert_eq!(bits(&got[&keys::model(wq)]), bits(&expected));
    assert_eq!(skipped, vec![keys::optimizer("norm.weight", "exp_avg")]);

    // Through the Checkpointer: initial_load_in_hf.
    let mut ck = Checkpointer::new(CheckpointConfig {
        initial_load_path: Some(out.clone()),
        initial_load_in_hf: true,
        ..config(&scratch.path().join("run"))
    })
    .unwrap();
    ck.set_interactive(false);
    assert_eq!(
        ck.plan_load().unwrap(),
        LoadPlan::Initial {
            path: out.clone(),
            model_only: true,
            hf: true
        }
    );
    assert!(ck
        .resume(&reqs)
        .unwrap_err()
        .to_string()
        .contains("set_hf_adapter"));
    ck.set_hf_adapter(Arc::new(a.clone()));
    let state = ck.resume(&reqs).unwrap().unwrap();
    assert_eq!(bits(&state.tensors[&keys::model(wq)]), bits(&expected));
    assert!(state.model_only);

    // A config.json of another model is refused, naming the field.
    let mut other = a.args.clone();
    other.n_layers = 3;
    let err = load_hf(&out, &LlamaAdapter::new(other).unwrap(), &reqs, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_hidden_layers = 2"), "{err}");
}

#[test]
fn tied_embeddings_import_as_output_weight() {
    let scratch = Scratch::new("hf-tied");
    let a = adapter();
    let w = weights(&a);
    let step_dir = save_model(&scratch.folder(), &w, 1);
    let out = scratch.path().join("hf");
    export_checkpoint(&step_dir, &a, &out, &HfExportOptions::default()).unwrap();
    // Rewrite the file without lm_head, as a tied-embedding model ships.
    let mut hf = read_hf_file(&out.join(SINGLE_FILE));
    hf.remove("lm_head.weight");
    let map: std::collections::HashMap<String, Tensor> = hf.into_iter().collect();
    std::fs::remove_file(out.join(SINGLE_FILE)).unwrap();
    candle_core::safetensors::save(&map, out.join(SINGLE_FILE)).unwrap();

    let back = scratch.path().join("imported");
    import_checkpoint(
        &out,
        &a,
        &back,
        &HfImportOptions {
            dtype: Some(DType::F32),
        },
    )
    .unwrap();
    let state =
        titan_checkpoint::load_step_dir(&back, &all_requests(&a), &Default::default(), false)
            .unwrap();
    assert_eq!(
        bits(&state.tensors[&keys::model("output.weight")]),
        bits(&w["tok_embeddings.weight"])
    );
}

#[test]
fn last_save_in_hf_writes_an_hf_folder_inside_the_step() {
    let scratch = Scratch::new("hf-last");
    let a = adapter();
    let w = weights(&a);
    let cfg = CheckpointConfig {
        last_save_in_hf: true,
        export_dtype: titan_checkpoint::ExportDtype::Bfloat16,
        ..config(&scratch.folder())
    };
    let mut ck = checkpointer(cfg);
    let mut req = SaveRequest::single(9, true);
    req.tensors = w
        .iter()
        .map(|(fqn, t)| ShardedTensor::full(keys::model(fqn), t.clone()))
        .collect();
    assert!(ck
        .save(req.clone())
        .unwrap_err()
        .to_string()
        .contains("set_hf_adapter"));
    ck.set_hf_adapter(Arc::new(a.clone()));
    ck.save(req).unwrap();
    let hf_dir = ck.step_dir(9).join(titan_checkpoint::hf::EXPORT_SUBDIR);
    let hf = read_hf_file(&hf_dir.join(SINGLE_FILE));
    assert_eq!(hf["model.norm.weight"].dtype(), DType::BF16);
    assert_eq!(
        bits(&hf["model.norm.weight"]),
        bits(&w["norm.weight"].to_dtype(DType::BF16).unwrap())
    );
    assert!(hf_dir.join(CONFIG_FILE).is_file());
    // The native checkpoint is there too, and still resumes.
    assert_eq!(ck.latest_step().unwrap(), Some(9));
    ck.verify(9).unwrap();
}
