//! Tests of the group-norm kernels against f64 references and finite differences.

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, len: usize, offset: f32) -> Vec<f32> {
        (0..len).map(|_| self.next() + offset).collect()
    }
}

/// f64 reference: (y, mean, rstd).
#[allow(clippy::too_many_arguments)]
fn reference_forward(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f64,
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let cpg = c / groups;
    let m = (cpg * hw) as f64;
    let mut y = vec![0.0; x.len()];
    let (mut means, mut rstds) = (vec![], vec![]);
    for (blk, xb) in x.chunks(cpg * hw).enumerate() {
        let mean = xb.iter().map(|&v| v as f64).sum::<f64>() / m;
        let var = xb.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m;
        let rstd = 1.0 / (var + eps).sqrt();
        for (i, &v) in xb.iter().enumerate() {
            let ch = (blk % groups) * cpg + i / hw;
            y[blk * cpg * hw + i] = gamma[ch] as f64 * (v as f64 - mean) * rstd + beta[ch] as f64;
        }
        means.push(mean);
        rstds.push(rstd);
    }
    let _ = n;
    (y, means, rstds)
}

/// f64 reference of the backward pass: (dx, dgamma, dbeta).
#[allow(clippy::too_many_arguments)]
fn reference_backward(
    x: &[f32],
    dy: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f64,
    gamma: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let beta = vec![0.0; c];
    let (_, means, rstds) = reference_forward(x, n, c, hw, groups, eps, gamma, &beta);
    let cpg = c / groups;
    let m = (cpg * hw) as f64;
    let mut dx = vec![0.0; x.len()];
    let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
    for blk in 0..n * groups {
        let (mean, rstd) = (means[blk], rstds[blk]);
        let idx = |i: usize| blk * cpg * hw + i;
        let ch = |i: usize| (blk % groups) * cpg + i / hw;
        let xhat = |i: usize| (x[idx(i)] as f64 - mean) * rstd;
        let g = |i: usize| dy[idx(i)] as f64 * gamma[ch(i)] as f64;
        let mean_g = (0..cpg * hw).map(g).sum::<f64>() / m;
        let mean_gx = (0..cpg * hw).map(|i| g(i) * xhat(i)).sum::<f64>() / m;
        for i in 0..cpg * hw {
            dx[idx(i)] = rstd * (g(i) - mean_g - xhat(i) * mean_gx);
            dg[ch(i)] += dy[idx(i)] as f64 * xhat(i);
            db[ch(i)] += dy[idx(i)] as f64;
        }
    }
    (dx, dg, db)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

#[allow(clippy::type_complexity)]
fn run(
    x: &[f32],
    dy: &[f32],
    (n, c, hw, groups): (usize, usize, usize, usize),
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut y = vec![f32::NAN; x.len()];
    let (mut mean, mut rstd) = (vec![0.0; n * groups], vec![0.0; n * groups]);
    group_norm_forward(
        x,
        n,
        c,
        hw,
        groups,
        1e-5,
        Some(gamma),
        Some(beta),
        &mut y,
        &mut mean,
        &mut rstd,
    );
    let mut dx = vec![f32::NAN; x.len()];
    let (mut dg, mut db) = (vec![f32::NAN; c], vec![f32::NAN; c]);
    group_norm_backward(
        x,
        dy,
        n,
        c,
        hw,
        groups,
        &mean,
        &rstd,
        Some(gamma),
        &mut dx,
        Some(&mut dg),
        Some(&mut db),
    );
    (y, mean, rstd, dx, dg, db)
}

#[test]
fn group_norm_matches_f64_reference() {
    // (n, c, hw, groups), and a mean offset that would ruin one-pass f32 statistics.
    let cases = [
        ((2, 6, 5, 3), 0.0),
        ((1, 7, 13, 7), 0.0),
        ((3, 8, 1, 2), 0.0),
        ((2, 4, 49, 1), 1000.0),
        ((1, 32, 9, 8), -300.0),
    ];
    for (k, &((n, c, hw, groups), offset)) in cases.iter().enumerate() {
        let mut rng = Rng(0x1234_5678 + k as u64);
        let x = rng.vec(n * c * hw, offset);
        let dy = rng.vec(n * c * hw, 0.0);
        let gamma = rng.vec(c, 1.0);
        let beta = rng.vec(c, 0.0);
        let (y, mean, rstd, dx, dg, db) = run(&x, &dy, (n, c, hw, groups), &gamma, &beta);
        let (y_ref, mean_ref, rstd_ref) =
            reference_forward(&x, n, c, hw, groups, 1e-5, &gamma, &beta);
        let what = format!("case {k}");
        assert_close(&format!("{what} y"), &y, &y_ref, 1e-4);
        assert_close(&format!("{what} mean"), &mean, &mean_ref, 1e-6);
        assert_close(&format!("{what} rstd"), &rstd, &rstd_ref, 1e-5);
        let (dx_ref, dg_ref, db_ref) = reference_backward(&x, &dy, n, c, hw, groups, 1e-5, &gamma);
        assert_close(&format!("{what} dx"), &dx, &dx_ref, 2e-4);
        assert_close(&format!("{what} dgamma"), &dg, &dg_ref, 1e-4);
        assert_close(&format!("{what} dbeta"), &db, &db_ref, 1e-5);
    }
}

#[test]
fn group_norm_without_affine() {
    let (n, c, hw, groups) = (2, 4, 6, 2);
    let mut rng = Rng(77);
    let x = rng.vec(n * c * hw, 0.5);
    let dy = rng.vec(n * c * hw, 0.0);
    let ones = vec![1.0; c];
    let zeros = vec![0.0; c];
    let mut y = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (vec![0.0; n * groups], vec![0.0; n * groups]);
    group_norm_forward(
        &x, n, c, hw, groups, 1e-5, None, None, &mut y, &mut mean, &mut rstd,
    );
    let mut dx = vec![0.0; x.len()];
    group_norm_backward(
        &x, &dy, n, c, hw, groups, &mean, &rstd, None, &mut dx, None, None,
    );
    let (y2, _, _, dx2, _, _) = run(&x, &dy, (n, c, hw, groups), &ones, &zeros);
    assert_eq!(y, y2);
    assert_eq!(dx, dx2);
}

/// Central differences of `L = sum(dy * y)` in f64 against the analytic gradients.
#[test]
fn group_norm_backward_matches_finite_differences() {
    let (n, c, hw, groups) = (2, 6, 4, 3);
    let mut rng = Rng(4242);
    let x = rng.vec(n * c * hw, 0.3);
    let dy = rng.vec(n * c * hw, 0.0);
    let gamma = rng.vec(c, 1.0);
    let beta = rng.vec(c, 0.0);
    let (_, _, _, dx, dg, db) = run(&x, &dy, (n, c, hw, groups), &gamma, &beta);
    let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
        let (y, _, _) = reference_forward(x, n, c, hw, groups, 1e-5, gamma, beta);
        y.iter().zip(&dy).map(|(a, &b)| a * b as f64).sum()
    };
    let h = 1e-3f32;
    let numeric = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
    for i in 0..x.len() {
        let d = numeric(&|e| {
            let mut xp = x.clone();
            xp[i] += e;
            loss(&xp, &gamma, &beta)
        });
        assert!((d - dx[i] as f64).abs() < 2e-3, "dx[{i}]: {} vs {d}", dx[i]);
    }
    for ch in 0..c {
        let d = numeric(&|e| {
            let mut gp = gamma.clone();
            gp[ch] += e;
            loss(&x, &gp, &beta)
        });
        assert!((d - dg[ch] as f64).abs() < 2e-3, "dgamma[{ch}]");
        let d = numeric(&|e| {
            let mut bp = beta.clone();
            bp[ch] += e;
            loss(&x, &gamma, &bp)
        });
        assert!((d - db[ch] as f64).abs() < 2e-3, "dbeta[{ch}]");
    }
}

