//! The filter side of F(4x4, 3x3): `U = G g G^T` for every filter (the forward filters and the
//! adjoint ones that compute the input gradient), either as planes `U[xi][co * c_in + ci]` for
//! the GEMM path or packed straight into the direct micro-kernel's layout; and the fold
//! `dW = G^T dU G` of the weight gradient. All of it in f64, each value rounded once.
//!
//! The packed form takes eight output channels at a time, one per lane, so the arithmetic is
//! vectorised and each transformed value lands in its place in the packed panel
//! (`[xi][c_out / 8][c_in][8]`), with no intermediate `U` and no packing pass.

use std::mem::MaybeUninit;
use std::ops::{Add, Mul, Sub};

use rayon::prelude::*;

use super::super::avx512::MR;
use super::{rows_by_channel, XI};
use crate::kernels::cpu::{self, Isa};
use crate::ops::alloc;

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

/// How a convolution's filters are read from its weight tensor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Orientation {
    /// Filter `(co, ci)` is `weight[co, ci]` (`[c_out, c_in, 3, 3]`): the forward pass.
    Forward,
    /// Filter `(co, ci)` is `weight[ci, co]` turned by 180 degrees (`weight` is
    /// `[c_in, c_out, 3, 3]`): the convolution that computes the input gradient of `weight`.
    Adjoint,
}

impl Orientation {
    /// Where tap `t` (row-major) of filter `(co, ci)` lies in the weight tensor.
    #[inline(always)]
    fn tap(self, c_out: usize, c_in: usize, co: usize, ci: usize, t: usize) -> usize {
        match self {
            Orientation::Forward => 9 * (co * c_in + ci) + t,
            Orientation::Adjoint => 9 * (ci * c_out + co) + 8 - t,
        }
    }
}

/// `G (g0, g1, g2)^T` for the three taps of one filter row or column (scalars, or eight
/// filters side by side).
#[inline(always)]
fn filter_column<T>(g: [T; 3]) -> [T; 6]
where
    T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f64, Output = T>,
{
    const SIXTH: f64 = 1.0 / 6.0;
    let [g0, g1, g2] = g;
    let (even, odd) = (g0 + g2, g1);
    let (e4, o2) = (g0 * 0.25 + g2, g1 * 0.5);
    [
        g0 * 0.25,
        (even + odd) * -SIXTH,
        (even - odd) * -SIXTH,
        (e4 + o2) * SIXTH,
        (e4 - o2) * SIXTH,
        g2,
    ]
}

/// `(G^T u)` for six values `u` (one row or column of a transformed filter gradient).
#[inline(always)]
fn filter_fold<T>(u: [T; 6]) -> [T; 3]
where
    T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f64, Output = T>,
{
    const SIXTH: f64 = 1.0 / 6.0;
    let (s12, d12) = (u[1] + u[2], u[1] - u[2]);
    let (s34, d34) = (u[3] + u[4], u[3] - u[4]);
    [
        u[0] * 0.25 + (s34 * 0.25 - s12) * SIXTH,
        (d34 * 0.5 - d12) * SIXTH,
        (s34 - s12) * SIXTH + u[5],
    ]
}

/// `G g G^T` (6x6, row-major) for a 3x3 filter `g` (row-major): down each column, then along
/// each row. Loops rather than `std::array::from_fn`, whose closures would not inherit the
/// target features of the AVX-512 callers.
#[inline(always)]
fn transform_filter<T>(g: [T; 9], zero: T) -> [T; XI]
where
    T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f64, Output = T>,
{
    let mut cols = [[zero; 6]; 3];
    for (j, col) in cols.iter_mut().enumerate() {
        *col = filter_column([g[j], g[3 + j], g[6 + j]]);
    }
    let mut u = [zero; XI];
    for i in 0..6 {
        let row = filter_column([cols[0][i], cols[1][i], cols[2][i]]);
        u[i * 6..i * 6 + 6].copy_from_slice(&row);
    }
    u
}

