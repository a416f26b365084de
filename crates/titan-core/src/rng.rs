//! Counter-based random numbers for weight init.
//!
//! Element `i` of parameter `name` depends only on `(seed, name, i)`, never on the order in
//! which parameters are built or on how they are sharded: an FSDP rank initializes its own
//! shard and gets the same values a single process would (torchtitan needs a seed checkpoint
//! for that; we do not).

/// SplitMix64's finalizer: a bijective 64-bit mix with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over the bytes of a string, then mixed: a stable 64-bit key for a parameter name.
pub fn hash_name(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A stream of random numbers addressed by (key, index, draw).
#[derive(Debug, Clone, Copy)]
pub struct CounterRng {
    key: u64,
}

impl CounterRng {
    /// The stream of parameter `name` under `seed`.
    pub fn for_param(seed: u64, name: &str) -> Self {
        Self {
            key: mix64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ hash_name(name)),
        }
    }

    /// A uniform in the open interval (0, 1) for element `index`, draw `draw`.
    #[inline]
    pub fn uniform(&self, index: u64, draw: u64) -> f64 {
        let z = mix64(
            self.key
                ^ mix64(
                    index.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ draw.wrapping_add(0x632b_e59b_d9b4_e019),
                ),
        );
        // 53 random bits, shifted off zero so ln() below is finite.
        ((z >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal for element `index`, draw `draw` (Box-Muller on two uniforms).
    #[inline]
    pub fn normal(&self, index: u64, draw: u64) -> f64 {
        let u1 = self.uniform(index, 2 * draw);
        let u2 = self.uniform(index, 2 * draw + 1);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A normal with mean 0 and standard deviation `std`, redrawn until it lies in `[a, b]`
    /// (absolute bounds, as `torch.nn.init.trunc_normal_`).
    #[inline]
    pub fn trunc_normal(&self, index: u64, std: f64, a: f64, b: f64) -> f64 {
        for draw in 0..1024 {
            let v = std * self.normal(index, draw);
            if v >= a && v <= b {
                return v;
            }
        }
        // Only reachable when [a, b] holds almost no mass; clamp rather than loop forever.
        (std * self.normal(index, 0)).clamp(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_name_and_seed_and_repeat() {
        let a = CounterRng::for_param(0, "a");
        let b = CounterRng::for_param(0, "b");
        let a1 = CounterRng::for_param(1, "a");
        assert_ne!(a.uniform(0, 0), b.uniform(0, 0));
        assert_ne!(a.uniform(0, 0), a1.uniform(0, 0));
        assert_eq!(a.normal(7, 0), CounterRng::for_param(0, "a").normal(7, 0));
    }

    #[test]
    fn normal_moments() {
        let r = CounterRng::for_param(3, "w");
        let n = 200_000u64;
        let (mut s, mut s2) = (0.0, 0.0);
        for i in 0..n {
            let v = r.normal(i, 0);
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn trunc_normal_respects_bounds() {
        let r = CounterRng::for_param(3, "w");
        for i in 0..10_000 {
            let v = r.trunc_normal(i, 1.0, -0.5, 0.5);
            assert!((-0.5..=0.5).contains(&v));
        }
    }
}
