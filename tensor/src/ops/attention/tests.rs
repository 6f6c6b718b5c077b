//! Tests of the fused attention against f64 references, on every instruction set.

use super::*;
use crate::ops::testutil::{assert_close, Lcg};
use crate::ops::vmath::exp2_nonpositive;

/// Attention and its gradients for one head in f64, straight from the definitions:
/// returns (o, lse, dq, dk, dv).
#[allow(clippy::type_complexity)]
fn reference(
    dm: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (lq, lk, d, e) = (dm.lq, dm.lk, dm.d, dm.dv);
    let mut o = vec![0.0; lq * e];
    let mut lse = vec![0.0; lq];
    let mut dq = vec![0.0; lq * d];
    let mut dk = vec![0.0; lk * d];
    let mut dv = vec![0.0; lk * e];
    for i in 0..lq {
        let s: Vec<f64> = (0..lk)
            .map(|j| {
                scale
                    * (0..d)
                        .map(|c| q[i * d + c] as f64 * k[j * d + c] as f64)
                        .sum::<f64>()
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        lse[i] = m + z.ln();
        let p: Vec<f64> = s.iter().map(|x| (x - lse[i]).exp()).collect();
        for c in 0..e {
            o[i * e + c] = (0..lk).map(|j| p[j] * v[j * e + c] as f64).sum();
        }
        // dP_ij = g_i . v_j; dS = P (dP - rowsum(P dP)).
        let dp: Vec<f64> = (0..lk)
            .map(|j| {
                (0..e)
                    .map(|c| g[i * e + c] as f64 * v[j * e + c] as f64)
                    .sum()
            })
            .collect();
        let dot: f64 = (0..lk).map(|j| p[j] * dp[j]).sum();
        for j in 0..lk {
            let ds = p[j] * (dp[j] - dot);
            for c in 0..d {
                dq[i * d + c] += scale * ds * k[j * d + c] as f64;
                dk[j * d + c] += scale * ds * q[i * d + c] as f64;
            }
            for c in 0..e {
                dv[j * e + c] += p[j] * g[i * e + c] as f64;
            }
        }
    }
    (o, lse, dq, dk, dv)
}

/// The CPU's instruction set and every lesser one it can run.
fn isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
        .into_iter()
        .filter(|&i| i <= isa())
        .collect()
}

fn check(lead: &[usize], lq: usize, lk: usize, d: usize, dv: usize, isa: Isa, seed: u64) {
    let mut rng = Lcg::new(seed);
    let shape = |a: usize, b: usize| {
        let mut s = lead.to_vec();
        s.extend([a, b]);
        s
    };
    let (q, k, v) = (
        rng.tensor(&shape(lq, d)),
        rng.tensor(&shape(lk, d)),
        rng.tensor(&shape(lk, dv)),
    );
    let g = rng.tensor(&shape(lq, dv));
    let scale = 1.0 / (d as f32).sqrt();
    let dm = dims("test", &q, &k, &v);
    let (o, lse) = attention_with(dm, &q, &k, &v, scale, isa);
    let (dq, dk, dvv) = attention_backward_with(&q, &k, &v, &o, &lse, &g, scale, isa);
    let what = format!("lead {lead:?} lq {lq} lk {lk} d {d} dv {dv} {isa:?}");
    let mut want = [vec![], vec![], vec![], vec![], vec![]];
    for h in 0..dm.n {
        let r = reference(
            dm,
            &q.data()[h * lq * d..(h + 1) * lq * d],
            &k.data()[h * lk * d..(h + 1) * lk * d],
            &v.data()[h * lk * dv..(h + 1) * lk * dv],
            &g.data()[h * lq * dv..(h + 1) * lq * dv],
            scale as f64,
        );
        for (w, part) in want.iter_mut().zip([r.0, r.1, r.2, r.3, r.4]) {
            w.extend(part);
        }
    }
    assert_close(
        &format!("attention o, {what}"),
        o.data(),
        &want[0],
        1e-4,
        1e-5,
    );
    assert_close(
        &format!("attention lse, {what}"),
        lse.data(),
        &want[1],
        1e-5,
        1e-5,
    );
    assert_close(
        &format!("attention dq, {what}"),
        dq.data(),
        &want[2],
        1e-4,
        1e-4,
    );
    assert_close(
        &format!("attention dk, {what}"),
        dk.data(),
        &want[3],
        1e-4,
        1e-4,
    );
    assert_close(
        &format!("attention dv, {what}"),
        dvv.data(),
        &want[4],
        1e-4,
        1e-4,
    );
}

#[test]
fn matches_f64_reference_on_awkward_sizes_on_both_paths() {
    let _guard = super::super::testutil::isa_lock();
    let mut seed = 0;
    for isa in isas() {
        for &(lq, lk) in &[(1, 1), (3, 7), (17, 129), (129, 17), (70, 9)] {
            for &(d, dv) in &[(1, 1), (3, 5), (8, 8), (33, 17)] {
                seed += 1;
                check(&[2], lq, lk, d, dv, isa, seed);
            }
        }
    }
    // Many heads (one task each) with two leading axes.
    check(&[3, 4], 20, 20, 8, 8, isa(), 99);
    // Whole heads of 600 queries against 200 keys: several backward chunks per task (ten
    // blocks of 32 queries per chunk on AVX-512, sixteen of 8 elsewhere), the last one short.
    for isa in isas() {
        check(&[8], 600, 200, 8, 8, isa, 100);
    }
}

#[test]
fn exp2_nonpositive_matches_f64_down_to_the_subnormals() {
    let _guard = super::super::testutil::isa_lock();
    let xs: Vec<f32> = (0..=20_000)
        .map(|i| -130.0 * i as f32 / 20_000.0)
        .chain([
            -0.0,
            -1e-30,
            -0.5,
            -125.99,
            -126.0,
            -126.01,
            -149.0,
            -149.5,
            -150.0,
            -151.5,
            f32::NEG_INFINITY,
        ])
        .collect();
    fn apply<V: SimdF32>(v: &mut [f32]) {
        for c in v.chunks_exact_mut(V::LANES) {
            exp2_nonpositive(V::load(c)).store(c);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn on_avx512(v: &mut [f32]) {
        apply::<simd::Avx512>(v);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn on_avx2(v: &mut [f32]) {
        apply::<simd::Avx2>(v);
    }
    let run = |isa: Isa| -> Vec<f32> {
        let mut out = vec![0.0f32; xs.len().div_ceil(16) * 16];
        out[..xs.len()].copy_from_slice(&xs);
        match isa {
            // SAFETY: `isas()` lists only instruction sets this CPU has.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { on_avx512(&mut out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { on_avx2(&mut out) },
            _ => apply::<f32x8>(&mut out),
        }
        out.truncate(xs.len());
        out
    };
    for isa in isas() {
        for (&x, y) in xs.iter().zip(run(isa)) {
            let want = (x as f64).exp2();
            if want < f32::MIN_POSITIVE as f64 {
                // Subnormal results: within a subnormal's ulp (2^-149); -inf gives 0.
                assert!(((y as f64) - want).abs() <= 1.5e-45, "2^{x}: {y} vs {want}");
            } else {
                assert!(
                    ((y as f64) - want).abs() <= 2.5e-7 * want,
                    "2^{x}: {y} vs {want}"
                );
            }
        }
    }
}

#[test]
fn large_scores_stay_finite() {
    let q = Tensor::from_vec(vec![100.0, -100.0], &[1, 2, 1]);
    let k = Tensor::from_vec(vec![100.0, 99.0, -3.0], &[1, 3, 1]);
    let v = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[1, 3, 1]);
    let (o, lse) = attention(&q, &k, &v, 1.0);
    // Row 0: scores 1e4, 9900, -300: all weight on key 0. Row 1: -1e4, -9900, 300: key 2.
    assert_eq!(o.data(), &[1.0, 3.0]);
    assert_eq!(lse.data(), &[10000.0, 300.0]);
}

#[test]
fn bitwise_identical_on_1_and_2_threads() {
    let _guard = super::super::testutil::isa_lock();
    let mut rng = Lcg::new(7);
    // Few heads (rows split into blocks) and many heads (one task per head).
    for lead in [vec![2usize], vec![4, 4]] {
        let mut shape = lead.clone();
        shape.extend([150, 16]);
        let (q, k, v, g) = (
            rng.tensor(&shape),
            rng.tensor(&shape),
            rng.tensor(&shape),
            rng.tensor(&shape),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (o, lse) = attention(&q, &k, &v, 0.25);
                let grads = attention_backward(&q, &k, &v, &o, &lse, &g, 0.25);
                (o, lse, grads)
            })
        };
        let (a, b) = (run(1), run(2));
        assert_eq!(a.0.data(), b.0.data());
        assert_eq!(a.1.data(), b.1.data());
        assert_eq!(a.2 .0.data(), b.2 .0.data());
        assert_eq!(a.2 .1.data(), b.2 .1.data());
        assert_eq!(a.2 .2.data(), b.2 .2.data());
    }
}

#[test]
#[should_panic(expected = "attention: expected q [.., Lq, d], k [.., Lk, d], v [.., Lk, dv]")]
fn mismatched_shapes_panic_with_the_op_and_shapes() {
    let q = Tensor::zeros(&[2, 3, 4]);
    let k = Tensor::zeros(&[2, 5, 3]);
    let v = Tensor::zeros(&[2, 5, 6]);
    let _ = attention(&q, &k, &v, 1.0);
}