/// `G^T du G` (3x3, row-major) for a 6x6 transformed gradient `du` (row-major).
#[inline(always)]
fn fold_filter<T>(du: [T; XI], zero: T) -> [T; 9]
where
    T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f64, Output = T>,
{
    let mut cols = [[zero; 3]; 6];
    for (j, col) in cols.iter_mut().enumerate() {
        let mut column = [zero; 6];
        for (i, c) in column.iter_mut().enumerate() {
            *c = du[i * 6 + j];
        }
        *col = filter_fold(column);
    }
    let mut g = [zero; 9];
    for a in 0..3 {
        let mut row = [zero; 6];
        for (j, r) in row.iter_mut().enumerate() {
            *r = cols[j][a];
        }
        g[a * 3..a * 3 + 3].copy_from_slice(&filter_fold(row));
    }
    g
}

/// Eight f64 values, one per lane (one filter each), for the portable path.
#[derive(Clone, Copy)]
struct Lanes([f64; MR]);

impl Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(mut self, o: Lanes) -> Lanes {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
        self
    }
}

impl Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(mut self, o: Lanes) -> Lanes {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a -= b;
        }
        self
    }
}

impl Mul<f64> for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn mul(mut self, s: f64) -> Lanes {
        for a in self.0.iter_mut() {
            *a *= s;
        }
        self
    }
}

/// Filters per block in the plane layout: a block's 36 runs are written (or read)
/// contiguously. One filter at a time, its 36 values would lie a plane apart, which for
/// power-of-two channel counts all map to the same cache set.
pub(super) const FILTER_BLOCK: usize = 64;

/// Values per plane `U[xi]` of [`transform_weights`]' result (whole blocks of filters).
pub(crate) fn weight_plane(c_out: usize, c_in: usize) -> usize {
    (c_out * c_in).next_multiple_of(FILTER_BLOCK)
}

