//! Packing, positions and end-of-data behaviour on a hand-written example with torchtitan's
//! test tokenizer (each ASCII letter is its own id).

mod common;

use common::{loader, take, torchtitan_tokenizer, BOS, EOS};
use titan_data::{DataLoaderConfig, DatasetRegistry};

fn registry() -> DatasetRegistry {
    let mut registry = DatasetRegistry::empty();
    registry.register_documents("abc", vec!["ab".into(), "cde".into(), "f".into()]);
    registry
}

const A: u32 = b'a' as u32;

#[test]
fn documents_pack_into_shifted_windows_with_document_positions() {
    // Token stream: [B a b E] [B c d e E] [B f E]; windows of seq_len + 1 = 4 tokens.
    let (b, c, d, e, f) = (A + 1, A + 2, A + 3, A + 4, A + 5);
    let cfg = DataLoaderConfig {
        infinite: false,
        emit_positions: true,
        prefetch: 0,
        ..DataLoaderConfig::new("abc", 3, 2)
    };
    let mut loader = loader(&cfg, &torchtitan_tokenizer(), &registry());
    let first = loader.next_batch().unwrap().unwrap();
    assert_eq!((first.batch_size, first.seq_len), (2, 3));
    assert_eq!(first.inputs, vec![BOS, A, b, BOS, c, d]);
    assert_eq!(
        first.labels,
        vec![A as i64, b as i64, EOS as i64, c as i64, d as i64, e as i64]
    );
    assert_eq!(first.positions, Some(vec![0, 1, 2, 0, 1, 2]));
    // The last window starts with the EOS of "cde": labels cross the document boundary as in
    // torchtitan 0.2.2, and the position restarts after the EOS.
    let last = loader.next_batch().unwrap().unwrap();
    assert_eq!(
        last.batch_size, 1,
        "a finite dataset's last batch may be short"
    );
    assert_eq!(last.inputs, vec![EOS, BOS, f]);
    assert_eq!(last.labels, vec![BOS as i64, f as i64, EOS as i64]);
    assert_eq!(last.positions, Some(vec![0, 0, 1]));
    assert!(loader.next_batch().unwrap().is_none());
    assert!(loader.next_batch().unwrap().is_none(), "stays finished");
    assert!(loader.state().exhausted);
}

#[test]
fn leftover_tokens_that_do_not_fill_a_window_are_dropped_at_the_end() {
    // 12 tokens, windows of 5: two windows (10 tokens), the last 2 tokens are dropped.
    let cfg = DataLoaderConfig {
        infinite: false,
        prefetch: 0,
        ..DataLoaderConfig::new("abc", 4, 8)
    };
    let batches = take(&mut loader(&cfg, &torchtitan_tokenizer(), &registry()), 10);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].batch_size, 2);
    assert_eq!(batches[0].input_row(0), &[BOS, A, A + 1, EOS]);
    assert_eq!(batches[0].input_row(1), &[A + 2, A + 3, A + 4, EOS]);
    assert_eq!(batches[0].label_row(1), &[100, 101, EOS as i64, BOS as i64]);
}

#[test]
fn infinite_mode_loops_with_an_epoch_counter() {
    let cfg = DataLoaderConfig {
        prefetch: 0,
        ..DataLoaderConfig::new("abc", 3, 1)
    };
    let mut loader = loader(&cfg, &torchtitan_tokenizer(), &registry());
    let batches = take(&mut loader, 6);
    assert_eq!(batches.len(), 6);
    // The 12-token epoch is exactly 3 windows, so epoch 1 repeats epoch 0.
    assert_eq!(batches[0], batches[3]);
    assert_eq!(batches[2], batches[5]);
    let state = loader.state();
    assert_eq!((state.epoch, state.sample_idx), (1, 3));
}

#[test]
fn positions_are_absent_unless_requested() {
    let cfg = DataLoaderConfig {
        prefetch: 0,
        ..DataLoaderConfig::new("abc", 3, 1)
    };
    let batch = loader(&cfg, &torchtitan_tokenizer(), &registry())
        .next_batch()
        .unwrap()
        .unwrap();
    assert!(batch.positions.is_none());
}

#[test]
fn token_ids_beyond_the_model_vocab_are_reported_with_the_record() {
    let cfg = DataLoaderConfig {
        prefetch: 0,
        vocab_size: Some(2003),
        ..DataLoaderConfig::new("abc", 3, 1)
    };
    let message = loader(&cfg, &torchtitan_tokenizer(), &registry())
        .next_batch()
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("2003") && message.contains("record 0") && message.contains("'abc'"),
        "{message}"
    );
}

#[test]
fn synthetic_tokens_bypass_the_tokenizer_and_respect_the_vocab() {
    let registry = DatasetRegistry::with_builtins();
    let cfg = DataLoaderConfig {
        vocab_size: Some(100),
        seed: 3,
        prefetch: 0,
        ..DataLoaderConfig::new("synthetic", 16, 4)
    };
    let tokenizer = torchtitan_tokenizer();
    let a = take(&mut loader(&cfg, &tokenizer, &registry), 3);
    let b = take(&mut loader(&cfg, &tokenizer, &registry), 3);
    assert_eq!(a, b, "deterministic for a seed");
    assert!(a.iter().all(|batch| batch.inputs.iter().all(|&t| t < 100)));
    assert_eq!(
        a[0].labels[..15],
        a[0].inputs[1..16]
            .iter()
            .map(|&t| i64::from(t))
            .collect::<Vec<_>>()[..]
    );
    let other_seed = take(
        &mut loader(
            &DataLoaderConfig {
                seed: 4,
                ..cfg.clone()
            },
            &tokenizer,
            &registry,
        ),
        1,
    );
    assert_ne!(a[0], other_seed[0]);
    let rank1 = take(
        &mut loader(
            &DataLoaderConfig {
                dp_rank: 1,
                dp_world_size: 2,
                ..cfg
            },
            &tokenizer,
            &registry,
        ),
        1,
    );
    assert_ne!(a[0], rank1[0]);
}
