//! The corpus and tokenizer compiled into the crate, so a fresh machine trains with no network:
//! the public-domain State of the Union addresses (1790-2021; train and validation splits) and
//! Titan's 8192-id byte-level BPE tokenizer trained on the train split. See `assets/README.md`
//! for provenance and `cargo xtask tokenizer` to rebuild them.

use std::io::Read;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::source::InMemorySource;
use crate::tokenizer::Tokenizer;

/// Train split: `{"text": ...}` per line, gzip-compressed.
pub const SOTU_TRAIN_JSONL_GZ: &[u8] = include_bytes!("../assets/sotu/train.jsonl.gz");
/// Validation split (the most recent addresses), same format.
pub const SOTU_VALIDATION_JSONL_GZ: &[u8] = include_bytes!("../assets/sotu/validation.jsonl.gz");
/// Titan's SOTU tokenizer, gzip-compressed `tokenizer.json`.
pub const TOKENIZER_JSON_GZ: &[u8] = include_bytes!("../assets/tokenizer/tokenizer.json.gz");
/// Its `tokenizer_config.json` (BOS `<|begin_of_text|>` = 0, EOS `<|end_of_text|>` = 1).
pub const TOKENIZER_CONFIG_JSON: &[u8] =
    include_bytes!("../assets/tokenizer/tokenizer_config.json");

static TRAIN: OnceLock<Arc<Vec<String>>> = OnceLock::new();
static VALIDATION: OnceLock<Arc<Vec<String>>> = OnceLock::new();

fn documents(
    cache: &OnceLock<Arc<Vec<String>>>,
    bytes: &[u8],
    origin: &str,
) -> Result<Arc<Vec<String>>> {
    if let Some(documents) = cache.get() {
        return Ok(Arc::clone(documents));
    }
    let parsed = Arc::new(crate::source::read_jsonl_bytes(bytes, origin, "text")?);
    Ok(Arc::clone(cache.get_or_init(|| parsed)))
}

/// The train split's addresses, oldest first.
pub fn sotu_train() -> Result<InMemorySource> {
    let docs = documents(&TRAIN, SOTU_TRAIN_JSONL_GZ, "embedded:sotu/train.jsonl.gz")?;
    Ok(InMemorySource::shared("embedded:sotu/train.jsonl.gz", docs))
}

/// The validation split's addresses, oldest first.
pub fn sotu_validation() -> Result<InMemorySource> {
    let docs = documents(
        &VALIDATION,
        SOTU_VALIDATION_JSONL_GZ,
        "embedded:sotu/validation.jsonl.gz",
    )?;
    Ok(InMemorySource::shared(
        "embedded:sotu/validation.jsonl.gz",
        docs,
    ))
}

/// Titan's SOTU tokenizer, with BOS and EOS from its config.
pub fn tokenizer() -> Result<Tokenizer> {
    let origin = "embedded:tokenizer/tokenizer.json.gz";
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(TOKENIZER_JSON_GZ)
        .read_to_end(&mut json)
        .map_err(|e| Error::io(origin, "decompress", e))?;
    Tokenizer::from_bytes(&json, Some(TOKENIZER_CONFIG_JSON), origin)
}
