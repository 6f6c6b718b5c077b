//! `softmax` and `log_softmax` over the last axis.
//!
//! For each row `x` (the last axis), with `m = max(x)` and `s = sum_j e^(x_j - m)`:
//! `softmax(x)_i = e^(x_i - m) / s` and `log_softmax(x)_i = x_i - m - ln s`. Subtracting the
//! row maximum keeps every exponent at most 0, so nothing overflows. `s` is accumulated in f32
//! lanes over runs of 1024 elements and the runs added in f64. A NaN in a row makes the whole
//! row NaN. Rows shorter than 64K elements are processed whole by one task (rows are grouped
//! into tasks of about 64K elements); longer rows are cut into 64K-element blocks whose partial
//! maxima and sums are combined in block order, so results never depend on the thread count.
//!
//! ```
//! use tensor::Tensor;
//! let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0], &[2, 3]);
//! let p = x.softmax();
//! assert!((p.data()[0..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! assert!((p.data()[4] - 1.0 / 3.0).abs() < 1e-6);
//! assert!((x.log_softmax().data()[5] + 3f32.ln()).abs() < 1e-6);
//! ```

use rayon::prelude::*;
use wide::f32x8;

use super::par::{self, load, load_partial, store, store_partial, CHUNK, PAR_MIN};
use super::vmath;
use crate::Tensor;

/// The maximum of a run (NaN-unaware; a NaN shows up later through `x - m`).
fn run_max(x: &[f32]) -> f32 {
    let mut acc = f32x8::splat(f32::NEG_INFINITY);
    for piece in x.chunks(8) {
        acc = acc.fast_max(load_partial(piece, f32::NEG_INFINITY));
    }
    acc.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// `sum_j e^(x_j - m)`, also writing `e^(x_j - m)` into `out` when given.
fn run_exp_sum(x: &[f32], m: f32, mut out: Option<&mut [f32]>) -> f64 {
    let mv = f32x8::splat(m);
    let mut total = 0.0f64;
    for (r, run) in x.chunks(1024).enumerate() {
        let mut acc = f32x8::ZERO;
        for (i, piece) in run.chunks(8).enumerate() {
            let at = r * 1024 + i * 8;
            let full = piece.len() == 8;
            let v = if full {
                load(piece)
            } else {
                load_partial(piece, f32::NEG_INFINITY)
            };
            // Padding lanes hold -inf - m = -inf, whose exponential is exactly 0 (unless m is
            // -inf or NaN, when the row is NaN anyway).
            let e = vmath::exp(v - mv);
            acc += e;
            if let Some(o) = out.as_deref_mut() {
                if full {
                    store(e, &mut o[at..]);
                } else {
                    store_partial(e, &mut o[at..at + piece.len()]);
                }
            }
        }
        total += acc.to_array().iter().map(|&v| v as f64).sum::<f64>();
    }
    total
}

/// Finishes a row (or a block of one): `out = out * inv` (softmax, `out` holding the
/// exponentials) or `out = x - shift` (log-softmax).
fn finish(x: &[f32], out: &mut [f32], log: bool, inv: f32, shift: f32) {
    if log {
        par::unary_slice(x, out, &|v: f32x8| v - f32x8::splat(shift));
    } else {
        par::unary_inplace(out, &|v: f32x8| v * f32x8::splat(inv));
    }
}

fn softmax_row(x: &[f32], out: &mut [f32], log: bool) {
    let m = run_max(x);
    let s = run_exp_sum(x, m, if log { None } else { Some(&mut *out) });
    finish(x, out, log, (1.0 / s) as f32, m + (s.ln() as f32));
}

/// One row longer than a chunk: the same three passes, each split into CHUNK blocks.
fn softmax_long_row(x: &[f32], out: &mut [f32], log: bool) {
    let blocks = x.len().div_ceil(CHUNK);
    let block = |b: usize| &x[b * CHUNK..((b + 1) * CHUNK).min(x.len())];
    let m = par::map_indices(blocks, x.len(), |b| run_max(block(b)))
        .into_iter()
        .fold(f32::NEG_INFINITY, f32::max);
    let partials: Vec<f64> = if log {
        par::map_indices(blocks, x.len(), |b| run_exp_sum(block(b), m, None))
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(b, o)| run_exp_sum(block(b), m, Some(o)))
            .collect()
    };
    let s: f64 = partials.iter().sum();
    let (inv, shift) = ((1.0 / s) as f32, m + (s.ln() as f32));
    par::for_chunks_mut(out, |start, o| {
        finish(&x[start..start + o.len()], o, log, inv, shift);
    });
}

