//! Tests of the GEMM against a naive f64 reference, on every kernel this CPU can run.
//!
//! Each case prints its kernel, shape, flags, scaled residual and PASS or FAIL (visible with
//! `--nocapture`). The residual of element (i, j) is
//! `|c - c_ref| / (|alpha| sum_p |a_ip| |b_pj| + |beta| |c0_ij|)`; recursive summation in f32
//! is off by at most about `k` units in the last place of that scale (`gamma_k`, Higham
//! 3.1), so the tolerance is `(k + 4) * f32::EPSILON`.

use super::*;
use crate::kernels::cpu;

/// A small xorshift generator for test data in [-1, 1).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next()).collect()
    }
}

/// The instruction sets this CPU can run, worst first.
fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2Fma, Isa::Avx512]
        .into_iter()
        .filter(|&isa| isa <= cpu::detected_isa())
        .collect()
}

/// One product: shape, flags, scalars and padding of the leading dimensions.
#[derive(Clone, Copy, Debug)]
struct Case {
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    pad: usize,
}

impl Case {
    fn new(m: usize, n: usize, k: usize) -> Case {
        Case {
            ta: Trans::No,
            tb: Trans::No,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            pad: 0,
        }
    }

    /// Stored (rows, cols, ld) of A, B and C.
    fn dims(&self) -> [(usize, usize, usize); 3] {
        let (m, n, k, p) = (self.m, self.n, self.k, self.pad);
        let a = if self.ta == Trans::No { (m, k) } else { (k, m) };
        let b = if self.tb == Trans::No { (k, n) } else { (n, k) };
        [(a.0, a.1, a.1 + p), (b.0, b.1, b.1 + p), (m, n, n + 2 * p)]
    }

    fn inputs(&self, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = XorShift(seed | 1);
        let [a, b, c] = self.dims();
        let mut c0 = rng.vec(c.0 * c.2);
        if self.beta == 0.0 {
            c0.fill(f32::NAN);
        }
        (rng.vec(a.0 * a.2), rng.vec(b.0 * b.2), c0)
    }

    fn run(&self, isa: Isa, a: &[f32], b: &[f32], c: &mut [f32]) {
        let [(_, _, lda), (_, _, ldb), (_, _, ldc)] = self.dims();
        let (m, n, k) = (self.m, self.n, self.k);
        sgemm_with_isa(
            isa, self.ta, self.tb, m, n, k, self.alpha, a, lda, b, ldb, self.beta, c, ldc,
        );
    }

    /// The largest scaled residual of `c` (the result) against the f64 reference.
    fn residual(&self, a: &[f32], b: &[f32], c0: &[f32], c: &[f32]) -> f64 {
        let [(_, _, lda), (_, _, ldb), (_, _, ldc)] = self.dims();
        let av = |i: usize, p: usize| match self.ta {
            Trans::No => a[i * lda + p],
            Trans::Yes => a[p * lda + i],
        } as f64;
        let bv = |p: usize, j: usize| match self.tb {
            Trans::No => b[p * ldb + j],
            Trans::Yes => b[j * ldb + p],
        } as f64;
        let (alpha, beta) = (self.alpha as f64, self.beta as f64);
        let mut worst = 0.0f64;
        for i in 0..self.m {
            for j in 0..self.n {
                let (mut sum, mut abs) = (0.0f64, 0.0f64);
                for p in 0..self.k {
                    sum += av(i, p) * bv(p, j);
                    abs += (av(i, p) * bv(p, j)).abs();
                }
                let (want, scale) = if self.beta == 0.0 {
                    (alpha * sum, alpha.abs() * abs)
                } else {
                    let c0 = c0[i * ldc + j] as f64;
                    (
                        alpha * sum + beta * c0,
                        alpha.abs() * abs + beta.abs() * c0.abs(),
                    )
                };
                let got = c[i * ldc + j] as f64;
                if !got.is_finite() {
                    return f64::INFINITY;
                }
                worst = worst.max((got - want).abs() / scale.max(f64::MIN_POSITIVE));
            }
        }
        // Padding columns of C must be left alone.
        for i in 0..self.m {
            for j in self.n..ldc {
                let (got, was) = (c[i * ldc + j], c0[i * ldc + j]);
                if got.to_bits() != was.to_bits() {
                    return f64::INFINITY;
                }
            }
        }
        worst
    }

    /// Runs the case on `isa` and asserts the residual is within tolerance.
    fn check(&self, isa: Isa, seed: u64) {
        let (a, b, c0) = self.inputs(seed);
        let mut c = c0.clone();
        self.run(isa, &a, &b, &mut c);
        let res = self.residual(&a, &b, &c0, &c);
        let tol = (self.k + 4) as f64 * f32::EPSILON as f64;
        let verdict = if res <= tol { "PASS" } else { "FAIL" };
        println!(
            "{:8} {:4}x{:4}x{:4} {:?}{:?} alpha {:5} beta {:5} pad {} residual {:.2e} (tol \
             {:.1e}) {verdict}",
            isa.name(),
            self.m,
            self.n,
            self.k,
            self.ta,
            self.tb,
            self.alpha,
            self.beta,
            self.pad,
            res,
            tol
        );
        assert!(res <= tol, "{self:?} on {}: residual {res:e}", isa.name());
    }
}

const TRANS: [(Trans, Trans); 4] = [
    (Trans::No, Trans::No),
    (Trans::No, Trans::Yes),
    (Trans::Yes, Trans::No),
    (Trans::Yes, Trans::Yes),
];

