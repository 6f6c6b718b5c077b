//! Sample-quality metrics on classifier outputs, all in f64.
//!
//! - The **Fréchet distance** between Gaussians fitted to two feature sets (FID when the
//!   features are Inception's; here they are [`crate::classifier::Classifier::features`]):
//!   `d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`. The trace of the matrix square root
//!   is computed stably from symmetric eigendecompositions (Jacobi):
//!   `Tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(S1^(1/2) S2 S1^(1/2)))`, since `S1 S2` is similar
//!   to that symmetric positive semi-definite matrix. Tiny negative eigenvalues from rounding
//!   are clamped to zero.
//! - The **Inception Score** analogue `exp(E_x KL(p(y|x) || p(y)))` from class probabilities:
//!   1 when every prediction is the same, the number of classes when predictions are confident
//!   and the classes balanced.

/// Mean and covariance of a set of feature vectors.
#[derive(Clone, Debug)]
pub struct Gaussian {
    /// The mean, `d` values.
    pub mean: Vec<f64>,
    /// The unbiased covariance (divided by `n - 1`), `d x d` row-major.
    pub cov: Vec<f64>,
}

impl Gaussian {
    /// Fits `rows` (`n` rows of `d` values, row-major) with `n >= 2`. Panics otherwise.
    pub fn fit(rows: &[f32], d: usize) -> Gaussian {
        assert!(
            d > 0 && rows.len().is_multiple_of(d) && rows.len() / d >= 2,
            "Gaussian::fit: expected at least 2 rows of {d} values, found {} values",
            rows.len()
        );
        let n = rows.len() / d;
        let mut mean = vec![0.0f64; d];
        for row in rows.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; d * d];
        let mut centred = vec![0.0f64; d];
        for row in rows.chunks_exact(d) {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = v as f64 - m;
            }
            for i in 0..d {
                let ci = centred[i];
                for j in i..d {
                    cov[i * d + j] += ci * centred[j];
                }
            }
        }
        for i in 0..d {
            for j in i..d {
                let v = cov[i * d + j] / (n - 1) as f64;
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        Gaussian { mean, cov }
    }

    /// The dimension `d`.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// The Fréchet distance between the Gaussians fitted to `a` and `b` (each `n x d`, row-major,
/// at least 2 rows).
pub fn frechet_distance_of(a: &[f32], b: &[f32], d: usize) -> f64 {
    frechet_distance(&Gaussian::fit(a, d), &Gaussian::fit(b, d))
}

/// The squared Fréchet (2-Wasserstein) distance between two Gaussians, clamped at zero.
pub fn frechet_distance(p: &Gaussian, q: &Gaussian) -> f64 {
    let d = p.dim();
    assert_eq!(
        d,
        q.dim(),
        "frechet_distance: the Gaussians have dimensions {d} and {}",
        q.dim()
    );
    let mean_term: f64 = p
        .mean
        .iter()
        .zip(&q.mean)
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    let root = sqrt_psd(&p.cov, d);
    let inner = matmul(&matmul(&root, &q.cov, d), &root, d);
    let (values, _) = symmetric_eigen(&inner, d);
    let cross: f64 = values.iter().map(|&l| l.max(0.0).sqrt()).sum();
    (mean_term + trace(&p.cov) + trace(&q.cov) - 2.0 * cross).max(0.0)
}

/// `a * b` for `d x d` row-major matrices.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// The symmetric square root `V diag(sqrt(max(lambda, 0))) V^T` of a symmetric positive
/// semi-definite `d x d` matrix.
pub fn sqrt_psd(m: &[f64], d: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(m, d);
    let roots: Vec<f64> = values.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in i..d {
            let v: f64 = (0..d)
                .map(|k| vectors[i * d + k] * roots[k] * vectors[j * d + k])
                .sum();
            out[i * d + j] = v;
            out[j * d + i] = v;
        }
    }
    out
}

