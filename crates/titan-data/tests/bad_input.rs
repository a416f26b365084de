//! Bad input gives an error naming the file (and line or row) and what to do, never a panic.

mod common;

use std::path::Path;

use common::{jsonl, loader, parquet_bytes, torchtitan_tokenizer, TempDir};
use titan_data::corpus_build::gzip;
use titan_data::{DataLoader, DataLoaderConfig, DatasetRegistry, Error};

/// The error from opening `dataset` at `path` or from reading its first batches.
fn first_error(dataset: &str, path: &Path) -> Error {
    let cfg = DataLoaderConfig {
        dataset_path: Some(path.to_path_buf()),
        infinite: false,
        ..DataLoaderConfig::new(dataset, 4, 2)
    };
    let registry = DatasetRegistry::with_builtins();
    let mut loader = match DataLoader::new(&cfg, torchtitan_tokenizer(), &registry) {
        Ok(loader) => loader,
        Err(e) => return e,
    };
    loop {
        match loader.next_batch() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!(
                "{dataset} at {}: expected an error, the data read fine",
                path.display()
            ),
            Err(e) => return e,
        }
    }
}

fn assert_mentions(err: &Error, parts: &[&str]) {
    let message = err.to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "message {message:?} should mention {part:?}"
        );
    }
}

#[test]
fn missing_file() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("nope.jsonl");
    let err = first_error("json", &path);
    assert!(matches!(err, Error::MissingPath { .. }), "{err}");
    assert_mentions(&err, &["nope.jsonl", "does not exist", "dataset_path"]);
}

#[test]
fn invalid_json_names_the_line() {
    let dir = TempDir::new("badjson");
    let body = format!(
        "{}\n{{\"text\": \"ok\"}}\n{{\"text\": \"broken\"\n",
        jsonl(&["first document"]).trim_end()
    );
    let path = dir.write("data.jsonl", body);
    let err = first_error("json", &path);
    assert!(matches!(err, Error::InvalidJson { line: 3, .. }), "{err}");
    assert_mentions(
        &err,
        &["data.jsonl", "line 3", "not valid JSON", "fix or delete"],
    );
}

#[test]
fn invalid_json_inside_gzip_names_the_line() {
    let dir = TempDir::new("badgz");
    let path = dir.write(
        "data.jsonl.gz",
        gzip(b"{\"text\": \"a\"}\n\n[1, 2\n").unwrap(),
    );
    let err = first_error("json", &path);
    assert!(matches!(err, Error::InvalidJson { line: 3, .. }), "{err}");
    assert_mentions(&err, &["data.jsonl.gz", "line 3"]);
}

#[test]
fn non_utf8_json_line_and_text_file() {
    let dir = TempDir::new("utf8");
    let mut body = jsonl(&["fine"]).into_bytes();
    body.extend_from_slice(b"{\"text\": \"caf\xe9\"}\n");
    let path = dir.write("data.jsonl", body);
    let err = first_error("json", &path);
    assert!(matches!(err, Error::NotUtf8 { .. }), "{err}");
    assert_mentions(&err, &["data.jsonl", "line 2", "UTF-8", "offset 13"]);

    let text_dir = TempDir::new("utf8-txt");
    text_dir.write("a.txt", "good");
    text_dir.write("b.txt", b"bad \xff byte");
    let err = first_error("text", text_dir.path());
    assert_mentions(&err, &["b.txt", "UTF-8", "offset 4", "re-encode"]);
}

#[test]
fn record_without_the_text_field() {
    let dir = TempDir::new("nofield");
    let path = dir.write(
        "data.jsonl",
        "{\"text\": \"ok\"}\n{\"content\": \"x\", \"url\": \"u\"}\n",
    );
    let err = first_error("json", &path);
    assert!(matches!(err, Error::MissingTextField { .. }), "{err}");
    assert_mentions(
        &err,
        &[
            "data.jsonl",
            "line 2",
            "'text'",
            "content, url",
            "text_field",
        ],
    );

    let path = dir.write("numbers.jsonl", "{\"text\": 5}\n");
    assert_mentions(
        &first_error("json", &path),
        &["numbers.jsonl", "line 1", "a number instead of a string"],
    );
    let path = dir.write("array.jsonl", "[\"text\"]\n");
    assert_mentions(
        &first_error("json", &path),
        &["array element 0", "not an object"],
    );
}

