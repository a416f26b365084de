//! Save/load behaviour of the Checkpointer: round trips, atomicity (including a killed
//! writer), corruption, retention, resharding, load precedence and exclusions.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::{bits, checkpointer, config, tensor, Scratch};
use serde_json::json;
use titan_checkpoint::layout::{rank_file_name, step_dir_name, temp_dir_name, COMPLETE_MARKER};
use titan_checkpoint::{
    keys, AsyncMode, CheckpointConfig, Error, ExportDtype, LoadPlan, SaveRequest, ShardedTensor,
    TensorRequest,
};

/// A small "model + optimizer + blobs" state for one process.
fn full_request(step: u64, last_step: bool, seed: u64) -> SaveRequest {
    let mut req = SaveRequest::single(step, last_step);
    req.tensors = vec![
        ShardedTensor::full(keys::model("tok_embeddings.weight"), tensor(&[16, 8], seed)),
        ShardedTensor::full(keys::model("norm.weight"), tensor(&[8], seed + 1)),
        ShardedTensor::full(
            keys::optimizer("norm.weight", "exp_avg"),
            tensor(&[8], seed + 2),
        ),
        ShardedTensor::full(
            keys::optimizer("norm.weight", "step"),
            Tensor::new(&[step as i64], &Device::Cpu).unwrap(),
        ),
    ];
    req.blobs = BTreeMap::from([
        (keys::LR_SCHEDULER.to_string(), json!({"last_epoch": step})),
        (
            keys::TRAIN_STATE.to_string(),
            json!({"step": step, "ntokens_seen": step * 4096, "rng": [1, 2, 3]}),
        ),
        (keys::dataloader(0), json!({"sample_idx": step * 8})),
    ]);
    req
}

fn wants_of(req: &SaveRequest) -> Vec<TensorRequest> {
    req.tensors
        .iter()
        .map(|t| TensorRequest::full(t.name.clone(), t.global_shape.clone()))
        .collect()
}

fn assert_same_tensors(req: &SaveRequest, state: &titan_checkpoint::LoadedState) {
    for t in &req.tensors {
        let got = state
            .tensors
            .get(&t.name)
            .unwrap_or_else(|| panic!("{} not loaded", t.name));
        if t.tensor.dtype() == DType::I64 {
            assert_eq!(
                got.to_vec1::<i64>().unwrap(),
                t.tensor.to_vec1::<i64>().unwrap()
            );
        } else {
            assert_eq!(bits(got), bits(&t.tensor), "{}", t.name);
        }
    }
}

#[test]
fn round_trip_is_bitwise_sync_and_async() {
    for mode in [AsyncMode::Disabled, AsyncMode::Async] {
        let scratch = Scratch::new(&format!("roundtrip-{mode:?}"));
        let mut ck = checkpointer(CheckpointConfig {
            async_mode: mode,
            ..config(&scratch.folder())
        });
        let req = full_request(5, false, 11);
        ck.save(req.clone()).unwrap();
        ck.wait().unwrap();
        assert_eq!(ck.latest_step().unwrap(), Some(5));
        let state = ck.load_step(5, &wants_of(&req)).unwrap();
        assert_same_tensors(&req, &state);
        assert_eq!(state.blobs, req.blobs);
        assert!(!state.model_only && state.skipped.is_empty());
        ck.verify(5).unwrap();
        // No temporary or partial files are left in a complete step folder.
        let mut names: Vec<String> = std::fs::read_dir(ck.step_dir(5))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                COMPLETE_MARKER.to_string(),
                "index.json".into(),
                rank_file_name(0)
            ]
        );
    }
}

#[test]
fn async_saves_keep_one_in_flight_and_all_complete() {
    let scratch = Scratch::new("async-chain");
    let mut ck = checkpointer(CheckpointConfig {
        async_mode: AsyncMode::Async,
        ..config(&scratch.folder())
    });
    for step in 1..=3 {
        ck.save(full_request(step, false, step)).unwrap();
        assert_eq!(ck.pending_step(), Some(step));
    }
    ck.wait().unwrap();
    assert_eq!(ck.pending_step(), None);
    assert_eq!(ck.complete_steps().unwrap(), vec![1, 2, 3]);
    let req = full_request(2, false, 2);
    assert_same_tensors(&req, &ck.load_step(2, &wants_of(&req)).unwrap());
}

