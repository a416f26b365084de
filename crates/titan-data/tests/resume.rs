//! A loader restored from a saved state yields exactly the batches an uninterrupted loader
//! would, whatever the prefetch thread had read ahead, for every kind of source.

mod common;

use std::sync::Arc;

use common::{jsonl, loader, parquet_bytes, take, torchtitan_tokenizer, TempDir};
use titan_data::corpus_build::gzip;
use titan_data::{embedded, DataLoaderConfig, DatasetRegistry, Error, LoaderState, Tokenizer};

/// Documents of assorted lengths (some longer than a window, some tiny).
fn texts() -> Vec<String> {
    (0..9)
        .map(|i| {
            let letter = (b'a' + i as u8) as char;
            std::iter::repeat_n(letter, 1 + (i * 7) % 23).collect()
        })
        .collect()
}

fn check_resume(
    registry: &DatasetRegistry,
    cfg: &DataLoaderConfig,
    tokenizer: &Arc<Tokenizer>,
    n: usize,
) {
    let reference = take(
        &mut loader(
            &DataLoaderConfig {
                prefetch: 0,
                ..cfg.clone()
            },
            tokenizer,
            registry,
        ),
        n,
    );
    assert!(
        reference.len() > 3,
        "{}: test needs several batches",
        cfg.dataset
    );
    let n = reference.len();
    for cut in [0, 1, n / 2, n - 1] {
        for (before, after) in [(0, 0), (3, 0), (0, 2), (1, 4)] {
            let mut first = loader(
                &DataLoaderConfig {
                    prefetch: before,
                    ..cfg.clone()
                },
                tokenizer,
                registry,
            );
            assert_eq!(
                take(&mut first, cut),
                reference[..cut],
                "{} cut {cut}",
                cfg.dataset
            );
            // Give the prefetch thread time to read ahead; the saved state must ignore that.
            std::thread::sleep(std::time::Duration::from_millis(2));
            let saved = LoaderState::from_json(&first.state().to_json()).unwrap();
            let mut resumed = loader(
                &DataLoaderConfig {
                    prefetch: after,
                    ..cfg.clone()
                },
                tokenizer,
                registry,
            );
            resumed.load_state(&saved).unwrap();
            let rest = take(&mut resumed, n - cut);
            assert_eq!(
                rest,
                reference[cut..],
                "{}: resumed at batch {cut} (prefetch {before} -> {after})",
                cfg.dataset
            );
            // Rewinding a loader that already ran past the saved point also works.
            take(&mut first, 2);
            first.load_state(&saved).unwrap();
            assert_eq!(
                take(&mut first, n - cut),
                reference[cut..],
                "{}: rewound to batch {cut}",
                cfg.dataset
            );
        }
    }
}

fn cfg(dataset: &str, seq_len: usize, batch: usize) -> DataLoaderConfig {
    DataLoaderConfig {
        emit_positions: true,
        ..DataLoaderConfig::new(dataset, seq_len, batch)
    }
}

#[test]
fn in_memory_across_epochs() {
    let mut registry = DatasetRegistry::empty();
    registry.register_documents("mem", texts());
    check_resume(&registry, &cfg("mem", 8, 2), &torchtitan_tokenizer(), 30);
}

#[test]
fn json_lines_files_gzip_and_blank_lines_on_two_ranks() {
    let dir = TempDir::new("resume-json");
    let all = texts();
    let strs: Vec<&str> = all.iter().map(String::as_str).collect();
    dir.write("part-0.jsonl", jsonl(&strs[..4]).replace('\n', "\n\n"));
    dir.write(
        "part-1.json.gz",
        gzip(jsonl(&strs[4..]).as_bytes()).unwrap(),
    );
    let registry = DatasetRegistry::with_builtins();
    for rank in 0..2 {
        let cfg = DataLoaderConfig {
            dataset_path: Some(dir.path().to_path_buf()),
            dp_rank: rank,
            dp_world_size: 2,
            ..cfg("json", 6, 2)
        };
        check_resume(&registry, &cfg, &torchtitan_tokenizer(), 16);
    }
}

