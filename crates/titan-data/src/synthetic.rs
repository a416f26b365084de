//! The `synthetic` dataset: deterministic pseudo-random tokens for benchmarks, with no tokenizer
//! and no I/O. Window `w` of rank `r` is a pure function of `(seed, w * world + r)`, so runs,
//! ranks and resumes are reproducible without storing any buffer.

/// Generator of synthetic token windows.
#[derive(Debug, Clone)]
pub(crate) struct SyntheticTokens {
    pub(crate) seed: u64,
    pub(crate) vocab_size: u64,
    pub(crate) rank: u64,
    pub(crate) world: u64,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SyntheticTokens {
    /// Appends the `len` tokens of this rank's window number `index` to `out`.
    pub(crate) fn window(&self, index: u64, len: usize, out: &mut Vec<u32>) {
        let global = index.wrapping_mul(self.world).wrapping_add(self.rank);
        let mut state = self.seed ^ global.wrapping_mul(0xD1B5_4A32_D192_ED03);
        // Skip one output so nearby (seed, window) pairs decorrelate.
        splitmix64(&mut state);
        for _ in 0..len {
            // Multiply-shift maps 32 random bits onto [0, vocab) without a division.
            let bits = splitmix64(&mut state) >> 32;
            out.push(((bits * self.vocab_size) >> 32) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_in_range_deterministic_and_differ_across_ranks() {
        let rank0 = SyntheticTokens {
            seed: 7,
            vocab_size: 50,
            rank: 0,
            world: 2,
        };
        let rank1 = SyntheticTokens {
            rank: 1,
            ..rank0.clone()
        };
        let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
        rank0.window(3, 64, &mut a);
        rank0.window(3, 64, &mut b);
        rank1.window(3, 64, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().chain(&c).all(|&t| t < 50));
        // All of a small vocabulary shows up.
        let mut big = vec![];
        rank0.window(0, 4096, &mut big);
        assert!((0..50).all(|t| big.contains(&t)));
    }
}