#[test]
fn empty_datasets() {
    let dir = TempDir::new("empty");
    let path = dir.write("data.jsonl", "\n  \n");
    let err = first_error("json", &path);
    assert!(matches!(err, Error::EmptyDataset { .. }), "{err}");
    assert_mentions(&err, &["data.jsonl", "empty", "no JSON records"]);

    let folder = TempDir::new("empty-folder");
    folder.write("readme.md", "no documents here");
    assert_mentions(
        &first_error("text", folder.path()),
        &["empty", "no plain-text (*.txt) files", "dataset_path"],
    );
    assert_mentions(
        &first_error("parquet", folder.path()),
        &["empty", "no Parquet (*.parquet) files"],
    );
    let path = folder.write("none.parquet", parquet_bytes("text", &[], 1));
    assert_mentions(&first_error("parquet", &path), &["none.parquet", "no rows"]);
}

#[test]
fn parquet_without_the_column() {
    let dir = TempDir::new("parquet-col");
    let path = dir.write("shard.parquet", parquet_bytes("content", &["a", "b"], 1));
    let err = first_error("fineweb", &path);
    assert!(matches!(err, Error::MissingColumn { .. }), "{err}");
    assert_mentions(
        &err,
        &[
            "shard.parquet",
            "no column 'text'",
            "[content]",
            "text_field",
        ],
    );
    // With text_field set to that column it reads fine.
    let cfg = DataLoaderConfig {
        dataset_path: Some(path),
        text_field: "content".into(),
        ..DataLoaderConfig::new("parquet", 2, 1)
    };
    let batch = loader(
        &cfg,
        &torchtitan_tokenizer(),
        &DatasetRegistry::with_builtins(),
    )
    .next_batch()
    .unwrap();
    assert_eq!(batch.unwrap().inputs, vec![2002, b'a' as u32]);
}

#[test]
fn not_a_parquet_file() {
    let dir = TempDir::new("parquet-junk");
    let path = dir.write("junk.parquet", "this is not parquet at all");
    let err = first_error("parquet", &path);
    assert!(matches!(err, Error::Parquet { .. }), "{err}");
    assert_mentions(&err, &["junk.parquet", "valid Parquet"]);
}

#[test]
fn unknown_dataset_and_missing_path() {
    let registry = DatasetRegistry::with_builtins();
    let Err(err) = DataLoader::new(
        &DataLoaderConfig::new("c5", 4, 1),
        torchtitan_tokenizer(),
        &registry,
    ) else {
        panic!("expected an error");
    };
    assert_mentions(&err, &["'c5'", "sotu", "c4_test", "register"]);
    let Err(err) = DataLoader::new(
        &DataLoaderConfig::new("c4", 4, 1),
        torchtitan_tokenizer(),
        &registry,
    ) else {
        panic!("expected an error");
    };
    assert_mentions(&err, &["'c4'", "dataset_path", "c4-train"]);
    // Dataset names are case-insensitive, as in torchtitan.
    assert!(DataLoader::new(
        &DataLoaderConfig::new("SOTU", 4, 1),
        torchtitan_tokenizer(),
        &registry
    )
    .is_ok());
}

#[test]
fn after_an_error_the_loader_keeps_reporting_it() {
    let dir = TempDir::new("sticky");
    let path = dir.write("data.jsonl", "{\"text\": \"abc\"}\nnot json\n");
    for prefetch in [0, 2] {
        let cfg = DataLoaderConfig {
            dataset_path: Some(path.clone()),
            prefetch,
            ..DataLoaderConfig::new("json", 4, 1)
        };
        let mut loader = loader(
            &cfg,
            &torchtitan_tokenizer(),
            &DatasetRegistry::with_builtins(),
        );
        assert!(loader.next_batch().unwrap().is_some());
        let first = loader.next_batch().unwrap_err();
        assert!(
            matches!(first, Error::InvalidJson { line: 2, .. }),
            "{first}"
        );
        let again = loader.next_batch().unwrap_err();
        assert!(matches!(again, Error::LoaderFailed(_)), "{again}");
        assert_mentions(&again, &["line 2"]);
    }
}
