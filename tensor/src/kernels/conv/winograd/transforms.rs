//! The arithmetic of F(4x4, 3x3): the filter transform `G g G^T` and its adjoint, and the
//! input, output and output-gradient transforms of whole rows of tiles in place, vectorised
//! across tiles (see the parent module for the matrices).

use std::mem::MaybeUninit;

use rayon::prelude::*;
use wide::f32x8;

use super::{rows_by_channel, XI};
use crate::kernels::cpu::Isa;
use crate::ops::alloc;
use crate::ops::simd::{self, SimdF32};

/// `G (g0, g1, g2)^T` for the three taps of one filter row or column, in f64.
#[inline(always)]
fn filter_column(g: [f64; 3]) -> [f64; 6] {
    const SIXTH: f64 = 1.0 / 6.0;
    let [g0, g1, g2] = g;
    let (even, odd) = (g0 + g2, g1);
    let (e4, o2) = (0.25 * g0 + g2, 0.5 * g1);
    [
        0.25 * g0,
        -SIXTH * (even + odd),
        -SIXTH * (even - odd),
        SIXTH * (e4 + o2),
        SIXTH * (e4 - o2),
        g2,
    ]
}

/// Filters per block in the filter transforms: a block's 36 runs are written (or read)
/// contiguously. One filter at a time, its 36 values would lie a plane apart, which for
/// power-of-two channel counts all map to the same cache set.
pub(super) const FILTER_BLOCK: usize = 64;

/// Values per plane `U[xi]` of [`transform_weights`]' result (whole blocks of filters).
pub(crate) fn weight_plane(c_out: usize, c_in: usize) -> usize {
    (c_out * c_in).next_multiple_of(FILTER_BLOCK)
}

/// `U[xi][co * c_in + ci] = (G g G^T)[xi]` for every filter `g = weight[co, ci]` (computed in
/// f64 and rounded once), planes of [`weight_plane`] values; `weight` is `[c_out, c_in, 3, 3]`.
/// In parallel over blocks of filters.
pub(crate) fn transform_weights(c_out: usize, c_in: usize, weight: &[f32]) -> Vec<f32> {
    transform_filters(c_out, c_in, weight.len(), |co, ci| {
        let g = &weight[9 * (co * c_in + ci)..][..9];
        std::array::from_fn(|t| f64::from(g[t]))
    })
}

/// [`transform_weights`] for the convolution that computes the input gradient of `weight`
/// (`[c_in, c_out, 3, 3]`, so the result has `c_out` outputs over `c_in` inputs): filter
/// `(co, ci)` is `weight[ci, co]` turned by 180 degrees, read in place rather than copied.
pub(crate) fn transform_weights_adjoint(c_out: usize, c_in: usize, weight: &[f32]) -> Vec<f32> {
    transform_filters(c_out, c_in, weight.len(), |co, ci| {
        let g = &weight[9 * (ci * c_out + co)..][..9];
        std::array::from_fn(|t| f64::from(g[8 - t]))
    })
}