#[test]
fn group_norm_bitwise_identical_for_1_and_2_threads() {
    let _guard = crate::kernels::cpu::test_lock();
    let (n, c, hw, groups) = (8, 64, 256, 32);
    let mut rng = Rng(31337);
    let x = rng.vec(n * c * hw, 0.1);
    let dy = rng.vec(n * c * hw, 0.0);
    let gamma = rng.vec(c, 1.0);
    let beta = rng.vec(c, 0.0);
    let in_pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run(&x, &dy, (n, c, hw, groups), &gamma, &beta))
    };
    let (one, two) = (in_pool(1), in_pool(2));
    let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one.0), bits(&two.0), "y");
    assert_eq!(bits(&one.1), bits(&two.1), "mean");
    assert_eq!(bits(&one.2), bits(&two.2), "rstd");
    assert_eq!(bits(&one.3), bits(&two.3), "dx");
    assert_eq!(bits(&one.4), bits(&two.4), "dgamma");
    assert_eq!(bits(&one.5), bits(&two.5), "dbeta");
}

/// The AVX2 and the forced portable paths agree to the bit.
#[test]
fn group_norm_portable_path_matches_simd_path() {
    let _guard = crate::kernels::cpu::test_lock();
    let (n, c, hw, groups) = (2, 12, 37, 4);
    let mut rng = Rng(2024);
    let x = rng.vec(n * c * hw, 3.0);
    let dy = rng.vec(n * c * hw, 0.0);
    let gamma = rng.vec(c, 1.0);
    let beta = rng.vec(c, 0.0);
    let simd = run(&x, &dy, (n, c, hw, groups), &gamma, &beta);
    let portable =
        crate::kernels::cpu::with_portable(|| run(&x, &dy, (n, c, hw, groups), &gamma, &beta));
    let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&simd.0), bits(&portable.0), "y");
    assert_eq!(bits(&simd.3), bits(&portable.3), "dx");
    assert_eq!(bits(&simd.4), bits(&portable.4), "dgamma");
}

#[test]
#[should_panic(expected = "group_norm_forward")]
fn group_norm_panics_when_groups_do_not_divide_channels() {
    let x = vec![0.0; 12];
    let mut y = vec![0.0; 12];
    let (mut m, mut r) = (vec![0.0; 2], vec![0.0; 2]);
    group_norm_forward(&x, 1, 6, 2, 4, 1e-5, None, None, &mut y, &mut m, &mut r);
}
