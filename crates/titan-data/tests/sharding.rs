//! Ranks read disjoint contiguous blocks of records that together cover the dataset (HF
//! `split_dataset_by_node` on a map-style dataset).

mod common;

use common::{loader, torchtitan_tokenizer, BOS, EOS};
use titan_data::{contiguous_shard, DataLoaderConfig, DatasetRegistry, Error};

/// Ten documents of two letters each: 4 tokens apiece with BOS/EOS, so windows of 2 tokens
/// (seq_len 1) tile every rank's stream exactly and nothing is dropped.
fn documents() -> Vec<String> {
    (0..10u8)
        .map(|i| format!("{}{}", (b'a' + i) as char, (b'A' + i) as char))
        .collect()
}

/// The documents a finite loader for `rank` of `world` reads, rebuilt from its token stream.
fn documents_read(rank: usize, world: usize, prefetch: usize) -> Vec<String> {
    let mut registry = DatasetRegistry::empty();
    registry.register_documents("ten", documents());
    let cfg = DataLoaderConfig {
        dp_rank: rank,
        dp_world_size: world,
        infinite: false,
        prefetch,
        ..DataLoaderConfig::new("ten", 1, 3)
    };
    let mut loader = loader(&cfg, &torchtitan_tokenizer(), &registry);
    let mut stream = Vec::new();
    while let Some(batch) = loader.next_batch().unwrap() {
        for row in 0..batch.batch_size {
            stream.push(batch.input_row(row)[0]);
            stream.push(batch.label_row(row)[0] as u32);
        }
    }
    stream
        .split(|&t| t == EOS)
        .filter(|doc| !doc.is_empty())
        .map(|doc| {
            assert_eq!(doc[0], BOS);
            doc[1..].iter().map(|&t| t as u8 as char).collect()
        })
        .collect()
}

#[test]
fn ranks_read_disjoint_contiguous_blocks_covering_everything() {
    let all = documents();
    for world in [1usize, 2, 4] {
        let mut union = Vec::new();
        for rank in 0..world {
            let read = documents_read(rank, world, if rank % 2 == 0 { 0 } else { 2 });
            let block = contiguous_shard(all.len() as u64, rank, world);
            assert_eq!(
                read,
                all[block.start as usize..block.end as usize],
                "rank {rank} of {world}"
            );
            union.extend(read);
        }
        assert_eq!(
            union, all,
            "world size {world}: blocks are disjoint and complete"
        );
    }
    // 10 records over 4 ranks: 3, 3, 2, 2 as in Hugging Face.
    let sizes: Vec<usize> = (0..4).map(|r| documents_read(r, 4, 0).len()).collect();
    assert_eq!(sizes, vec![3, 3, 2, 2]);
}

#[test]
fn more_ranks_than_records_is_an_error() {
    let mut registry = DatasetRegistry::empty();
    registry.register_documents("three", vec!["a".into(), "b".into(), "c".into()]);
    let cfg = DataLoaderConfig {
        dp_rank: 3,
        dp_world_size: 4,
        ..DataLoaderConfig::new("three", 4, 1)
    };
    let Err(err) = titan_data::DataLoader::new(&cfg, torchtitan_tokenizer(), &registry) else {
        panic!("expected an error");
    };
    assert!(
        matches!(
            err,
            Error::EmptyShard {
                records: 3,
                rank: 3,
                world_size: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rank_outside_world_is_a_config_error() {
    let cfg = DataLoaderConfig {
        dp_rank: 2,
        dp_world_size: 2,
        ..DataLoaderConfig::new("sotu", 4, 1)
    };
    let Err(err) = titan_data::DataLoader::new(
        &cfg,
        torchtitan_tokenizer(),
        &DatasetRegistry::with_builtins(),
    ) else {
        panic!("expected an error");
    };
    assert!(err.to_string().contains("dp_rank = 2"), "{err}");
}