#[test]
fn finite_json_ends_at_the_same_place() {
    let dir = TempDir::new("resume-finite");
    let all = texts();
    let strs: Vec<&str> = all.iter().map(String::as_str).collect();
    dir.write("data.json", jsonl(&strs));
    let cfg = DataLoaderConfig {
        dataset_path: Some(dir.path().to_path_buf()),
        infinite: false,
        ..cfg("c4_test", 5, 3)
    };
    // More batches than exist: the resumed loader must also stop at the end.
    check_resume(
        &DatasetRegistry::with_builtins(),
        &cfg,
        &torchtitan_tokenizer(),
        100,
    );
}

#[test]
fn parquet_row_groups_and_files() {
    let dir = TempDir::new("resume-parquet");
    let all = texts();
    let strs: Vec<&str> = all.iter().map(String::as_str).collect();
    dir.write("a.parquet", parquet_bytes("text", &strs[..5], 2));
    dir.write("b.parquet", parquet_bytes("text", &strs[5..], 3));
    let registry = DatasetRegistry::with_builtins();
    for rank in 0..2 {
        let cfg = DataLoaderConfig {
            dataset_path: Some(dir.path().to_path_buf()),
            dp_rank: rank,
            dp_world_size: 2,
            ..cfg("fineweb", 7, 2)
        };
        check_resume(&registry, &cfg, &torchtitan_tokenizer(), 14);
    }
}

#[test]
fn text_folder() {
    let dir = TempDir::new("resume-text");
    for (i, text) in texts().iter().enumerate() {
        dir.write(&format!("sub{}/doc{i}.txt", i % 2), text);
    }
    dir.write("notes.md", "not a document");
    let cfg = DataLoaderConfig {
        dataset_path: Some(dir.path().to_path_buf()),
        ..cfg("text", 9, 1)
    };
    check_resume(
        &DatasetRegistry::with_builtins(),
        &cfg,
        &torchtitan_tokenizer(),
        20,
    );
}

#[test]
fn embedded_corpus_and_synthetic() {
    let tokenizer = Arc::new(embedded::tokenizer().unwrap());
    let registry = DatasetRegistry::with_builtins();
    check_resume(&registry, &cfg("sotu", 32, 2), &tokenizer, 8);
    check_resume(
        &registry,
        &DataLoaderConfig {
            seed: 9,
            ..cfg("synthetic", 16, 2)
        },
        &tokenizer,
        8,
    );
}

#[test]
fn state_from_another_layout_is_rejected() {
    let mut registry = DatasetRegistry::empty();
    registry.register_documents("mem", texts());
    let tokenizer = torchtitan_tokenizer();
    let mut rank0 = loader(
        &DataLoaderConfig {
            dp_world_size: 2,
            ..cfg("mem", 4, 1)
        },
        &tokenizer,
        &registry,
    );
    take(&mut rank0, 2);
    let saved = rank0.state();
    let mut single = loader(&cfg("mem", 4, 1), &tokenizer, &registry);
    let err = single.load_state(&saved).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StateMismatch {
                key: "dp_world_size",
                ..
            }
        ),
        "{err}"
    );
    let mut rank1 = loader(
        &DataLoaderConfig {
            dp_rank: 1,
            dp_world_size: 2,
            ..cfg("mem", 4, 1)
        },
        &tokenizer,
        &registry,
    );
    assert!(rank1
        .load_state(&saved)
        .unwrap_err()
        .to_string()
        .contains("dp_rank"));
    assert!(matches!(
        LoaderState::from_json("{not json"),
        Err(Error::StateFormat(_))
    ));
}

#[test]
fn wait_time_accumulates() {
    let mut registry = DatasetRegistry::empty();
    registry.register_documents("mem", texts());
    let mut loader = loader(&cfg("mem", 8, 2), &torchtitan_tokenizer(), &registry);
    take(&mut loader, 3);
    assert!(loader.wait_time() >= loader.last_wait());
    assert!(loader.wait_time() > std::time::Duration::ZERO);
}