#[test]
fn last_save_is_model_only_in_export_dtype() {
    let scratch = Scratch::new("last-bf16");
    for (dtype, export) in [
        (DType::F32, ExportDtype::Float32),
        (DType::BF16, ExportDtype::Bfloat16),
    ] {
        let mut ck = checkpointer(CheckpointConfig {
            export_dtype: export,
            ..config(&scratch.folder())
        });
        let req = full_request(10, true, 3);
        ck.save(req.clone()).unwrap();
        let state = ck.load_step(10, &wants_of(&req)).unwrap();
        assert!(state.model_only);
        assert!(state.blobs.is_empty());
        assert_eq!(
            state.skipped,
            vec![
                keys::optimizer("norm.weight", "exp_avg"),
                keys::optimizer("norm.weight", "step")
            ]
        );
        for t in req
            .tensors
            .iter()
            .filter(|t| keys::top_level(&t.name) == keys::MODEL)
        {
            let got = &state.tensors[&t.name];
            assert_eq!(got.dtype(), dtype);
            assert_eq!(
                bits(got),
                bits(&t.tensor.to_dtype(dtype).unwrap()),
                "{}",
                t.name
            );
        }
    }
}

#[test]
fn should_save_follows_torchtitan() {
    let scratch = Scratch::new("should-save");
    let ck = checkpointer(CheckpointConfig {
        interval: 5,
        ..config(&scratch.folder())
    });
    let saved: Vec<u64> = (1..=12).filter(|&s| ck.should_save(s, s == 12)).collect();
    assert_eq!(saved, vec![5, 10, 12]);
    let first = checkpointer(CheckpointConfig {
        interval: 5,
        enable_first_step_checkpoint: true,
        ..config(&scratch.folder())
    });
    assert!(first.should_save(1, false));
    let off = checkpointer(CheckpointConfig {
        enable: false,
        ..config(&scratch.folder())
    });
    assert!(!off.should_save(5, true));
    let load_only = checkpointer(CheckpointConfig {
        load_only: true,
        ..config(&scratch.folder())
    });
    assert!(!load_only.should_save(5, true));
    assert!(
        ck.is_model_only_save(0, false)
            && ck.is_model_only_save(12, true)
            && !ck.is_model_only_save(10, false)
    );
}

/// Copy a complete step folder's files into `dst` (to fake interrupted saves).
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[test]
fn folders_without_the_marker_are_never_loaded() {
    let scratch = Scratch::new("atomic");
    let folder = scratch.folder();
    let mut ck = checkpointer(config(&folder));
    let req = full_request(1, false, 1);
    ck.save(req.clone()).unwrap();

    // An interrupted save (temporary folder with every file) and a step folder whose marker
    // never got written: both newer, both ignored.
    copy_dir(&ck.step_dir(1), &folder.join(temp_dir_name(2)));
    copy_dir(&ck.step_dir(1), &folder.join(step_dir_name(3)));
    std::fs::remove_file(folder.join(step_dir_name(3)).join(COMPLETE_MARKER)).unwrap();
    assert_eq!(ck.latest_step().unwrap(), Some(1));
    assert_eq!(
        ck.plan_load().unwrap(),
        LoadPlan::Resume {
            step: 1,
            dir: ck.step_dir(1)
        }
    );
    assert_same_tensors(&req, &ck.resume(&wants_of(&req)).unwrap().unwrap());
    let err = ck.load_step(3, &wants_of(&req)).unwrap_err();
    assert!(
        matches!(err, Error::StepNotFound { step: 3, ref available, .. } if available == &vec![1]),
        "{err}"
    );
    let err = titan_checkpoint::load_step_dir(
        &folder.join(step_dir_name(3)),
        &[],
        &Default::default(),
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains(COMPLETE_MARKER), "{err}");

    // A later save of step 2 replaces the interrupted debris.
    let req2 = full_request(2, false, 2);
    ck.save(req2.clone()).unwrap();
    assert_eq!(ck.latest_step().unwrap(), Some(2));
    assert_same_tensors(&req2, &ck.load_step(2, &wants_of(&req2)).unwrap());
    assert!(!folder.join(temp_dir_name(2)).exists());
}

const CRASH_CHILD_ENV: &str = "TITAN_CHECKPOINT_CRASH_CHILD_FOLDER";
const CRASH_ROWS: usize = 1 << 21; // 2M x 4 f32 = 32 MiB: the write takes long enough to be cut.

