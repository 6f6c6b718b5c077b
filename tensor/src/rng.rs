//! Counter-based random numbers: Philox 4x32-10.
//!
//! Philox (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
//! SC'11) is a keyed bijection on 128-bit counters. One round multiplies two of the four 32-bit
//! words by fixed odd constants (`0xD2511F53`, `0xCD9E8D57`), keeps both halves of each 64-bit
//! product, and mixes the high halves with the other two words and the key; between rounds the
//! two key words are bumped by Weyl constants (`0x9E3779B9`, `0xBB67AE85`). Ten rounds pass
//! BigCrush. Because the output is a pure function of (key, counter), element `i` of any draw can
//! be computed on its own, so a parallel fill gives the same bits for any thread count.
//!
//! Layout used here (the only convention a caller needs to know to reproduce a draw):
//! - key = `[seed as u32, (seed >> 32) as u32]`;
//! - counter = `[block as u32, (block >> 32) as u32, stream as u32, (stream >> 32) as u32]`,
//!   i.e. the 64-bit block index in the low half and the 64-bit stream in the high half;
//! - one block gives four 32-bit words; element `i` of a draw starting at block `offset` comes
//!   from block `offset + i / 4`, word `i % 4`.
//!
//! Conversions: a uniform is the top 24 bits of a word times 2^-24, so it lies in `[0, 1)` and
//! is never 1.0. A normal comes from Box-Muller on a pair of words (words 0,1 and words 2,3 of a
//! block give two normals each), computed in f64 and rounded to f32; the radius uses
//! `u = (w + 1) 2^-32` in `(0, 1]`, so `ln(u)` is never `ln(0)` and |z| <= 6.66.

use rayon::prelude::*;

use crate::shape::numel;
use crate::Tensor;

/// Multiplier applied to counter word 0 in each round.
const M0: u32 = 0xD251_1F53;
/// Multiplier applied to counter word 2 in each round.
const M1: u32 = 0xCD9E_8D57;
/// Weyl increment of key word 0 between rounds (golden ratio).
const W0: u32 = 0x9E37_79B9;
/// Weyl increment of key word 1 between rounds (sqrt(3) - 1).
const W1: u32 = 0xBB67_AE85;

/// Elements per parallel task. Fixed and a multiple of 4, so the split never depends on the
/// thread count and every task starts on a block boundary.
const CHUNK: usize = 1 << 14;

/// The Philox 4x32 bijection with `rounds` rounds: counter words `ctr`, key words `key`.
pub fn philox4x32(rounds: u32, ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = ctr;
    let [mut k0, mut k1] = key;
    for r in 0..rounds {
        if r > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    [c0, c1, c2, c3]
}

/// Philox 4x32-10: the standard ten-round variant.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32(10, ctr, key)
}

