//! The simulation's one source of randomness: a seeded ChaCha generator.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded generator with the draws the simulator needs. Every random choice of a
/// run comes from generators derived from the run's seed, so a seed fixes the run.
#[derive(Clone, Debug)]
pub struct SimRng {
    inner: ChaCha8Rng,
}

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent generator derived from this one (for one link or one node), so
    /// that adding a flow does not change the draws of another element.
    pub fn fork(&mut self, stream: u64) -> SimRng {
        let mut seed = [0u8; 32];
        self.inner.fill_bytes(&mut seed);
        seed[..8]
            .iter_mut()
            .zip(stream.to_le_bytes())
            .for_each(|(s, b)| *s ^= b);
        SimRng {
            inner: ChaCha8Rng::from_seed(seed),
        }
    }

    /// 32 random bytes (an endpoint seed).
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.inner.fill_bytes(&mut s);
        s
    }

    /// A uniform draw in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.inner.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A uniformly random 64-bit number.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A uniform integer in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.inner.next_u64() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_forks_are_independent() {
        let mut a = SimRng::new(5);
        let mut b = SimRng::new(5);
        assert_eq!(a.unit(), b.unit());
        let mut fa = a.fork(1);
        let mut fb = b.fork(1);
        assert_eq!(fa.below(1000), fb.below(1000));
        let mut other = SimRng::new(5).fork(2);
        let draws: Vec<u64> = (0..4).map(|_| other.below(u64::MAX)).collect();
        let mut again = SimRng::new(5).fork(1);
        assert_ne!(
            draws,
            (0..4).map(|_| again.below(u64::MAX)).collect::<Vec<_>>()
        );
        let u = a.unit();
        assert!((0.0..1.0).contains(&u));
    }
}