fn crash_request(step: u64) -> SaveRequest {
    let mut req = SaveRequest::single(step, false);
    let big = Tensor::arange(0f32, (CRASH_ROWS * 4) as f32, &Device::Cpu)
        .unwrap()
        .reshape((CRASH_ROWS, 4))
        .unwrap();
    req.tensors = vec![ShardedTensor::full(
        keys::model("big"),
        (big * step as f64).unwrap(),
    )];
    req.blobs
        .insert(keys::TRAIN_STATE.into(), json!({"step": step}));
    req
}

/// Not a test on its own: the child process of `sigkill_mid_save_keeps_previous_checkpoint`.
#[test]
#[ignore = "child process of sigkill_mid_save_keeps_previous_checkpoint"]
fn crash_child() {
    let folder = std::env::var(CRASH_CHILD_ENV)
        .expect("run by sigkill_mid_save_keeps_previous_checkpoint only");
    let mut ck = checkpointer(CheckpointConfig {
        async_mode: AsyncMode::Async,
        ..config(Path::new(&folder))
    });
    ck.save(crash_request(2)).unwrap();
    // Training would go on here; the parent kills us while the writer thread works.
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn sigkill_mid_save_keeps_previous_checkpoint() {
    let scratch = Scratch::new("sigkill");
    let folder = scratch.folder();
    let mut ck = checkpointer(config(&folder));
    ck.save(crash_request(1)).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, &folder)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shard = folder.join(temp_dir_name(2)).join(rank_file_name(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    // Kill once data has reached the file (the writer flushes in 8 MiB pieces).
    let written = |p: &Path| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false);
    while !written(&shard) && !ck.step_dir(2).exists() {
        assert!(
            Instant::now() < deadline,
            "child never started writing step 2"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "child exited before it was killed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush.
    child.wait().unwrap();

    // Whatever instant the kill hit, the latest complete checkpoint loads exactly; an
    // interrupted step 2 is never seen.
    let latest = ck.latest_step().unwrap().unwrap();
    assert!(latest == 1 || latest == 2);
    let want = [TensorRequest::full(keys::model("big"), vec![CRASH_ROWS, 4])];
    let state = ck.resume(&want).unwrap().unwrap();
    assert_eq!(state.step, latest);
    assert_eq!(
        bits(&state.tensors[&keys::model("big")]),
        bits(&crash_request(latest).tensors[0].tensor)
    );
    if latest == 1 {
        assert!(
            folder.join(temp_dir_name(2)).exists(),
            "the interrupted write leaves only its temporary folder"
        );
    }
    // Saving step 2 again after the crash works.
    ck.save(crash_request(2)).unwrap();
    assert_eq!(ck.latest_step().unwrap(), Some(2));
}

#[test]
fn corruption_and_mismatches_name_the_file_and_tensor() {
    let scratch = Scratch::new("corrupt");
    let folder = scratch.folder();
    let mut ck = checkpointer(config(&folder));
    let req = full_request(1, false, 1);
    ck.save(req.clone()).unwrap();
    let wants = wants_of(&req);
    let shard_path = ck.step_dir(1).join(rank_file_name(0));
    let pristine = std::fs::read(&shard_path).unwrap();

    // Missing tensor.
    let mut more = wants.clone();
    more.push(TensorRequest::full(
        keys::model("output.weight"),
        vec![16, 8],
    ));
    let err = ck.load_step(1, &more).unwrap_err();
    assert!(
        matches!(err, Error::MissingTensor { ref name, .. } if name == "model.output.weight"),
        "{err}"
    );

    // Shape mismatch.
    let mut wrong = wants.clone();
    wrong[0] = TensorRequest::full(keys::model("tok_embeddings.weight"), vec![32, 8]);
    let err = ck.load_step(1, &wrong).unwrap_err().to_string();
    assert!(
        err.contains("model.tok_embeddings.weight")
            && err.contains("[16, 8]")
            && err.contains("[32, 8]"),
        "{err}"
    );

    // One flipped bit in the data of `model.norm.weight`.
    let header = titan_checkpoint::safetensors_io::SafetensorsHeader::read(&shard_path).unwrap();
    let info = &header.tensors[&keys::model("norm.weight")];
    let mut altered = pristine.clone();
    altered[header.data_start as usize + info.data_offsets.0 + 5] ^= 0x10;
    std::fs::write(&shard_path, &altered).unwrap();
    let err = ck.load_step(1, &wants).unwrap_err();
    match &err {
        Error::TensorChecksum { file, tensor, .. } => {
            assert_eq!(file, &shard_path);
            assert_eq!(tensor, "model.norm.weight");
        }
        other => panic!("expected a checksum error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("rank-00000.safetensors") && msg.contains("model.norm.weight"),
        "{msg}"
    );
    assert!(matches!(
        ck.verify(1).unwrap_err(),
        Error::FileChecksum { .. }
    ));

    // Truncated file.
    std::fs::write(&shard_path, &pristine[..pristine.len() - 100]).unwrap();
    let err = ck.load_step(1, &wants).unwrap_err();
    assert!(
        matches!(err, Error::FileSize { ref file, .. } if file == &shard_path),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");

    // An edited index is refused before it is trusted.
    std::fs::write(&shard_path, &pristine).unwrap();
    let index_path = ck.step_dir(1).join("index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    std::fs::write(&index_path, index.replace("\"step\": 1", "\"step\": 7")).unwrap();
    let err = ck.load_step(1, &wants).unwrap_err();
    assert!(
        matches!(err, Error::FileChecksum { ref file, .. } if file == &index_path),
        "{err}"
    );
    std::fs::write(&index_path, index).unwrap();
    assert_same_tensors(&req, &ck.load_step(1, &wants).unwrap());
}

#[test]
fn keep_latest_k_removes_only_older_complete_checkpoints() {
    let scratch = Scratch::new("keep");
    let folder = scratch.folder();
    let mut ck = checkpointer(CheckpointConfig {
        keep_latest_k: 2,
        ..config(&folder)
    });
    // An interrupted save of a later step (as a crashed async writer leaves it).
    std::fs::create_dir_all(folder.join(temp_dir_name(9))).unwrap();
    std::fs::write(
        folder.join(temp_dir_name(9)).join(rank_file_name(0)),
        b"partial",
    )
    .unwrap();
    for step in 1..=4 {
        ck.save(full_request(step, false, step)).unwrap();
    }
    assert_eq!(ck.complete_steps().unwrap(), vec![3, 4]);
    assert!(
        folder.join(temp_dir_name(9)).exists(),
        "temporary folders are not retention's business"
    );
    // Re-saving an older step never deletes the checkpoint just written.
    ck.save(full_request(2, false, 2)).unwrap();
    assert_eq!(ck.complete_steps().unwrap(), vec![2, 3, 4]);
    ck.save(full_request(5, false, 5)).unwrap();
    assert_eq!(ck.complete_steps().unwrap(), vec![4, 5]);
}

/// Save a `[rows, 3]` tensor and a `[rows]` tensor sharded along dim 0 over
/// `layout.len()` ranks (one Checkpointer per rank, as separate processes would), finalize
/// on rank 0; then load them into `new_layout.len()` ranks and compare with the originals.
fn reshard(name: &str, layout: &[usize], new_layout: &[usize]) {
    let scratch = Scratch::new(&format!("reshard-{name}"));
    let folder = scratch.folder();
    let rows: usize = layout.iter().sum();
    assert_eq!(rows, new_layout.iter().sum::<usize>());
    let w = tensor(&[rows, 3], 42);
    let b = tensor(&[rows], 43);
    let world = layout.len();
    let mut ranks: Vec<_> = (0..world).map(|_| checkpointer(config(&folder))).collect();
    let mut start = 0;
    for (r, (&n, ck)) in layout.iter().zip(ranks.iter_mut()).enumerate() {
        let req = SaveRequest {
            step: 7,
            rank: r,
            world_size: world,
            last_step: false,
            tensors: vec![
                ShardedTensor::dim0(
                    keys::model("w"),
                    vec![rows, 3],
                    start,
                    w.narrow(0, start, n).unwrap(),
                ),
                ShardedTensor::dim0(
                    keys::optimizer("b", "exp_avg"),
                    vec![rows],
                    start,
                    b.narrow(0, start, n).unwrap(),
                ),
            ],
            blobs: BTreeMap::from([
                (keys::dataloader(r), json!({"rank": r})),
                (keys::TRAIN_STATE.into(), json!({"step": 7})),
            ]),
        };
        ck.save(req).unwrap();
        start += n;
    }
    for ck in ranks.iter_mut() {
        ck.wait().unwrap(); // then a barrier, in a real job
    }
    if world > 1 {
        assert_eq!(
            ranks[0].latest_step().unwrap(),
            None,
            "not complete before finalize"
        );
        ranks[0].finalize(7).unwrap();
    }

    let mut start = 0;
    for &n in new_layout {
        let ck = checkpointer(config(&folder));
        let wants = [
            TensorRequest::dim0(keys::model("w"), vec![rows, 3], start, n),
            TensorRequest::dim0(keys::optimizer("b", "exp_avg"), vec![rows], start, n),
        ];
        let state = ck.resume(&wants).unwrap().unwrap();
        assert_eq!(
            bits(&state.tensors[&keys::model("w")]),
            bits(&w.narrow(0, start, n).unwrap()),
            "{name} w at {start}+{n}"
        );
        assert_eq!(
            bits(&state.tensors[&keys::optimizer("b", "exp_avg")]),
            bits(&b.narrow(0, start, n).unwrap())
        );
        assert_eq!(state.blobs.len(), world + 1);
        assert_eq!(
            state.blobs[&keys::dataloader(world - 1)],
            json!({"rank": world - 1})
        );
        start += n;
    }
}

#[test]
fn reshard_2_to_4() {
    reshard("2to4", &[4, 4], &[2, 2, 2, 2]);
}

#[test]
fn reshard_2_to_1() {
    reshard("2to1", &[4, 4], &[8]);
}

#[test]
fn reshard_4_to_2() {
    reshard("4to2", &[2, 2, 2, 2], &[4, 4]);
}

#[test]
fn reshard_3_uneven_to_2() {
    reshard("3to2", &[3, 3, 1], &[4, 3]);
    reshard("3to2-empty", &[5, 3, 0], &[4, 4]);
}

#[test]
fn reshard_2d_tiles_to_row_shards() {
    // Four ranks save 2x2 tiles (FSDP x TP); two ranks load row halves.
    let scratch = Scratch::new("reshard-2d");
    let folder = scratch.folder();
    let w = tensor(&[6, 4], 5);
    let tiles = [(0, 0, 4, 1), (0, 1, 4, 3), (4, 0, 2, 1), (4, 1, 2, 3)];
    let mut ranks: Vec<_> = (0..4).map(|_| checkpointer(config(&folder))).collect();
    for (r, &(r0, c0, nr, nc)) in tiles.iter().enumerate() {
        let shard = w.narrow(0, r0, nr).unwrap().narrow(1, c0, nc).unwrap();
        let req = SaveRequest {
            step: 1,
            rank: r,
            world_size: 4,
            tensors: vec![ShardedTensor {
                name: keys::model("w"),
                global_shape: vec![6, 4],
                offset: vec![r0, c0],
                tensor: shard,
            }],
            ..Default::default()
        };
        ranks[r].save(req).unwrap();
    }
    ranks[0].finalize(1).unwrap();
    for (start, n) in [(0, 3), (3, 3)] {
        let state = ranks[1]
            .load_step(
                1,
                &[TensorRequest::dim0(keys::model("w"), vec![6, 4], start, n)],
            )
            .unwrap();
        assert_eq!(
            bits(&state.tensors[&keys::model("w")]),
            bits(&w.narrow(0, start, n).unwrap())
        );
    }
}

#[test]
fn finalize_refuses_missing_ranks_and_conflicting_blobs() {
    let scratch = Scratch::new("finalize");
    let folder = scratch.folder();
    let mut r0 = checkpointer(config(&folder));
    let mut req = full_request(3, false, 1);
    req.world_size = 2;
    r0.save(req.clone()).unwrap();
    let err = r0.finalize(3).unwrap_err();
    assert!(matches!(err, Error::MissingRank { rank: 1, .. }), "{err}");
    assert_eq!(r0.latest_step().unwrap(), None);

    // Rank 1 gives `train_state` another value.
    let mut r1 = checkpointer(config(&folder));
    let mut req1 = SaveRequest {
        step: 3,
        rank: 1,
        world_size: 2,
        ..Default::default()
    };
    req1.blobs
        .insert(keys::TRAIN_STATE.into(), json!({"step": 4}));
    r1.save(req1).unwrap();
    let err = r0.finalize(3).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BlobConflict {
                first_rank: 0,
                second_rank: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn exclusions_and_unknown_keys() {
    let scratch = Scratch::new("exclude");
    let folder = scratch.folder();
    let mut ck = checkpointer(config(&folder));
    let req = full_request(4, false, 9);
    ck.save(req.clone()).unwrap();

    let ex = checkpointer(CheckpointConfig {
        exclude_from_loading: vec!["optimizer".into(), "dataloader".into()],
        ..config(&folder)
    });
    let state = ex.resume(&wants_of(&req)).unwrap().unwrap();
    assert_eq!(state.tensors.len(), 2);
    assert_eq!(state.skipped.len(), 2);
    assert!(
        state.blobs.contains_key(keys::LR_SCHEDULER)
            && !state.blobs.contains_key(&keys::dataloader(0))
    );

    let typo = checkpointer(CheckpointConfig {
        exclude_from_loading: vec!["optimiser".into()],
        ..config(&folder)
    });
    let err = typo.resume(&wants_of(&req)).unwrap_err();
    assert!(
        matches!(err, Error::UnknownExcludeKey { ref key, .. } if key == "optimiser"),
        "{err}"
    );
}

#[test]
fn load_precedence_folder_then_initial_path_then_fresh() {
    let scratch = Scratch::new("precedence");
    let seed_folder = scratch.path().join("seed");
    let run_folder = scratch.folder();

    // A seed checkpoint: step 0, model only.
    let mut seed = checkpointer(CheckpointConfig {
        last_save_model_only: false,
        ..config(&seed_folder)
    });
    let seed_req = full_request(0, true, 100);
    seed.save(seed_req.clone()).unwrap();
    let seed_dir = seed.step_dir(0);
    let state = seed.load_step(0, &wants_of(&seed_req)).unwrap();
    assert!(
        state.model_only && state.tensors.len() == 2,
        "step 0 holds and loads the model only"
    );

    let fresh = checkpointer(config(&run_folder));
    assert_eq!(fresh.plan_load().unwrap(), LoadPlan::Fresh);
    assert!(fresh.resume(&wants_of(&seed_req)).unwrap().is_none());

    let cfg = CheckpointConfig {
        initial_load_path: Some(seed_dir.clone()),
        ..config(&run_folder)
    };
    let mut ck = checkpointer(cfg.clone());
    assert_eq!(
        ck.plan_load().unwrap(),
        LoadPlan::Initial {
            path: seed_dir.clone(),
            model_only: true,
            hf: false
        }
    );
    let state = ck.resume(&wants_of(&seed_req)).unwrap().unwrap();
    assert_eq!(
        bits(&state.tensors[&keys::model("norm.weight")]),
        bits(&seed_req.tensors[1].tensor)
    );

    // Once the run folder has a checkpoint, it wins over initial_load_path.
    ck.save(full_request(6, false, 6)).unwrap();
    assert_eq!(
        ck.plan_load().unwrap(),
        LoadPlan::Resume {
            step: 6,
            dir: ck.step_dir(6)
        }
    );
    let pinned = checkpointer(CheckpointConfig {
        load_step: 5,
        ..cfg.clone()
    });
    assert!(matches!(
        pinned.plan_load().unwrap_err(),
        Error::StepNotFound { step: 5, .. }
    ));

    let missing = checkpointer(CheckpointConfig {
        initial_load_path: Some(scratch.path().join("nope")),
        ..config(&scratch.path().join("other"))
    });
    assert!(missing
        .plan_load()
        .unwrap_err()
        .to_string()
        .contains("initial_load_path"));
}

#[test]
fn bad_requests_are_refused_before_writing() {
    let scratch = Scratch::new("bad-req");
    let mut ck = checkpointer(config(&scratch.folder()));
    let mut req = SaveRequest::single(1, false);
    req.tensors = vec![ShardedTensor::dim0(
        keys::model("w"),
        vec![4, 2],
        3,
        tensor(&[2, 2], 1),
    )];
    let err = ck.save(req).unwrap_err().to_string();
    assert!(err.contains("model.w") && err.contains("exceeds"), "{err}");
    let mut req = SaveRequest::single(1, false);
    req.tensors = vec![ShardedTensor::full("w", tensor(&[2], 1))];
    assert!(ck
        .save(req)
        .unwrap_err()
        .to_string()
        .contains("top-level key"));
    let mut off = checkpointer(CheckpointConfig {
        enable: false,
        ..config(&scratch.folder())
    });
    assert!(off.save(SaveRequest::single(1, false)).is_err());
    assert_eq!(ck.latest_step().unwrap(), None);
}
