//! The tile arithmetic of F(4x4, 3x3): the input, output and output-gradient transforms of
//! whole rows of tiles in place, vectorised across tiles (see the parent module for the
//! matrices; the filter side is in [`super::filters`]).

use wide::f32x8;

use crate::kernels::cpu::Isa;
use crate::ops::simd::{self, SimdF32};

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
    // Every entry is written before it is read; declared out of the loop so that it is not
    // zeroed again for every vector of tiles.
    let mut t = [[V::splat(0.0); 6]; 6];
    let mut c = 0;
    while c < len {
        // B^T d (down each column j of the patch), then (B^T d) B (along each row i).
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
    // Every entry is written before it is read; declared out of the loop so that it is not
    // zeroed again for every vector of tiles.
    let mut t = [[V::splat(0.0); 4]; 6];
    let mut c = 0;
    while c < len {
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
    // Every entry is written before it is read; declared out of the loop so that it is not
    // zeroed again for every vector of tiles.
    let mut t = [[V::splat(0.0); 6]; 4];
    let mut c = 0;
    while c < len {
        // A dY (down each column b of the block), then (A dY) A^T (along each row i).
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