/// The four words of block `block` of stream `stream` under `seed` (layout in the module doc).
#[inline]
pub fn block(seed: u64, stream: u64, block: u64) -> [u32; 4] {
    philox4x32_10(
        [
            block as u32,
            (block >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// A word as a uniform f32 in `[0, 1)`: its top 24 bits times 2^-24.
#[inline]
pub fn u32_to_uniform(w: u32) -> f32 {
    (w >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Two words as two independent standard normals (Box-Muller, computed in f64).
#[inline]
pub fn box_muller(a: u32, b: u32) -> (f32, f32) {
    const TWO_POW_M32: f64 = 1.0 / 4_294_967_296.0;
    let u = (f64::from(a) + 1.0) * TWO_POW_M32; // (0, 1]: ln never sees 0
    let theta = std::f64::consts::TAU * (f64::from(b) * TWO_POW_M32);
    let r = (-2.0 * u.ln()).sqrt();
    let (s, c) = theta.sin_cos();
    ((r * c) as f32, (r * s) as f32)
}

/// The number of 128-bit blocks a draw of `n` elements consumes.
#[inline]
fn blocks_for(n: usize) -> u64 {
    n.div_ceil(4) as u64
}

/// Fills `out` from block `offset` on; `convert` turns one block into four values. Parallel in
/// fixed chunks; each element depends only on its index, so the bits ignore the thread count.
fn fill_blocks(
    out: &mut [f32],
    seed: u64,
    stream: u64,
    offset: u64,
    convert: impl Fn([u32; 4]) -> [f32; 4] + Sync,
) {
    let fill_chunk = |chunk_index: usize, chunk: &mut [f32]| {
        let first_block = offset.wrapping_add((chunk_index * CHUNK / 4) as u64);
        for (j, quad) in chunk.chunks_mut(4).enumerate() {
            let values = convert(block(seed, stream, first_block.wrapping_add(j as u64)));
            quad.copy_from_slice(&values[..quad.len()]);
        }
    };
    if out.len() <= CHUNK {
        fill_chunk(0, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| fill_chunk(i, chunk));
    }
}

/// Fills `out` with uniforms in `[0, 1)` drawn from block `offset` of (`seed`, `stream`) on.
pub fn fill_uniform(out: &mut [f32], seed: u64, stream: u64, offset: u64) {
    fill_blocks(out, seed, stream, offset, |w| w.map(u32_to_uniform));
}

/// Fills `out` with standard normals drawn from block `offset` of (`seed`, `stream`) on.
pub fn fill_normal(out: &mut [f32], seed: u64, stream: u64, offset: u64) {
    fill_blocks(out, seed, stream, offset, |w| {
        let (z0, z1) = box_muller(w[0], w[1]);
        let (z2, z3) = box_muller(w[2], w[3]);
        [z0, z1, z2, z3]
    });
}

/// A stateful generator over one Philox stream: a seed, a stream and the number of 128-bit
/// blocks consumed so far. Every draw starts on a fresh block, so a draw's values depend only on
/// the state before it, and [`Rng::state`] / [`Rng::from_state`] resume bit for bit.
///
/// ```
/// use tensor::rng::Rng;
/// let mut rng = Rng::new(42, 0);
/// let a = rng.normal(&[2, 3]);
/// let saved = rng.state();
/// let b = rng.uniform(&[5]);
/// let mut again = Rng::from_state(saved);
/// assert_eq!(again.uniform(&[5]).data(), b.data());
/// # let _ = a;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    seed: u64,
    stream: u64,
    offset: u64,
}

impl Rng {
    /// A generator at the start of stream `stream` under `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng {
            seed,
            stream,
            offset: 0,
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The stream.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// The number of 128-bit blocks consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The full state `[seed, stream, offset]`, for checkpoints.
    pub fn state(&self) -> [u64; 3] {
        [self.seed, self.stream, self.offset]
    }

    /// The generator with a state saved by [`Rng::state`].
    pub fn from_state(state: [u64; 3]) -> Rng {
        Rng {
            seed: state[0],
            stream: state[1],
            offset: state[2],
        }
    }

    /// A generator with the same seed on stream `stream`, from its start. Independent of this
    /// one as long as the streams differ; the caller owns the numbering of streams.
    pub fn fork(&self, stream: u64) -> Rng {
        Rng::new(self.seed, stream)
    }

    /// Skips `blocks` blocks.
    pub fn advance(&mut self, blocks: u64) {
        self.offset = self.offset.wrapping_add(blocks);
    }

    /// Takes the next block.
    fn next_block(&mut self) -> [u32; 4] {
        let words = block(self.seed, self.stream, self.offset);
        self.advance(1);
        words
    }

    /// A uniform u32. Consumes one whole block (the other three words are dropped) so that the
    /// state stays three integers.
    pub fn next_u32(&mut self) -> u32 {
        self.next_block()[0]
    }

    /// A uniform u64 (words 0 and 1 of one block).
    pub fn next_u64(&mut self) -> u64 {
        let w = self.next_block();
        u64::from(w[0]) | (u64::from(w[1]) << 32)
    }

    /// A uniform f32 in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        u32_to_uniform(self.next_u32())
    }

    /// A uniform integer in `[0, n)` without modulo bias (Lemire's multiply-and-reject: take the
    /// high word of `x * n`, rejecting the few `x` whose low word falls below `2^64 mod n`).
    /// Panics if `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below: the range [0, 0) is empty");
        let threshold = n.wrapping_neg() % n; // 2^64 mod n
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// `count` integers, each uniform in `[0, n)` (e.g. diffusion timesteps for a batch).
    pub fn below_many(&mut self, count: usize, n: u64) -> Vec<u64> {
        (0..count).map(|_| self.below(n)).collect()
    }

    /// Shuffles `items` in place (Fisher-Yates, each swap index from [`Rng::below`]).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A uniformly random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }

    /// Fills `out` with uniforms in `[0, 1)` and advances past the blocks used.
    pub fn fill_uniform(&mut self, out: &mut [f32]) {
        fill_uniform(out, self.seed, self.stream, self.offset);
        self.advance(blocks_for(out.len()));
    }

    /// Fills `out` with standard normals and advances past the blocks used.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        fill_normal(out, self.seed, self.stream, self.offset);
        self.advance(blocks_for(out.len()));
    }

    /// A tensor of uniforms in `[0, 1)`.
    pub fn uniform(&mut self, shape: &[usize]) -> Tensor {
        let mut data = vec![0.0; numel(shape)];
        self.fill_uniform(&mut data);
        Tensor::from_vec(data, shape)
    }

    /// A tensor of uniforms `lo + (hi - lo) u` with `u` in `[0, 1)`; f32 rounding may give `hi`
    /// itself when `hi - lo` is large relative to `lo`.
    pub fn uniform_range(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let mut t = self.uniform(shape);
        let scale = hi - lo;
        t.data_mut().iter_mut().for_each(|v| *v = lo + scale * *v);
        t
    }

    /// A tensor of standard normals.
    pub fn normal(&mut self, shape: &[usize]) -> Tensor {
        let mut data = vec![0.0; numel(shape)];
        self.fill_normal(&mut data);
        Tensor::from_vec(data, shape)
    }

    /// Standard normals with the shape of `like`.
    pub fn normal_like(&mut self, like: &Tensor) -> Tensor {
        self.normal(like.shape())
    }
}

impl Tensor {
    /// Uniforms in `[0, 1)` from the start of stream `stream` under `seed`; equal to
    /// `Rng::new(seed, stream).uniform(shape)`.
    pub fn rand_uniform(shape: &[usize], seed: u64, stream: u64) -> Tensor {
        Rng::new(seed, stream).uniform(shape)
    }

    /// Standard normals from the start of stream `stream` under `seed`; equal to
    /// `Rng::new(seed, stream).normal(shape)`.
    pub fn randn(shape: &[usize], seed: u64, stream: u64) -> Tensor {
        Rng::new(seed, stream).normal(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's `kat_vectors`, the three `philox4x32 10` lines: counter, key, expected.
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0; 4],
            [0; 2],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];

    #[test]
    fn rng_known_answers() {
        for (ctr, key, expected) in KAT {
            assert_eq!(
                philox4x32_10(ctr, key),
                expected,
                "ctr {ctr:08x?} key {key:08x?}"
            );
        }
    }

    #[test]
    fn rng_layout_matches_documentation() {
        let (seed, stream, b) = (0x0123_4567_89ab_cdef_u64, 0xfedc_ba98_7654_3210_u64, 77_u64);
        let expected = philox4x32_10(
            [77, 0, 0x7654_3210, 0xfedc_ba98],
            [0x89ab_cdef, 0x0123_4567],
        );
        assert_eq!(block(seed, stream, b), expected);
        let t = Rng::new(seed, stream).uniform(&[1000]);
        let i = 4 * 77 + 2;
        assert_eq!(t.data()[i], u32_to_uniform(expected[2]));
    }

    #[test]
    fn rng_uniform_bounds() {
        assert_eq!(u32_to_uniform(0), 0.0);
        assert!(u32_to_uniform(u32::MAX) < 1.0);
        let (z0, z1) = box_muller(u32::MAX, 0);
        assert_eq!((z0, z1), (0.0, 0.0));
        let (z0, _) = box_muller(0, 0);
        assert!(z0.is_finite() && z0 > 6.6 && z0 < 6.7);
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn rng_bitwise_independent_of_threads() {
        let n = 5 * CHUNK + 3; // several chunks and a partial block
        let draw = || {
            let mut rng = Rng::new(7, 3);
            rng.advance(5);
            (rng.uniform(&[n]), rng.normal(&[n]), rng.state())
        };
        let (u1, z1, s1) = in_pool(1, draw);
        let (u2, z2, s2) = in_pool(2, draw);
        assert_eq!(s1, s2);
        let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&u1), bits(&u2));
        assert_eq!(bits(&z1), bits(&z2));
        // A long fill equals a sequence of short ones over the same blocks.
        let mut short = Rng::new(7, 3);
        short.advance(5);
        let head = short.uniform(&[4 * 1000]);
        assert_eq!(&u1.data()[..4000], head.data());
    }

    /// Moments of `xs` about zero after subtracting the mean: (mean, var, kurtosis).
    fn moments(xs: &[f32]) -> (f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let (mut m2, mut m4) = (0.0, 0.0);
        for &x in xs {
            let d = f64::from(x) - mean;
            m2 += d * d;
            m4 += d * d * d * d;
        }
        let var = m2 / n;
        (mean, var, m4 / n / (var * var))
    }

    #[test]
    fn rng_uniform_statistics() {
        // 1M draws: standard errors are 2.9e-4 (mean), 7.5e-5 (variance); bounds are ~5 sigma.
        let u = Tensor::rand_uniform(&[1 << 20], 1234, 0);
        assert!(u.data().iter().all(|&x| (0.0..1.0).contains(&x)));
        let (mean, var, _) = moments(u.data());
        assert!((mean - 0.5).abs() < 1.5e-3, "uniform mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 4e-4, "uniform variance {var}");
        // Ten equal bins, each within 5 sigma of n/10.
        let mut bins = [0usize; 10];
        u.data()
            .iter()
            .for_each(|&x| bins[(x * 10.0) as usize] += 1);
        let expect = (1 << 20) as f64 / 10.0;
        let sigma = (expect * 0.9).sqrt();
        for b in bins {
            assert!((b as f64 - expect).abs() < 5.0 * sigma, "bins {bins:?}");
        }
    }

    #[test]
    fn rng_normal_statistics() {
        // 1M draws: standard errors are 1e-3 (mean), 1.4e-3 (variance), 1e-2 (kurtosis).
        let z = Tensor::randn(&[1 << 20], 99, 5);
        assert!(z.data().iter().all(|x| x.is_finite()));
        let (mean, var, kurt) = moments(z.data());
        assert!(mean.abs() < 5e-3, "normal mean {mean}");
        assert!((var - 1.0).abs() < 7e-3, "normal variance {var}");
        assert!((kurt - 3.0).abs() < 5e-2, "normal kurtosis {kurt}");
        // P(|z| > 2) = 0.0455; standard error 2e-4.
        let tail = z.data().iter().filter(|x| x.abs() > 2.0).count() as f64 / (1 << 20) as f64;
        assert!((tail - 0.0455).abs() < 1.5e-3, "tail fraction {tail}");
    }

    #[test]
    fn rng_streams_and_seeds_differ() {
        let a = Tensor::randn(&[64], 1, 0);
        let b = Tensor::randn(&[64], 1, 1);
        let c = Tensor::randn(&[64], 2, 0);
        assert_ne!(a.data(), b.data());
        assert_ne!(a.data(), c.data());
        assert_eq!(a.data(), Tensor::randn(&[64], 1, 0).data());
        let parent = Rng::new(1, 0);
        assert_eq!(parent.fork(1).normal(&[64]).data(), b.data());
    }

    #[test]
    fn rng_state_save_restore() {
        let mut rng = Rng::new(5, 2);
        rng.normal(&[10]);
        rng.below(17);
        let saved = rng.state();
        let after: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        let tail = rng.normal(&[33]);
        let mut resumed = Rng::from_state(saved);
        let again: Vec<u64> = (0..5).map(|_| resumed.next_u64()).collect();
        assert_eq!(after, again);
        assert_eq!(resumed.normal(&[33]).data(), tail.data());
        assert_eq!(resumed, rng);
        assert_eq!(resumed.offset(), 3 + 1 + 5 + 9);
    }

    #[test]
    fn rng_below_is_unbiased_and_in_range() {
        let mut rng = Rng::new(11, 0);
        let n = 6;
        let draws = rng.below_many(60_000, n);
        let mut counts = [0usize; 6];
        draws.iter().for_each(|&d| counts[d as usize] += 1);
        let sigma = (10_000.0_f64 * 5.0 / 6.0).sqrt();
        for c in counts {
            assert!(
                (c as f64 - 10_000.0).abs() < 5.0 * sigma,
                "counts {counts:?}"
            );
        }
        assert_eq!(rng.below(1), 0);
        let big = u64::MAX / 3 * 2;
        assert!((0..100).all(|_| rng.below(big) < big));
    }

    #[test]
    fn rng_permutation_is_a_permutation() {
        let mut rng = Rng::new(3, 9);
        let p = rng.permutation(1000);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, rng.permutation(1000));
    }

    #[test]
    fn rng_uniform_range_and_normal_like() {
        let mut rng = Rng::new(8, 0);
        let t = rng.uniform_range(&[2, 500], -3.0, 5.0);
        assert_eq!(t.shape(), &[2, 500]);
        assert!(t.data().iter().all(|&x| (-3.0..=5.0).contains(&x)));
        let z = rng.normal_like(&t);
        assert_eq!(z.shape(), t.shape());
        assert_eq!(Rng::new(8, 0).uniform(&[0]).numel(), 0);
    }
}
