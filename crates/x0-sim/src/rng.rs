//! The simulator's only source of randomness: ChaCha8 keyed by the run's seed.
//!
//! ChaCha8's output for a given key is fixed by its specification, and the conversions below
//! (to floats, to ranges) are written here rather than taken from `rand`'s distributions, whose
//! algorithms may change between versions. So a seed names one run on every version of the
//! simulator that keeps these functions, on every platform.
//!
//! Each consumer draws from its own [`Stream`], so that, for example, adding a link event does
//! not shift the numbers the topology generator sees.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// Independent random streams derived from one seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stream {
    /// Topology generators (node positions, random edges).
    Topology,
    /// Per-link parameters drawn from ranges (latency).
    LinkParams,
    /// The engine at run time (loss, jitter).
    Engine,
    /// Free for nodes or tests that want their own stream.
    User(u32),
}

impl Stream {
    fn tag(self) -> u64 {
        match self {
            Self::Topology => 1,
            Self::LinkParams => 2,
            Self::Engine => 3,
            Self::User(n) => 0x1_0000_0000 | u64::from(n),
        }
    }
}

/// A seeded random number generator with the few draws the simulator needs.
#[derive(Debug, Clone)]
pub struct SimRng(ChaCha8Rng);

impl SimRng {
    /// The generator for `stream` of `seed`: the ChaCha8 key is `seed` (little-endian) followed
    /// by the stream's tag (little-endian) and zeros.
    pub fn new(seed: u64, stream: Stream) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&stream.tag().to_le_bytes());
        Self(ChaCha8Rng::from_seed(key))
    }

    /// 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`, with 53 bits of precision.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        // 2^-53: exact, so the mapping is the same everywhere.
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0. Unbiased (Lemire's method with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            // Truncation keeps the low 64 bits on purpose.
            let low = m as u64;
            if low >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in `[lo, hi]` (inclusive); `lo` when `hi < lo`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// True with probability `p` (false for `p <= 0` or NaN, true for `p >= 1`); draws nothing
    /// at the ends, so a lossless link consumes no randomness.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        if p >= 1.0 {
            true
        } else if p > 0.0 {
            self.unit() < p
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_same_numbers() {
        let mut a = SimRng::new(7, Stream::Engine);
        let mut b = SimRng::new(7, Stream::Engine);
        let mut c = SimRng::new(7, Stream::Topology);
        let mut d = SimRng::new(8, Stream::Engine);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        let ws: Vec<u64> = (0..8).map(|_| d.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert_ne!(xs, ws);
    }

    #[test]
    fn stable_across_versions() {
        // Pinned: if this changes, every recorded trace digest changes with it.
        let mut r = SimRng::new(42, Stream::Engine);
        let first = r.next_u64();
        let mut again = SimRng::new(42, Stream::Engine);
        assert_eq!(again.next_u64(), first);
        assert_eq!(first, PINNED_FIRST_U64);
    }

    const PINNED_FIRST_U64: u64 = 9_975_963_787_948_594_665;

    #[test]
    fn draws_stay_in_range() {
        let mut r = SimRng::new(1, Stream::User(3));
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(7) < 7);
            let x = r.between(10, 12);
            assert!((10..=12).contains(&x));
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.between(5, 5), 5);
        assert_eq!(r.between(6, 5), 6);
        assert!(r.chance(1.0));
        assert!(!r.chance(0.0));
        assert!(!r.chance(f64::NAN));
        let _ = r.between(0, u64::MAX);
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = SimRng::new(9, Stream::User(0));
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[r.below(4) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }
}
