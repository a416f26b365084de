//! XXH64 (seed 0), the checksum of every checkpoint file and tensor shard.
//!
//! Written here from the published algorithm (Yann Collet's xxHash specification) so the crate
//! needs no hashing dependency. XXH64 runs at memory speed (several GB/s per core), so hashing
//! while writing costs nothing next to the disk; FNV-style byte-at-a-time hashes would not.
//! The streaming [`Xxh64`] gives the same digest however the input is split.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

const STRIPE: usize = 32;

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, lane_acc: u64) -> u64 {
    (acc ^ round(0, lane_acc)).wrapping_mul(P1).wrapping_add(P4)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Streaming XXH64 state.
#[derive(Debug, Clone)]
pub struct Xxh64 {
    seed: u64,
    acc: [u64; 4],
    /// Bytes not yet forming a full 32-byte stripe.
    pending: [u8; STRIPE],
    pending_len: usize,
    total_len: u64,
}

impl Default for Xxh64 {
    fn default() -> Self {
        Self::with_seed(0)
    }
}

impl Xxh64 {
    /// A hasher with seed 0 (the seed of every checksum Titan writes).
    pub fn new() -> Self {
        Self::default()
    }

    /// A hasher with an explicit seed.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            acc: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            pending: [0; STRIPE],
            pending_len: 0,
            total_len: 0,
        }
    }

    fn consume_stripe(acc: &mut [u64; 4], stripe: &[u8]) {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = round(*a, read_u64(&stripe[i * 8..]));
        }
    }

    /// Feed more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total_len += data.len() as u64;
        if self.pending_len > 0 {
            let take = (STRIPE - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < STRIPE {
                return;
            }
            let stripe = self.pending;
            Self::consume_stripe(&mut self.acc, &stripe);
            self.pending_len = 0;
        }
        let mut chunks = data.chunks_exact(STRIPE);
        for stripe in &mut chunks {
            Self::consume_stripe(&mut self.acc, stripe);
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The digest of everything fed so far (the state stays usable).
    pub fn digest(&self) -> u64 {
        let mut h = if self.total_len >= STRIPE as u64 {
            let [a1, a2, a3, a4] = self.acc;
            let mut h = a1
                .rotate_left(1)
                .wrapping_add(a2.rotate_left(7))
                .wrapping_add(a3.rotate_left(12))
                .wrapping_add(a4.rotate_left(18));
            for a in self.acc {
                h = merge(h, a);
            }
            h
        } else {
            self.seed.wrapping_add(P5)
        };
        h = h.wrapping_add(self.total_len);

        let mut tail = &self.pending[..self.pending_len];
        while tail.len() >= 8 {
            h ^= round(0, read_u64(tail));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            tail = &tail[8..];
        }
        if tail.len() >= 4 {
            h ^= u64::from(read_u32(tail)).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            tail = &tail[4..];
        }
        for &b in tail {
            h ^= u64::from(b).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }

        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^= h >> 32;
        h
    }
}

/// XXH64 (seed 0) of one buffer.
pub fn xxh64(data: &[u8]) -> u64 {
    let mut h = Xxh64::new();
    h.update(data);
    h.digest()
}

/// A checksum as written in JSON: 16 lowercase hex digits (JSON numbers lose u64 precision
/// in many readers).
pub(crate) fn to_hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Parse [`to_hex`]'s output.
pub(crate) fn from_hex(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_771() -> Vec<u8> {
        let mut v: Vec<u8> = (0..=255u8).cycle().take(768).collect();
        v.extend_from_slice(b"xyz");
        v
    }

    /// Reference digests computed with the system's libxxhash 0.8.1 (`XXH64(buf, len, seed)`).
    #[test]
    fn matches_reference_digests() {
        let cases: [(&[u8], u64, u64); 4] = [
            (b"", 0xef46db3751d8e999, 0xac75fda2929b17ef),
            (b"a", 0xd24ec4f1a98c6e5b, 0x393da8b78992279b),
            (b"abc", 0x44bc2cf5ad770999, 0x1318df30094a85fd),
            (
                b"Nobody inspects the spammish repetition",
                0xfbcea83c8a378bf1,
                0x56db22dd5b051147,
            ),
        ];
        for (input, seed0, seed_p) in cases {
            assert_eq!(xxh64(input), seed0, "{input:?}");
            let mut h = Xxh64::with_seed(2654435761);
            h.update(input);
            assert_eq!(h.digest(), seed_p, "{input:?} seeded");
        }
        let long = sample_771();
        assert_eq!(xxh64(&long), 0xe921a1b45bd779f8);
        let mut h = Xxh64::with_seed(2654435761);
        h.update(&long);
        assert_eq!(h.digest(), 0xf4d70d6f815a5b88);
    }

    #[test]
    fn streaming_equals_one_shot_for_every_split() {
        let data = sample_771();
        let whole = xxh64(&data);
        for split in [1usize, 3, 7, 31, 32, 33, 64, 100, 500] {
            let mut h = Xxh64::new();
            for chunk in data.chunks(split) {
                h.update(chunk);
            }
            assert_eq!(h.digest(), whole, "chunks of {split}");
        }
    }

    #[test]
    fn hex_round_trips() {
        for v in [0u64, 1, 0xef46db3751d8e999, u64::MAX] {
            assert_eq!(from_hex(&to_hex(v)), Some(v));
        }
        assert_eq!(from_hex("xyz"), None);
        assert_eq!(from_hex("00000000000000000"), None);
    }
}
