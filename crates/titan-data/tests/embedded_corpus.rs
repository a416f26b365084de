//! The embedded corpus, its splits and its tokenizer.

use std::sync::Arc;

use titan_data::corpus_build::{train_tokenizer, TOKENIZER_VOCAB_SIZE};
use titan_data::{embedded, DataLoader, DataLoaderConfig, DatasetRegistry, DocumentSource};

#[test]
fn splits_hold_every_address_once() {
    let train = embedded::sotu_train().unwrap();
    let validation = embedded::sotu_validation().unwrap();
    // 233 addresses, the latest 5% (rounded up) held out.
    assert_eq!((train.num_records(), validation.num_records()), (221, 12));
    assert!(train.documents()[0]
        .starts_with("Fellow-Citizens of the Senate and House of Representatives"));
    assert!(validation.documents()[11].contains("(Applause.)"));
    let bytes: usize = train
        .documents()
        .iter()
        .chain(validation.documents())
        .map(String::len)
        .sum();
    assert!(bytes > 10_000_000, "{bytes} bytes of text");
    let total = embedded::SOTU_TRAIN_JSONL_GZ.len()
        + embedded::SOTU_VALIDATION_JSONL_GZ.len()
        + embedded::TOKENIZER_JSON_GZ.len();
    assert!(total < 8 << 20, "embedded assets are {total} bytes");
}

#[test]
fn validation_loader_is_finite_and_covers_the_split() {
    let tokenizer = Arc::new(embedded::tokenizer().unwrap());
    let registry = DatasetRegistry::with_builtins();
    let train = DataLoaderConfig::new("sotu", 2048, 8);
    let cfg = train.validation(&registry).unwrap();
    assert_eq!(cfg.dataset, "sotu_validation");
    let mut loader = DataLoader::new(&cfg, Arc::clone(&tokenizer), &registry).unwrap();
    let mut tokens = 0;
    while let Some(batch) = loader.next_batch().unwrap() {
        tokens += batch.num_tokens();
    }
    // Every window but the final partial one: the split tokenizes to about 110k tokens.
    let expected: usize = embedded::sotu_validation()
        .unwrap()
        .documents()
        .iter()
        .map(|d| tokenizer.encode(d, true, true).unwrap().len())
        .sum();
    assert_eq!(tokens, (expected / 2049) * 2048);
}

#[test]
fn committed_tokenizer_is_what_training_on_the_train_split_gives() {
    let train = embedded::sotu_train().unwrap();
    let texts: Vec<&str> = train.documents().iter().map(String::as_str).collect();
    let trained = train_tokenizer(&texts, TOKENIZER_VOCAB_SIZE).unwrap();
    let mut committed = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(embedded::TOKENIZER_JSON_GZ),
        &mut committed,
    )
    .unwrap();
    assert!(
        trained.tokenizer_json == committed,
        "retrained tokenizer differs from assets/tokenizer; run `cargo xtask tokenizer`"
    );
    assert_eq!(
        trained.tokenizer_config_json.as_bytes(),
        embedded::TOKENIZER_CONFIG_JSON
    );
}