/// `U[xi][co * c_in + ci] = (G g G^T)[xi]` for every filter `g` of `weight` read as
/// `orientation` says (`c_out` outputs over `c_in` inputs), planes of [`weight_plane`] values,
/// in parallel over blocks of filters; every value of the result is written once.
pub(crate) fn transform_weights(
    c_out: usize,
    c_in: usize,
    weight: &[f32],
    orientation: Orientation,
) -> Vec<f32> {
    let count = c_out * c_in;
    assert_eq!(weight.len(), count * 9, "winograd filters: weight length");
    let plane = weight_plane(c_out, c_in);
    let fill = |u: &mut [MaybeUninit<f32>]| {
        rows_by_channel(u, plane, plane / FILTER_BLOCK, FILTER_BLOCK)
            .par_chunks_mut(XI)
            .enumerate()
            .for_each(|(b, runs)| {
                let first = b * FILTER_BLOCK;
                let mut block = [[0.0f32; FILTER_BLOCK]; XI];
                // Filter k fills column k of the block.
                for k in 0..FILTER_BLOCK.min(count - first) {
                    let (co, ci) = ((first + k) / c_in, (first + k) % c_in);
                    let mut g = [0.0f64; 9];
                    for (t, v) in g.iter_mut().enumerate() {
                        *v = f64::from(weight[orientation.tap(c_out, c_in, co, ci, t)]);
                    }
                    for (row, v) in block.iter_mut().zip(transform_filter(g, 0.0)) {
                        row[k] = v as f32;
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

/// `packed[xi * plane + (cb * c_in + ci) * 8 + l] = (G g G^T)[xi]` for the filter `g = (cb * 8 +
/// l, ci)` of `weight` read as `orientation` says (zeros for output channels past `c_out`):
/// the direct micro-kernel's A panels, `[c_out / 8][c_in][8]` per `xi`, planes `plane` apart
/// (at least `c_out.div_ceil(8) * c_in * 8`). In parallel over blocks of eight outputs. Only
/// for CPUs that run that kernel (AVX-512).
pub(super) fn pack_weights(
    c_out: usize,
    c_in: usize,
    weight: &[f32],
    orientation: Orientation,
    packed: &mut [f32],
    plane: usize,
) {
    assert_eq!(
        weight.len(),
        c_out * c_in * 9,
        "winograd filters: weight length"
    );
    let blocks = c_out.div_ceil(MR);
    // The CPU's own instruction set, not the one kernels are told to use: another thread may
    // force the portable path between the caller's choice and this point (tests do).
    assert!(
        cpu::detected_isa() == Isa::Avx512,
        "winograd filters: the packed form is for the AVX-512 kernel"
    );
    rows_by_channel(packed, plane, blocks, c_in * MR)
        .par_chunks_mut(XI)
        .enumerate()
        .for_each(|(cb, runs)| {
            let block = Block {
                weight,
                c_out,
                c_in,
                orientation,
                cb,
            };
            // SAFETY: the CPU supports AVX-512F (asserted above); the weight's length is
            // checked above and every run holds c_in * 8 values.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::pack_block(&block, runs)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (block, runs);
        });
}

/// One block of eight output channels of [`pack_weights`].
#[derive(Clone, Copy)]
struct Block<'a> {
    weight: &'a [f32],
    c_out: usize,
    c_in: usize,
    orientation: Orientation,
    cb: usize,
}

/// Input channels transformed between writes in `avx512::pack_block`: each of the 36 runs then
/// receives whole cache lines (`STEP * 8` values) at a time rather than half a line from each
/// of 36 places in turn, which the write-combining and the prefetchers handle much better.
const STEP: usize = 8;

/// `dWt = G^T dU G` for every filter of `grad_weight` (`[c_out, c_in, 3, 3]`, overwritten)
/// from `du` (`dU[xi][co * c_in + ci]`, planes of `u_plane` values), in parallel over blocks
/// of [`FILTER_BLOCK`] filters, each block's 36 runs read contiguously and folded eight
/// filters at a time.
pub(super) fn fold_filter_gradients(du: &[f32], u_plane: usize, grad_weight: &mut [f32]) {
    grad_weight
        .par_chunks_mut(9 * FILTER_BLOCK)
        .enumerate()
        .for_each(|(b, filters)| {
            #[cfg(target_arch = "x86_64")]
            if cpu::isa() == Isa::Avx512 {
                // SAFETY: the CPU supports AVX-512F.
                unsafe { avx512::fold_block(du, u_plane, b, filters) };
                return;
            }
            fold_block(du, u_plane, b, filters);
        });
}

/// The filters of block `b` of [`fold_filter_gradients`] (`filters`: up to
/// [`FILTER_BLOCK`] filters of 9 values): the block's 36 runs copied in whole (contiguous
/// reads), then folded eight filters at a time.
#[inline(always)]
fn fold_block(du: &[f32], u_plane: usize, b: usize, filters: &mut [f32]) {
    let zero = Lanes([0.0; MR]);
    let count = filters.len() / 9;
    let mut block = [[0.0f32; FILTER_BLOCK]; XI];
    for (xi, run) in block.iter_mut().enumerate() {
        let at = xi * u_plane + b * FILTER_BLOCK;
        run[..count].copy_from_slice(&du[at..at + count]);
    }
    for k0 in (0..count).step_by(MR) {
        let mut u = [zero; XI];
        for (v, run) in u.iter_mut().zip(&block) {
            for (x, &d) in v.0.iter_mut().zip(&run[k0..k0 + MR]) {
                *x = f64::from(d);
            }
        }
        let g = fold_filter(u, zero);
        for (l, out) in filters[9 * k0..].chunks_exact_mut(9).take(MR).enumerate() {
            for (o, tap) in out.iter_mut().zip(&g) {
                *o = tap.0[l] as f32;
            }
        }
    }
}