/// Awkward shapes: tiny, prime, just past MR / NR / MC / NT / KC, several K slices packed in
/// one pass or (the last, wider than NC) in several.
const SHAPES: [(usize, usize, usize); 13] = [
    (1, 1, 1),
    (1, 7, 3),
    (3, 1, 17),
    (7, 17, 3),
    (17, 7, 129),
    (9, 33, 1),
    (13, 31, 257),
    (129, 17, 7),
    (130, 257, 33),
    (33, 300, 600),
    (257, 65, 300),
    (3, 2100, 5),
    (5, 2100, 1100),
];

#[test]
fn gemm_matches_reference_on_every_kernel() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for isa in isas() {
        for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
            for (t, &(ta, tb)) in TRANS.iter().enumerate() {
                let case = Case {
                    ta,
                    tb,
                    pad: (s + t) % 3,
                    ..Case::new(m, n, k)
                };
                pool.install(|| case.check(isa, (s * 4 + t) as u64));
            }
        }
    }
}

#[test]
fn gemm_alpha_beta_variants() {
    for isa in isas() {
        for (i, &(alpha, beta)) in [(1.0, 0.0), (1.0, 1.0), (-0.5, 2.0), (2.0, -1.0), (0.0, 0.5)]
            .iter()
            .enumerate()
        {
            for (t, &(ta, tb)) in TRANS.iter().enumerate() {
                let case = Case {
                    ta,
                    tb,
                    alpha,
                    beta,
                    pad: 1,
                    ..Case::new(37, 45, 300)
                };
                case.check(isa, (i * 4 + t) as u64);
            }
        }
    }
}

#[test]
fn gemm_k_zero_scales_c() {
    for isa in isas() {
        for beta in [0.0, 3.0] {
            let case = Case {
                beta,
                ..Case::new(5, 6, 0)
            };
            case.check(isa, 7);
        }
    }
}

#[test]
fn gemm_threaded_paths_match_reference() {
    // Large enough to run in parallel, with several row chunks and K slices.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for isa in isas() {
        for (t, &(ta, tb)) in TRANS.iter().enumerate() {
            pool.install(|| {
                Case {
                    ta,
                    tb,
                    pad: 1,
                    ..Case::new(2100, 20, 70)
                }
                .check(isa, t as u64)
            });
            pool.install(|| {
                Case {
                    ta,
                    tb,
                    beta: 0.5,
                    ..Case::new(200, 150, 300)
                }
                .check(isa, t as u64 + 9)
            });
        }
    }
}

#[test]
fn gemm_forced_portable_path() {
    let _guard = cpu::test_lock();
    let case = Case {
        ta: Trans::Yes,
        beta: 1.0,
        ..Case::new(19, 23, 29)
    };
    let (a, b, c0) = case.inputs(3);
    let mut c = c0.clone();
    cpu::with_portable(|| {
        let [(_, _, lda), (_, _, ldb), (_, _, ldc)] = case.dims();
        sgemm(
            case.ta, case.tb, 19, 23, 29, 1.0, &a, lda, &b, ldb, 1.0, &mut c, ldc,
        );
    });
    let res = case.residual(&a, &b, &c0, &c);
    assert!(res <= 33.0 * f32::EPSILON as f64, "residual {res:e}");
}

#[test]
fn gemm_bitwise_identical_for_1_and_2_threads() {
    let _guard = cpu::test_lock();
    let case = Case {
        ta: Trans::Yes,
        beta: 1.0,
        ..Case::new(300, 257, 520)
    };
    let (a, b, c0) = case.inputs(11);
    for isa in isas() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = c0.clone();
            pool.install(|| case.run(isa, &a, &b, &mut c));
            c.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
        };
        assert_eq!(
            run(1),
            run(2),
            "{} differs between 1 and 2 threads",
            isa.name()
        );
    }
}

/// Runs a batch through `sgemm_batched` and each product through `sgemm`; they must agree
/// bitwise, for 1 and 2 threads.
fn check_batched(batch: usize, m: usize, n: usize, k: usize, share_a: bool) {
    let mut rng = XorShift(99);
    let (lda, ldb, ldc) = (k + 1, n, n + 3);
    let stride_a = if share_a { 0 } else { m * lda };
    let (stride_b, stride_c) = (k * ldb, m * ldc + 5);
    let a = rng.vec(m * lda + stride_a * (batch - 1));
    let b = rng.vec(stride_b * batch);
    let c0 = rng.vec(stride_c * batch);
    let mut want = c0.clone();
    for i in 0..batch {
        sgemm(
            Trans::No,
            Trans::No,
            m,
            n,
            k,
            0.5,
            &a[i * stride_a..],
            lda,
            &b[i * stride_b..],
            ldb,
            1.0,
            &mut want[i * stride_c..],
            ldc,
        );
    }
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut c = c0.clone();
        pool.install(|| {
            sgemm_batched(
                batch,
                Trans::No,
                Trans::No,
                m,
                n,
                k,
                0.5,
                &a,
                lda,
                stride_a,
                &b,
                ldb,
                stride_b,
                1.0,
                &mut c,
                ldc,
                stride_c,
            )
        });
        let same = c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "batched {batch} x {m}x{n}x{k} on {threads} threads");
    }
}

#[test]
fn gemm_batched_matches_single_products() {
    let _guard = cpu::test_lock();
    check_batched(6, 9, 13, 20, true); // small: parallel over the batch, A shared (stride 0)
    check_batched(3, 130, 140, 150, false); // large: parallel inside each product
    check_batched(1, 5, 3, 2, false);
}

#[test]
#[should_panic(expected = "sgemm: B is stored")]
fn gemm_rejects_short_slices() {
    let mut c = vec![0.0; 4];
    sgemm(
        Trans::No,
        Trans::No,
        2,
        2,
        2,
        1.0,
        &[0.0; 4],
        2,
        &[0.0; 3],
        2,
        0.0,
        &mut c,
        2,
    );
}
