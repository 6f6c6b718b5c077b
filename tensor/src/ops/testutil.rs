//! Test helpers: a small deterministic generator and comparison against f64 references.

/// A 64-bit linear congruential generator (Knuth's MMIX constants); good enough for test data.
pub(crate) struct Lcg(u64);

impl Lcg {
    pub(crate) fn new(seed: u64) -> Lcg {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    /// Uniform in [lo, hi).
    pub(crate) fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = self.next_u32() as f64 / (1u64 << 31) as f64;
        (lo as f64 + (hi as f64 - lo as f64) * u) as f32
    }

    pub(crate) fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    pub(crate) fn tensor(&mut self, shape: &[usize]) -> crate::Tensor {
        let n = crate::shape::numel(shape);
        crate::Tensor::from_vec(self.uniform_vec(n, -2.0, 2.0), shape)
    }
}

/// Asserts `|got - want| <= rel * |want| + abs` element-wise (NaN must match NaN, infinities
/// must match exactly), naming the op and the first failing index.
pub(crate) fn assert_close(op: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{op}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if w.is_nan() {
            assert!(g.is_nan(), "{op}: element {i}: got {g}, want NaN");
            continue;
        }
        let w32 = w as f32 as f64;
        if w32.is_infinite() {
            assert_eq!(g, w32, "{op}: element {i}");
            continue;
        }
        let err = (g - w).abs();
        assert!(
            err <= rel * w.abs() + abs,
            "{op}: element {i}: got {g}, want {w} (error {err:e}, relative {:e})",
            err / w.abs()
        );
    }
}

/// Element `out_index` (flat, of `out_shape`) read from a tensor of `shape` broadcast to
/// `out_shape`, by explicit index arithmetic (the naive reference for broadcasting).
pub(crate) fn broadcast_index(shape: &[usize], out_shape: &[usize], out_index: usize) -> usize {
    let mut rest = out_index;
    let mut idx = 0;
    let mut stride = 1;
    for d in (0..out_shape.len()).rev() {
        let i = rest % out_shape[d];
        rest /= out_shape[d];
        if let Some(k) = (d + shape.len()).checked_sub(out_shape.len()) {
            if shape[k] != 1 {
                idx += i * stride;
            }
            stride *= shape[k];
        }
    }
    idx
}

/// Serialises the tests that force the portable path (a process-wide switch) with the tests
/// that compare results bit for bit across runs.
pub(crate) fn isa_lock() -> std::sync::MutexGuard<'static, ()> {
    crate::kernels::cpu::test_lock()
}

/// Runs `f` on a fresh pool of `threads` workers.
pub(crate) fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a test thread pool")
        .install(f)
}