/// `U[xi][co * c_in + ci] = (G g G^T)[xi]` for the `c_out * c_in` filters `g = filter(co, ci)`
/// (row-major 3x3) of a weight tensor of `weight_len` values, in parallel over blocks of
/// filters; every value of the result is written once.
fn transform_filters(
    c_out: usize,
    c_in: usize,
    weight_len: usize,
    filter: impl Fn(usize, usize) -> [f64; 9] + Sync,
) -> Vec<f32> {
    let count = c_out * c_in;
    assert_eq!(weight_len, count * 9, "winograd filters: weight length");
    let plane = weight_plane(c_out, c_in);
    let fill = |u: &mut [MaybeUninit<f32>]| {
        rows_by_channel(u, plane, plane / FILTER_BLOCK, FILTER_BLOCK)
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut runs)| {
                let first = b * FILTER_BLOCK;
                let mut block = [[0.0f32; FILTER_BLOCK]; XI];
                let (mut co, mut ci) = (first / c_in, first % c_in);
                // Filter k fills column k of the block.
                #[allow(clippy::needless_range_loop)]
                for k in 0..FILTER_BLOCK.min(count - first) {
                    let g = filter(co, ci);
                    // Gg: 6 x 3, one filter column at a time; then (Gg) G^T one row at a time.
                    let cols: [[f64; 6]; 3] =
                        std::array::from_fn(|j| filter_column([g[j], g[3 + j], g[6 + j]]));
                    for i in 0..6 {
                        let row = filter_column([cols[0][i], cols[1][i], cols[2][i]]);
                        for (j, &v) in row.iter().enumerate() {
                            block[i * 6 + j][k] = v as f32;
                        }
                    }
                    ci += 1;
                    if ci == c_in {
                        (co, ci) = (co + 1, 0);
                    }
                }
                for (run, values) in runs.iter_mut().zip(&block) {
                    run.write_copy_of_slice(values);
                }
            });
    };
    // SAFETY: the blocks' runs tile all XI planes, and every run is written in full (zeros
    // past the last filter).
    unsafe { alloc::filled_by(XI * plane, fill) }
}

/// `B^T d` for six values `d` (one column or row of a patch).
#[inline(always)]
fn input_column<V: SimdF32>(d: [V; 6]) -> [V; 6] {
    let (four, minus4, minus5, two) =
        (V::splat(4.0), V::splat(-4.0), V::splat(-5.0), V::splat(2.0));
    let t1 = d[2].mul_add(minus4, d[4]); // d4 - 4 d2
    let t2 = d[1].mul_add(minus4, d[3]); // d3 - 4 d1
    let t3 = d[4] - d[2];
    let t4 = (d[3] - d[1]) * two;
    [
        d[0].mul_add(four, d[2].mul_add(minus5, d[4])),
        t1 + t2,
        t1 - t2,
        t3 + t4,
        t3 - t4,
        d[1].mul_add(four, d[3].mul_add(minus5, d[5])),
    ]
}

/// `A^T m` for six values `m`.
#[inline(always)]
fn output_column<V: SimdF32>(m: [V; 6]) -> [V; 4] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + a + c,
        d.mul_add(V::splat(2.0), b),
        c.mul_add(V::splat(4.0), a),
        d.mul_add(V::splat(8.0), b) + m[5],
    ]
}

