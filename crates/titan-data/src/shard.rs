//! Which records a data-parallel rank reads: Hugging Face `split_dataset_by_node` on a map-style
//! dataset, i.e. `Dataset.shard(num_shards=world, index=rank, contiguous=True)`: contiguous
//! blocks whose sizes differ by at most one, the first `records % world` blocks one longer.

use std::ops::Range;

/// Records `[start, end)` of rank `rank` out of `world_size` ranks over `num_records` records.
pub fn contiguous_shard(num_records: u64, rank: usize, world_size: usize) -> Range<u64> {
    let (rank, world) = (rank as u64, world_size.max(1) as u64);
    let base = num_records / world;
    let extra = num_records % world;
    let start = base * rank + rank.min(extra);
    let len = base + u64::from(rank < extra);
    start.min(num_records)..(start + len).min(num_records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_tile_the_records_and_differ_by_at_most_one() {
        for records in [0u64, 1, 2, 3, 7, 10, 233] {
            for world in [1usize, 2, 3, 4, 8] {
                let shards: Vec<_> = (0..world)
                    .map(|r| contiguous_shard(records, r, world))
                    .collect();
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards[world - 1].end, records);
                for pair in shards.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let lens: Vec<u64> = shards.iter().map(|s| s.end - s.start).collect();
                let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(max - min <= 1, "{records} records over {world}: {lens:?}");
            }
        }
    }

    #[test]
    fn matches_hugging_face_example() {
        // HF: 10 rows over 4 shards -> sizes 3, 3, 2, 2.
        let got: Vec<_> = (0..4).map(|r| contiguous_shard(10, r, 4)).collect();
        assert_eq!(got, vec![0..3, 3..6, 6..8, 8..10]);
    }
}