/// Eigenvalues and eigenvectors of a symmetric `d x d` matrix (row-major) by the cyclic Jacobi
/// method: `m = V diag(values) V^T`, the eigenvectors in the columns of `V` (row-major).
/// Rotations continue until the off-diagonal mass is below `1e-24` of the total (at most 100
/// sweeps).
pub fn symmetric_eigen(m: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(m.len(), d * d, "symmetric_eigen: expected {d}x{d} values");
    let mut a = m.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        if off <= total * 1e-24 || off == 0.0 {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                // Choose the rotation angle that zeroes a[p][q]: tan(2 theta) = 2 apq / (aqq - app).
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- J^T A J with J the rotation in the (p, q) plane.
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// The Inception Score analogue `exp(mean_x KL(p(y|x) || p(y)))` of per-image class
/// probabilities (each row sums to 1), with `p(y)` their mean. Panics on no rows.
pub fn inception_score(probs: &[Vec<f64>]) -> f64 {
    assert!(!probs.is_empty(), "inception_score: no predictions");
    let k = probs[0].len();
    let mut marginal = vec![0.0; k];
    for row in probs {
        assert_eq!(row.len(), k, "inception_score: rows of different lengths");
        for (m, &p) in marginal.iter_mut().zip(row) {
            *m += p / probs.len() as f64;
        }
    }
    let kl = |row: &Vec<f64>| -> f64 {
        row.iter()
            .zip(&marginal)
            .filter(|(&p, _)| p > 0.0)
            .map(|(&p, &m)| p * (p / m).ln())
            .sum()
    };
    let mean_kl = probs.iter().map(kl).sum::<f64>() / probs.len() as f64;
    mean_kl.exp()
}

/// How many rows have each class as their most probable (a histogram of `k` counts).
pub fn predicted_histogram(probs: &[Vec<f64>], k: usize) -> Vec<usize> {
    let mut counts = vec![0; k];
    for row in probs {
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        if best < k {
            counts[best] += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::rng::Rng;

    /// `n` rows of `d` values: `z * scale + shift` per column, `z` standard normal.
    fn gaussian_rows(n: usize, scale: &[f64], shift: &[f64], seed: u64) -> Vec<f32> {
        let d = scale.len();
        let z = Rng::new(seed, 0).normal(&[n, d]);
        z.data()
            .chunks(d)
            .flat_map(|r| (0..d).map(move |j| (r[j] as f64 * scale[j] + shift[j]) as f32))
            .collect()
    }

    #[test]
    fn jacobi_reconstructs_a_symmetric_matrix() {
        let d = 6;
        let x = Rng::new(3, 0).normal(&[d, d]);
        let x: Vec<f64> = x.data().iter().map(|&v| v as f64).collect();
        let m: Vec<f64> = (0..d * d)
            .map(|ij| x[ij] + x[(ij % d) * d + ij / d])
            .collect();
        let (values, v) = symmetric_eigen(&m, d);
        for i in 0..d {
            for j in 0..d {
                let r: f64 = (0..d)
                    .map(|k| v[i * d + k] * values[k] * v[j * d + k])
                    .sum();
                assert!((r - m[i * d + j]).abs() < 1e-10, "{r} vs {}", m[i * d + j]);
            }
        }
        let root = sqrt_psd(&matmul(&m, &m, d), d);
        let square = matmul(&root, &root, d);
        let mm = matmul(&m, &m, d);
        for (a, b) in square.iter().zip(&mm) {
            assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()));
        }
    }

    #[test]
    fn a_set_against_itself_is_zero() {
        let a = gaussian_rows(500, &[1.0, 2.0, 0.5, 3.0], &[0.0, 1.0, -1.0, 2.0], 1);
        let d = frechet_distance_of(&a, &a, 4);
        assert!(d.abs() < 1e-8, "{d}");
    }

    #[test]
    fn diagonal_gaussians_match_the_closed_form() {
        // For diagonal covariances: sum (m1 - m2)^2 + sum (s1 - s2)^2 with s the std devs.
        let p = Gaussian {
            mean: vec![0.0, 1.0, 2.0],
            cov: vec![4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.25],
        };
        let q = Gaussian {
            mean: vec![1.0, 1.0, 0.0],
            cov: vec![1.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.25],
        };
        let expected = (1.0 + 0.0 + 4.0) + (1.0 + 4.0 + 0.0);
        let got = frechet_distance(&p, &q);
        assert!((got - expected).abs() < 1e-10, "{got} vs {expected}");
        // And from samples, within sampling error.
        let a = gaussian_rows(20000, &[2.0, 1.0, 0.5], &[0.0, 1.0, 2.0], 2);
        let b = gaussian_rows(20000, &[1.0, 3.0, 0.5], &[1.0, 1.0, 0.0], 3);
        let got = frechet_distance_of(&a, &b, 3);
        assert!((got - expected).abs() < 0.3, "{got} vs {expected}");
    }

    #[test]
    fn rotating_both_sets_changes_nothing() {
        let a = gaussian_rows(400, &[1.0, 2.0, 0.5], &[0.0, 1.0, -1.0], 4);
        let b = gaussian_rows(400, &[1.5, 0.7, 1.0], &[0.5, 0.0, 0.0], 5);
        // A rotation: the eigenvectors of a random symmetric matrix.
        let x = Rng::new(6, 0).normal(&[3, 3]);
        let x: Vec<f64> = x.data().iter().map(|&v| v as f64).collect();
        let m: Vec<f64> = (0..9).map(|ij| x[ij] + x[(ij % 3) * 3 + ij / 3]).collect();
        let (_, r) = symmetric_eigen(&m, 3);
        let rotate = |rows: &[f32]| -> Vec<f32> {
            let mut out = Vec::with_capacity(rows.len());
            for v in rows.chunks(3) {
                for i in 0..3 {
                    out.push((0..3).map(|k| r[i * 3 + k] * v[k] as f64).sum::<f64>() as f32);
                }
            }
            out
        };
        let before = frechet_distance_of(&a, &b, 3);
        let after = frechet_distance_of(&rotate(&a), &rotate(&b), 3);
        assert!(before > 0.5);
        assert!(
            (before - after).abs() < 1e-4 * before,
            "{before} vs {after}"
        );
    }

    #[test]
    fn a_singular_covariance_is_handled() {
        // Rank-deficient: every row lies on a line in 3-d; distance to itself is still ~0.
        let a: Vec<f32> = (0..50)
            .flat_map(|i| [i as f32, 2.0 * i as f32, 0.0])
            .collect();
        assert!(frechet_distance_of(&a, &a, 3).abs() < 1e-6);
    }

    #[test]
    fn inception_score_of_uniform_and_of_confident_balanced_predictions() {
        let uniform = vec![vec![0.2; 5]; 40];
        assert!((inception_score(&uniform) - 1.0).abs() < 1e-12);
        let confident: Vec<Vec<f64>> = (0..40)
            .map(|i| (0..5).map(|k| if k == i % 5 { 1.0 } else { 0.0 }).collect())
            .collect();
        assert!((inception_score(&confident) - 5.0).abs() < 1e-12);
        let same = vec![vec![1.0, 0.0, 0.0]; 10];
        assert!((inception_score(&same) - 1.0).abs() < 1e-12);
        assert_eq!(predicted_histogram(&confident, 5), vec![8; 5]);
    }
}
