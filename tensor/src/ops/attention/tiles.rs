//! The register tiles of [`super::kernel`]: sums of products between a block of query rows
//! (one query per lane) and a head's keys or values, each written once for any [`SimdF32`],
//! with as many independent accumulators as the registers hold.

use crate::ops::simd::SimdF32;

/// Keys per register tile of the score loops (independent accumulators).
pub(super) const KEYS: usize = 8;
/// Channels per register tile of the loops over keys (independent accumulators).
pub(super) const CHANS: usize = 8;
/// Keys per register tile of the key and value gradients' sums (`KEY_TILE x CHANS`
/// accumulators).
pub(super) const KEY_TILE: usize = 2;

/// `[a_{j0+u} . bt for u < U]`, each a vector over the block's lanes: rows `j0..j0 + U` of
/// `a [.., w]` against the transposed block `bt [w][L]` (one broadcast entry of `a` per FMA).
#[inline(always)]
pub(super) fn row_dots<V: SimdF32, const U: usize>(
    a: &[f32],
    w: usize,
    j0: usize,
    bt: &[f32],
) -> [V; U] {
    let l = V::LANES;
    let a = &a[j0 * w..(j0 + U) * w];
    let bt = &bt[..w * l];
    let mut acc = [V::splat(0.0); U];
    for c in 0..w {
        let b = V::load(&bt[c * l..]);
        for (u, acc) in acc.iter_mut().enumerate() {
            // SAFETY: u < U and c < w, inside `a` (length U w, sliced above).
            let x = unsafe { *a.get_unchecked(u * w + c) };
            *acc = V::splat(x).mul_add(b, *acc);
        }
    }
    acc
}

/// `[sum_j pt_j a_{j, c0+u} for u < U]`, each a vector over the block's lanes: the block
/// `pt` (vector `j` at `j step`) against columns `c0..c0 + U` of `a [n, w]`.
#[inline(always)]
pub(super) fn col_sums<V: SimdF32, const U: usize>(
    (pt, step): (&[f32], usize),
    a: &[f32],
    w: usize,
    c0: usize,
) -> [V; U] {
    let l = V::LANES;
    let n = a.len() / w;
    let pt = &pt[..(n - 1) * step + l];
    let mut acc = [V::splat(0.0); U];
    for j in 0..n {
        let p = V::load(&pt[j * step..]);
        let row = &a[j * w + c0..j * w + c0 + U];
        for (acc, &x) in acc.iter_mut().zip(row) {
            *acc = V::splat(x).mul_add(p, *acc);
        }
    }
    acc
}

/// `[sum over blocks b < nb of x_b[j] * y_b[c0 + u] for u < U]`, lane-wise (summed across
/// lanes by the caller): `x [n][blocks][L]` (the chunk's blocks side by side for each key)
/// and `y [blocks][w][L]`.
#[inline(always)]
pub(super) fn block_products<V: SimdF32, const U: usize>(
    (x, blocks): (&[f32], usize),
    j: usize,
    y: &[f32],
    w: usize,
    c0: usize,
    nb: usize,
) -> [V; U] {
    let l = V::LANES;
    let x = &x[j * blocks * l..(j * blocks + nb) * l];
    let mut acc = [V::splat(0.0); U];
    for b in 0..nb {
        let xv = V::load(&x[b * l..]);
        let yb = &y[(b * w + c0) * l..(b * w + c0 + U) * l];
        for (u, acc) in acc.iter_mut().enumerate() {
            *acc = xv.mul_add(V::load(&yb[u * l..]), *acc);
        }
    }
    acc
}

/// [`block_products`] of keys `j..j + K` against all `CHANS` columns of `y`, each block's
/// vectors of `y` loaded once for the `K` keys (the same sums, in the same order).
#[inline(always)]
pub(super) fn key_tile_products<V: SimdF32, const K: usize>(
    (x, blocks): (&[f32], usize),
    j: usize,
    y: &[f32],
    nb: usize,
) -> [[V; CHANS]; K] {
    let l = V::LANES;
    let xs: [&[f32]; K] =
        std::array::from_fn(|u| &x[(j + u) * blocks * l..((j + u) * blocks + nb) * l]);
    let mut acc = [[V::splat(0.0); CHANS]; K];
    for b in 0..nb {
        let a: [V; K] = std::array::from_fn(|u| V::load(&xs[u][b * l..]));
        let yb = &y[b * CHANS * l..(b + 1) * CHANS * l];
        for c in 0..CHANS {
            let yv = V::load(&yb[c * l..]);
            for u in 0..K {
                acc[u][c] = a[u].mul_add(yv, acc[u][c]);
            }
        }
    }
    acc
}

/// `out [w][L] = (sum_j pt_j a_jc) * factor` for every column `c` of `a [n, w]` (`pt` as in
/// [`col_sums`]).
#[inline(always)]
pub(super) fn block_times<V: SimdF32>(
    pt: (&[f32], usize),
    a: &[f32],
    w: usize,
    factor: V,
    out: &mut [f32],
) {
    let l = V::LANES;
    let mut c0 = 0;
    while c0 + CHANS <= w {
        let acc = col_sums::<V, CHANS>(pt, a, w, c0);
        for (u, x) in acc.into_iter().enumerate() {
            (x * factor).store(&mut out[(c0 + u) * l..]);
        }
        c0 += CHANS;
    }
    for c in c0..w {
        let [x] = col_sums::<V, 1>(pt, a, w, c);
        (x * factor).store(&mut out[c * l..]);
    }
}
