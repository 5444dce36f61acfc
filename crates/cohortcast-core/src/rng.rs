//! Seeded pseudo-random numbers.
//!
//! Every random choice in cohortcast goes through [`Rng`], seeded from a
//! user-visible `seed`, so every run can be repeated exactly. The generator is
//! xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number
//! generators", 2021), seeded through SplitMix64. It is not cryptographic.

/// A small, fast, seeded generator (xoshiro256**).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st)];
        Rng { s }
    }

    /// An independent stream derived from `seed` and a stream number, so that
    /// parallel workers get reproducible, non-overlapping sequences.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut st = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng::new(splitmix64(&mut st))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, 1)` as f32.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        // Lemire's multiply-shift; the bias is below 2^-64 * n, negligible here.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (r, angle) = self.polar();
        r * angle.cos()
    }

    /// Two independent standard normals from one Box–Muller draw: half the
    /// logarithms and square roots of two calls to [`Rng::normal`].
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let (r, angle) = self.polar();
        let (s, c) = angle.sin_cos();
        (r * c, r * s)
    }

    /// The Box–Muller draw's radius and angle (two uniforms).
    fn polar(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        ((-2.0 * u1.ln()).sqrt(), std::f64::consts::TAU * u2)
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    /// Geometric number of failures before a success of probability `p`.
    pub fn geometric(&mut self, p: f64) -> u64 {
        if p >= 1.0 {
            return 0;
        }
        ((1.0 - self.f64()).ln() / (1.0 - p).ln()).floor() as u64
    }

    /// Poisson with mean `lambda` (inversion for small means, normal
    /// approximation above 50).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 50.0 {
            let x = lambda + lambda.sqrt() * self.normal();
            return x.round().max(0.0) as u64;
        }
        let l = (-lambda).exp();
        let mut k = 0u64;
        let mut p = 1.0;
        loop {
            p *= self.f64();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Draws indices with probability proportional to fixed weights, in O(1) a
/// draw (Walker's alias method, as laid out by Vose 1991).
#[derive(Debug, Clone)]
pub struct WeightedIndex {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl WeightedIndex {
    /// Builds the table. Returns `None` when there are no weights or they do
    /// not sum to a positive finite number.
    pub fn new(weights: &[f64]) -> Option<Self> {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        if n == 0 || !total.is_finite() || total <= 0.0 || weights.iter().any(|w| *w < 0.0) {
            return None;
        }
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![0.0; n];
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
        while !small.is_empty() && !large.is_empty() {
            let s = small.pop().expect("non-empty");
            let l = *large.last().expect("non-empty");
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in large.into_iter().chain(small) {
            prob[i] = 1.0;
            alias[i] = i as u32;
        }
        Some(WeightedIndex { prob, alias })
    }

    /// Number of outcomes.
    pub fn len(&self) -> usize {
        self.prob.len()
    }

    /// Always false: a table has at least one outcome.
    pub fn is_empty(&self) -> bool {
        self.prob.is_empty()
    }

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let i = rng.below(self.prob.len());
        if rng.f64() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(7);
        let b: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(Rng::stream(7, 1).next_u64(), Rng::stream(7, 2).next_u64());
    }

    #[test]
    fn uniform_mean_and_below_range() {
        let mut r = Rng::new(1);
        let n = 100_000;
        let mean: f64 = (0..n).map(|_| r.f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..10_000).all(|_| r.below(7) < 7));
    }

    #[test]
    fn weighted_index_matches_weights() {
        // Regression: rounding left the last large entry in `small`, and the
        // loop popped it without placing it, so it could never be drawn.
        let w = [1.0, 0.0, 3.0, 6.0];
        let t = WeightedIndex::new(&w).unwrap();
        let mut r = Rng::new(3);
        let mut counts = [0usize; 4];
        for _ in 0..200_000 {
            counts[t.sample(&mut r)] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, w) in counts.iter().zip(w) {
            let share = *c as f64 / 200_000.0;
            assert!((share - w / 10.0).abs() < 0.01, "{counts:?}");
        }
        assert!(WeightedIndex::new(&[]).is_none());
        assert!(WeightedIndex::new(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn normal_pairs_are_standard_and_uncorrelated() {
        let mut r = Rng::new(4);
        let n = 200_000;
        let (mut s, mut s2, mut t, mut t2, mut st) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for _ in 0..n {
            let (a, b) = r.normal_pair();
            s += a;
            s2 += a * a;
            t += b;
            t2 += b * b;
            st += a * b;
        }
        let n = n as f64;
        for (mean, sq) in [(s / n, s2 / n), (t / n, t2 / n)] {
            assert!(mean.abs() < 0.01, "mean {mean}");
            assert!((sq - mean * mean - 1.0).abs() < 0.02, "variance {}", sq - mean * mean);
        }
        assert!((st / n).abs() < 0.01, "covariance {}", st / n);
    }

    #[test]
    fn poisson_mean() {
        let mut r = Rng::new(9);
        for lambda in [0.5, 4.0, 80.0] {
            let m: f64 = (0..50_000).map(|_| r.poisson(lambda) as f64).sum::<f64>() / 50_000.0;
            assert!((m - lambda).abs() < 0.05 * lambda.max(1.0), "{lambda} {m}");
        }
    }
}
