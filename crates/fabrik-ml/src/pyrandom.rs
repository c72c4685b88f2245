//! CPython's `random.Random`, as far as detectors ported from river draw from it: MT19937
//! seeded from an integer as CPython seeds it (`init_by_array` over the seed's 32-bit words),
//! `random()`, `getrandbits(k ≤ 32)`, `_randbelow` and `sample(range(n), k)` with both of its
//! strategies. Bit for bit, so a port (Half-Space Trees, KSWIN) builds the same trees and
//! flags the same values river does with the same seed.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// A Mersenne Twister in the state `random.Random(seed)` starts in.
#[derive(Debug, Clone)]
pub struct PyRandom {
    state: Box<[u32; N]>,
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut state = Box::new([0_u32; N]);
        state[0] = 19_650_218;
        for i in 1..N {
            let previous = state[i - 1];
            state[i] = 1_812_433_253_u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        // `init_by_array`: the reference algorithm's two passes over the key.
        let (mut i, mut j) = (1_usize, 0_usize);
        for _ in 0..N.max(key.len()) {
            let previous = state[i - 1];
            state[i] = (state[i] ^ (previous ^ (previous >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                state[0] = state[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let previous = state[i - 1];
            state[i] = (state[i] ^ (previous ^ (previous >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                state[0] = state[N - 1];
                i = 1;
            }
        }
        state[0] = 0x8000_0000;
        Self { state, index: N }
    }

    /// The next 32 bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        let mag = |y: u32| if y & 1 == 0 { 0 } else { MATRIX_A };
        for k in 0..N {
            let y = (self.state[k] & UPPER_MASK) | (self.state[(k + 1) % N] & LOWER_MASK);
            self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag(y);
        }
        self.index = 0;
    }

    /// A float in [0, 1) with 53 random bits, as `random()`.
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `getrandbits(bits)` for 1 ≤ bits ≤ 32.
    pub fn bits(&mut self, bits: u32) -> u32 {
        debug_assert!((1..=32).contains(&bits));
        self.next_u32() >> (32 - bits)
    }

    /// `_randbelow(n)` for n ≥ 1: `n.bit_length()` bits, drawn again until below `n`; 0 for
    /// n = 0 (where CPython raises), drawing nothing.
    pub fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let bits = u32::BITS - n.leading_zeros();
        loop {
            let r = self.bits(bits);
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: k distinct indices below `n`, in CPython's order (all n of them
    /// when k > n, where CPython raises).
    pub fn sample(&mut self, n: u32, k: u32) -> Vec<u32> {
        let k = k.min(n);
        // CPython compares the memory of an n-long list with that of a k-element set.
        let mut set_size = 21_u64;
        if k > 5 {
            let exponent = ((f64::from(k) * 3.0).ln() / 4_f64.ln()).ceil() as u32;
            set_size += 4_u64.saturating_pow(exponent);
        }
        if u64::from(n) <= set_size {
            let mut pool: Vec<u32> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.below(n - i) as usize;
                    let chosen = pool[j];
                    pool[j] = pool[(n - i - 1) as usize];
                    chosen
                })
                .collect()
        } else {
            let mut chosen = std::collections::HashSet::with_capacity(k as usize);
            (0..k)
                .map(|_| {
                    loop {
                        let j = self.below(n);
                        if chosen.insert(j) {
                            break j;
                        }
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // Expected values printed by CPython 3.11.7 on this machine, e.g.
    // `random.Random(42).getrandbits(32)` and `random.Random(42).sample(range(70), 30)`.

    #[test]
    fn random_is_cpythons() {
        // CPython 3: random.Random(42).random() for the first three draws.
        let mut rng = PyRandom::new(42);
        assert_eq!(rng.random(), 0.6394267984578837);
        assert_eq!(rng.random(), 0.025010755222666936);
        assert_eq!(rng.random(), 0.27502931836911926);
        let mut zero = PyRandom::new(0);
        assert_eq!(zero.random(), 0.8444218515250481);
    }

    #[test]
    fn the_stream_is_cpythons_for_small_and_wide_seeds() {
        let mut r = PyRandom::new(42);
        let first: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(first, [2_746_317_213, 478_163_327, 107_420_369]);
        assert_eq!(PyRandom::new(0).next_u32(), 3_626_764_237);
        let mut wide = PyRandom::new((1 << 40) + 7);
        assert_eq!(
            [wide.next_u32(), wide.next_u32()],
            [2_635_837_658, 3_209_733_218]
        );
        // Past the first twist too.
        let mut long = PyRandom::new(42);
        let last = (0..1_000).map(|_| long.next_u32()).last();
        assert_eq!(last, Some(PY_42_THOUSANDTH));
    }

    /// `[r.getrandbits(32) for _ in range(1000)][-1]` with `r = random.Random(42)`.
    const PY_42_THOUSANDTH: u32 = 4_212_168_831;

    #[test]
    fn sample_draws_cpythons_indices_from_a_pool_and_from_a_set() {
        // n = 70 ≤ 277: the pool strategy.
        assert_eq!(
            PyRandom::new(42).sample(70, 30),
            [
                14, 3, 35, 31, 28, 17, 13, 43, 47, 57, 34, 5, 37, 27, 2, 1, 58, 63, 69, 32, 38, 54,
                67, 12, 45, 41, 59, 26, 51, 65
            ]
        );
        // n = 1000 > 85: the set strategy.
        assert_eq!(
            PyRandom::new(42).sample(1000, 10),
            [654, 114, 25, 759, 281, 250, 228, 142, 754, 104]
        );
    }
}