/// Declares `$on(isa, args..)`, which runs `$generic::<V>(args..)` on the vectors of `isa`
/// (which the CPU must have), compiled with that instruction set's features so that the
/// tile loops are vectorised for it.
macro_rules! on_isa {
    ($on:ident, $generic:ident, ($($a:ident: $t:ty),*)) => {
        pub(super) fn $on(isa: Isa, $($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($a: $t),*) {
                $generic::<simd::Avx512>($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) {
                $generic::<simd::Avx2>($($a),*)
            }
            match isa {
                // SAFETY: `isa` is the CPU's (cpu::isa) or a lesser one.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512($($a),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { avx2($($a),*) },
                _ => $generic::<f32x8>($($a),*),
            }
        }
    };
}

/// The vectors at column `c` of rows `row(0), row(1), ..`. (Loops here and in [`column`], not
/// `std::array::from_fn`: its closure does not inherit the caller's target features, and
/// unless the inliner happens to fold it in, every vector op becomes a call.)
#[inline(always)]
fn load_rows<V: SimdF32, const N: usize>(
    rows: &[&mut [f32]],
    c: usize,
    row: impl Fn(usize) -> usize,
) -> [V; N] {
    let mut out = [V::splat(0.0); N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = V::load(&rows[row(i)][c..]);
    }
    out
}

/// Entry `i` of each of the arrays in `t`.
#[inline(always)]
fn column<V: SimdF32, const N: usize, const M: usize>(t: &[[V; M]; N], i: usize) -> [V; N] {
    let mut out = [V::splat(0.0); N];
    for (o, row) in out.iter_mut().zip(t) {
        *o = row[i];
    }
    out
}

/// `rows[xi][c] <- (B^T d B)[xi]` in place, where `rows[i * 6 + j][c]` holds `d[i][j]` of the
/// tile in column `c`, for columns `0..len` (`len` a multiple of [`COLUMN_ALIGN`]).
#[inline(always)]
fn transform_input<V: SimdF32>(rows: &mut [&mut [f32]], len: usize) {
    let mut c = 0;
    while c < len {
        // B^T d (down each column j of the patch), then (B^T d) B (along each row i).
        let mut t = [[V::splat(0.0); 6]; 6];
        for (j, tj) in t.iter_mut().enumerate() {
            *tj = input_column(load_rows(rows, c, |i| i * 6 + j));
        }
        for i in 0..6 {
            let v = input_column(column(&t, i));
            for (j, vj) in v.into_iter().enumerate() {
                vj.store(&mut rows[i * 6 + j][c..]);
            }
        }
        c += V::LANES;
    }
}

/// `rows[a * 4 + b][c] <- (A^T M A)[a][b]` in place (the first 16 rows), where `rows[xi][c]`
/// holds `M[xi]` of the tile in column `c`, for columns `0..len`.
#[inline(always)]
fn transform_output<V: SimdF32>(rows: &mut [&mut [f32]], len: usize) {
    let mut c = 0;
    while c < len {
        let mut t = [[V::splat(0.0); 4]; 6];
        for (j, tj) in t.iter_mut().enumerate() {
            *tj = output_column(load_rows(rows, c, |i| i * 6 + j));
        }
        for a in 0..4 {
            for (b, yb) in output_column(column(&t, a)).into_iter().enumerate() {
                yb.store(&mut rows[a * 4 + b][c..]);
            }
        }
        c += V::LANES;
    }
}

/// `A y` for four values `y` (the adjoint of [`output_column`]).
#[inline(always)]
fn grad_column<V: SimdF32>(y: [V; 4]) -> [V; 6] {
    let (e, o) = (y[0] + y[2], y[1] + y[3]);
    let (e4, o2) = (
        y[2].mul_add(V::splat(4.0), y[0]),
        y[3].mul_add(V::splat(4.0), y[1]) * V::splat(2.0),
    );
    [y[0], e + o, e - o, e4 + o2, e4 - o2, y[3]]
}

/// `rows[xi][c] <- (A dY A^T)[xi]` in place (all 36 rows), where `rows[a * 4 + b][c]` holds
/// `dY[a][b]` of the tile in column `c`, for columns `0..len`.
#[inline(always)]
fn transform_grad_output<V: SimdF32>(rows: &mut [&mut [f32]], len: usize) {
    let mut c = 0;
    while c < len {
        // A dY (down each column b of the block), then (A dY) A^T (along each row i).
        let mut t = [[V::splat(0.0); 6]; 4];
        for (b, tb) in t.iter_mut().enumerate() {
            *tb = grad_column(load_rows(rows, c, |a| a * 4 + b));
        }
        for i in 0..6 {
            let m = grad_column(column(&t, i));
            for (j, mj) in m.into_iter().enumerate() {
                mj.store(&mut rows[i * 6 + j][c..]);
            }
        }
        c += V::LANES;
    }
}

on_isa!(transform_grad_output_on, transform_grad_output, (rows: &mut [&mut [f32]], len: usize));

on_isa!(transform_input_on, transform_input, (rows: &mut [&mut [f32]], len: usize));

on_isa!(transform_output_on, transform_output, (rows: &mut [&mut [f32]], len: usize));

/// `(G^T u)` for six values `u` (one row or column of a transformed filter gradient), in f64.
#[inline(always)]
pub(super) fn filter_fold(u: [f64; 6]) -> [f64; 3] {
    const SIXTH: f64 = 1.0 / 6.0;
    let (s12, d12) = (u[1] + u[2], u[1] - u[2]);
    let (s34, d34) = (u[3] + u[4], u[3] - u[4]);
    [
        0.25 * u[0] + SIXTH * (0.25 * s34 - s12),
        SIXTH * (0.5 * d34 - d12),
        SIXTH * (s34 - s12) + u[5],
    ]
}