fn softmax_impl(x: &Tensor, log: bool) -> Tensor {
    let l = *x.shape().last().unwrap_or(&1);
    let mut out = vec![0.0f32; x.numel()];
    let src = x.data();
    if l == 0 || out.is_empty() {
        return Tensor::from_vec(out, x.shape());
    }
    if l >= CHUNK {
        for (row, o) in src.chunks(l).zip(out.chunks_mut(l)) {
            softmax_long_row(row, o, log);
        }
    } else {
        let per_task = (CHUNK / l).max(1) * l;
        let task = |(t, o): (usize, &mut [f32])| {
            let xs = &src[t * per_task..t * per_task + o.len()];
            for (row, orow) in xs.chunks(l).zip(o.chunks_mut(l)) {
                softmax_row(row, orow, log);
            }
        };
        if out.len() < PAR_MIN {
            out.chunks_mut(per_task).enumerate().for_each(task);
        } else {
            out.par_chunks_mut(per_task).enumerate().for_each(task);
        }
    }
    Tensor::from_vec(out, x.shape())
}

impl Tensor {
    /// Softmax over the last axis (a 0-d tensor counts as one row of one element).
    pub fn softmax(&self) -> Tensor {
        softmax_impl(self, false)
    }

    /// Log-softmax over the last axis: `x - max(x) - ln(sum(e^(x - max(x))))` per row.
    pub fn log_softmax(&self) -> Tensor {
        softmax_impl(self, true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, Lcg};
    use crate::Tensor;

    fn reference(x: &Tensor, log: bool) -> Vec<f64> {
        let l = *x.shape().last().unwrap_or(&1);
        let mut out = Vec::new();
        for row in x.data().chunks(l) {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            out.extend(row.iter().map(|&v| {
                if log {
                    v as f64 - m - s.ln()
                } else {
                    (v as f64 - m).exp() / s
                }
            }));
        }
        out
    }

    #[test]
    fn softmax_matches_f64_reference() {
        let mut rng = Lcg::new(40);
        for shape in [
            &[1][..],
            &[7],
            &[3, 17],
            &[5, 129],
            &[4, 1000],
            &[2, 3, 70000],
            &[300, 1027],
            &[],
        ] {
            let n = crate::shape::numel(shape);
            let x = Tensor::from_vec(rng.uniform_vec(n, -30.0, 30.0), shape);
            // x - m is rounded in f32 (relative error 6e-8 * |x - m|, |x - m| <= 60 here),
            // which the exponential turns into a relative error of up to 3.6e-6.
            assert_close(
                "softmax",
                x.softmax().data(),
                &reference(&x, false),
                4e-6,
                1e-30,
            );
            assert_close(
                "log_softmax",
                x.log_softmax().data(),
                &reference(&x, true),
                1e-6,
                2e-6,
            );
        }
    }

    #[test]
    fn softmax_is_stable_for_large_inputs() {
        let x = Tensor::from_vec(vec![1e4, 1e4 + 1.0, -1e4, f32::NEG_INFINITY], &[4]);
        let p = x.softmax();
        assert!(p.data().iter().all(|v| v.is_finite()));
        assert!((p.data()[1] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert_eq!(p.data()[3], 0.0);
        let lp = x.log_softmax();
        assert_eq!(lp.data()[3], f32::NEG_INFINITY);
        let mut y = Tensor::zeros(&[2, 5]);
        y.data_mut()[7] = f32::NAN;
        let q = y.softmax();
        assert!(q.data()[..5].iter().all(|v| (v - 0.2).abs() < 1e-7));
        assert!(q.data()[5..].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn softmax_is_bitwise_identical_on_1_and_2_threads() {
        let mut rng = Lcg::new(41);
        let x = Tensor::from_vec(rng.uniform_vec(300_007, -5.0, 5.0), &[300_007]);
        let y = rng.tensor(&[500, 999]);
        let run = |k: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap();
            pool.install(|| (x.softmax(), x.log_softmax(), y.softmax()))
        };
        let (a, b) = (run(1), run(2));
        assert_eq!(a.0.data(), b.0.data());
        assert_eq!(a.1.data(), b.1.data());
        assert_eq!(a.2.data(), b.2.data());
    }
}
