//! Users add datasets without forking: implement `DocumentSource`, register a factory.

mod common;

use std::sync::Arc;

use common::{loader, take, torchtitan_tokenizer, BOS, EOS};
use titan_data::{DataLoaderConfig, DatasetRegistry, DocumentReader, DocumentSource, Result};

/// Generates "record0", "record1", ... on the fly: nothing stored, position = record index.
struct Numbered {
    count: u64,
}

struct NumberedReader {
    next: u64,
    count: u64,
}

impl DocumentSource for Numbered {
    fn describe(&self) -> String {
        format!("{} generated records", self.count)
    }

    fn num_records(&self) -> u64 {
        self.count
    }

    fn open_at(&self, start: u64) -> Result<Box<dyn DocumentReader>> {
        Ok(Box::new(NumberedReader {
            next: start,
            count: self.count,
        }))
    }
}

impl DocumentReader for NumberedReader {
    fn next_document(&mut self) -> Result<Option<String>> {
        if self.next >= self.count {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(format!("record{}", self.next - 1)))
    }
}

fn registry() -> DatasetRegistry {
    let mut registry = DatasetRegistry::with_builtins();
    registry.register("numbered", |request| {
        // The factory sees the user's dataset_path; here it is unused.
        assert!(request.path.is_none());
        Ok(Arc::new(Numbered { count: 50 }) as Arc<dyn DocumentSource>)
    });
    registry.register("numbered_validation", |_| {
        Ok(Arc::new(Numbered { count: 3 }) as Arc<dyn DocumentSource>)
    });
    registry
        .set_validation("numbered", "numbered_validation")
        .unwrap();
    registry
}

#[test]
fn registered_source_feeds_the_loader_and_resumes() {
    let registry = registry();
    assert!(registry.names().contains(&"numbered"));
    let tokenizer = torchtitan_tokenizer();
    let cfg = DataLoaderConfig::new("Numbered", 8, 2);
    let mut first = loader(&cfg, &tokenizer, &registry);
    let batch = first.next_batch().unwrap().unwrap();
    let expected: Vec<u32> = std::iter::once(BOS)
        .chain("record0".bytes().map(u32::from))
        .collect();
    assert_eq!(batch.input_row(0), &expected[..]);
    assert_eq!(batch.label_row(0)[7], i64::from(EOS));
    let saved = first.state();
    let reference = take(&mut first, 5);
    let mut resumed = loader(&cfg, &tokenizer, &registry);
    resumed.load_state(&saved).unwrap();
    assert_eq!(take(&mut resumed, 5), reference);
}

#[test]
fn registered_validation_split_is_finite() {
    let registry = registry();
    let train = DataLoaderConfig::new("numbered", 4, 1);
    let validation = train.validation(&registry).unwrap();
    assert_eq!(validation.dataset, "numbered_validation");
    assert!(!validation.infinite);
    // 3 records of 9 tokens (BOS + "recordN" + EOS) = 27 tokens = 5 windows of 5.
    let batches = take(
        &mut loader(&validation, &torchtitan_tokenizer(), &registry),
        100,
    );
    assert_eq!(batches.len(), 5);
    assert!(DataLoaderConfig::new("json", 4, 1)
        .validation(&registry)
        .is_err());
}

#[test]
fn in_memory_documents() {
    let mut registry = DatasetRegistry::empty();
    registry.register_documents("Tiny", vec!["hello".into()]);
    assert_eq!(registry.names(), vec!["tiny"]);
    let cfg = DataLoaderConfig::new("tiny", 6, 1);
    let batch = loader(&cfg, &torchtitan_tokenizer(), &registry)
        .next_batch()
        .unwrap()
        .unwrap();
    assert_eq!(batch.inputs, vec![BOS, 104, 101, 108, 108, 111]);
}
