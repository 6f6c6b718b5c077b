//! 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! The output is cut into 2x2 tiles; tile `(ty, tx)` of channel `co` needs the 4x4 input patch
//! `d` starting at `(2ty - 1, 2tx - 1)` of every input channel. With
//!
//! ```text
//!       | 1  0 -1  0 |        | 1    0    0  |
//! B^T = | 0  1  1  0 |    G = | 1/2  1/2  1/2 |    A^T = | 1  1  1  0 |
//!       | 0 -1  1  0 |        | 1/2 -1/2  1/2 |          | 0  1 -1 -1 |
//!       | 0  1  0 -1 |        | 0    0    1  |
//! ```
//!
//! the tile is `Y = A^T [ sum_ci (G g G^T) (.) (B^T d B) ] A`, where `g` is the 3x3 filter and
//! `(.)` the element-wise product. For each of the 16 positions `xi` of the 4x4 transformed
//! tile, the sum over input channels is a matrix product
//! `M[xi] (C_out x tiles) = U[xi] (C_out x C_in) V[xi] (C_in x tiles)`, done by the packed
//! GEMM; the 16 products do 16 multiply-adds per input channel per tile where direct
//! convolution does 36 (2.25x fewer).
//!
//! Images are processed in chunks of about [`TILES_PER_CHUNK`] tiles (the chunk size depends on
//! the image size only), chunks in parallel, so results are bitwise the same for any number of
//! threads.

use std::cell::RefCell;

use rayon::prelude::*;

use super::Conv2dParams;
use wide::f32x8;

use crate::kernels::cpu::{self, Isa};
use crate::kernels::gemm::{sgemm, Trans};
use crate::ops::simd::{self, SimdF32};

/// Tiles per chunk of images: large enough for efficient matrix products, small enough that
/// a chunk's transformed inputs and outputs stay in the outer caches.
const TILES_PER_CHUNK: usize = 512;

/// True if `p` is a convolution this module computes: 3x3, stride 1, padding 1, with enough
/// channels for the matrix products to pay for the transforms, on images at least 16 pixels
/// wide (rows of at least 8 tiles, which the vectorised transforms need to pay off).
pub(crate) fn applies(p: &Conv2dParams) -> bool {
    p.kh == 3
        && p.kw == 3
        && p.stride == 1
        && p.padding == 1
        && p.c_in >= 16
        && p.c_out >= 16
        && p.h >= 2
        && p.w >= 16
}

/// The instruction set for the transforms of rows of `tw` tiles: 16 lanes only when a row
/// fills them (the tile loops run across a row of tiles).
fn transform_isa(isa: Isa, tw: usize) -> Isa {
    if isa == Isa::Avx512 && tw < 16 {
        Isa::Avx2Fma
    } else {
        isa
    }
}

/// `U[xi][co][ci] = (G g G^T)[xi]` for every filter `g = weight[co, ci]`; `weight` is
/// `[c_out, c_in, 3, 3]`.
pub(crate) fn transform_weights(c_out: usize, c_in: usize, weight: &[f32]) -> Vec<f32> {
    let plane = c_out * c_in;
    let mut u = vec![0.0f32; 16 * plane];
    for (f, g) in weight.chunks_exact(9).enumerate() {
        // Gg: 4 x 3.
        let mut gg = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            gg[0][j] = g0;
            gg[1][j] = 0.5 * (g0 + g1 + g2);
            gg[2][j] = 0.5 * (g0 - g1 + g2);
            gg[3][j] = g2;
        }
        for (i, row) in gg.iter().enumerate() {
            let [r0, r1, r2] = *row;
            let t = [r0, 0.5 * (r0 + r1 + r2), 0.5 * (r0 - r1 + r2), r2];
            for (j, &v) in t.iter().enumerate() {
                u[(i * 4 + j) * plane + f] = v;
            }
        }
    }
    u
}

/// Tiles of one image: `(rows, cols)` of 2x2 output tiles.
fn tiles(p: &Conv2dParams) -> (usize, usize) {
    (p.h.div_ceil(2), p.w.div_ceil(2))
}

/// `(B^T d B)` for one tile's 4x4 patch `d[i][j]` (row i, column j), as 16 values in
/// row-major order; written once for vectors of tiles and for single tiles, with the same
/// operations (no fused multiply-adds), so both give the same bits.
#[inline(always)]
fn input_tile<T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T>>(
    d: [[T; 4]; 4],
) -> [T; 16] {
    // T = B^T d (combining rows), then V = T B (combining columns).
    let rows = [
        std::array::from_fn::<T, 4, _>(|j| d[0][j] - d[2][j]),
        std::array::from_fn::<T, 4, _>(|j| d[1][j] + d[2][j]),
        std::array::from_fn::<T, 4, _>(|j| d[2][j] - d[1][j]),
        std::array::from_fn::<T, 4, _>(|j| d[1][j] - d[3][j]),
    ];
    std::array::from_fn(|xi| {
        let r = rows[xi / 4];
        match xi % 4 {
            0 => r[0] - r[2],
            1 => r[1] + r[2],
            2 => r[2] - r[1],
            _ => r[1] - r[3],
        }
    })
}

/// `(A^T M A)` for one tile's 16 values `m` (row-major 4x4): `[y00, y01, y10, y11]`.
#[inline(always)]
fn output_tile<T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T>>(
    m: [T; 16],
) -> [T; 4] {
    let t0: [T; 4] = std::array::from_fn(|j| m[j] + m[4 + j] + m[8 + j]);
    let t1: [T; 4] = std::array::from_fn(|j| m[4 + j] - m[8 + j] - m[12 + j]);
    [
        t0[0] + t0[1] + t0[2],
        t0[1] - t0[2] - t0[3],
        t1[0] + t1[1] + t1[2],
        t1[1] - t1[2] - t1[3],
    ]
}

/// `ev[t] = row[2t]` and `od[t] = row[2t + 1]` for every full pair of `row`, `V::LANES` pairs
/// at a time.
#[inline(always)]
fn split_even_odd<V: SimdF32>(row: &[f32], ev: &mut [f32], od: &mut [f32]) {
    let l = V::LANES;
    let pairs = row.len() / 2;
    let mut t = 0;
    while t + l <= pairs {
        let (e, o) = V::deinterleave(V::load(&row[2 * t..]), V::load(&row[2 * t + l..]));
        e.store(&mut ev[t..]);
        o.store(&mut od[t..]);
        t += l;
    }
    for t in t..pairs {
        ev[t] = row[2 * t];
        od[t] = row[2 * t + 1];
    }
}

/// `row[2t] = ev[t]` and `row[2t + 1] = od[t]` for every full pair of `row` (the inverse of
/// [`split_even_odd`]).
#[inline(always)]
fn join_even_odd<V: SimdF32>(ev: &[f32], od: &[f32], row: &mut [f32]) {
    let l = V::LANES;
    let pairs = row.len() / 2;
    let mut t = 0;
    while t + l <= pairs {
        let (a, b) = V::interleave(V::load(&ev[t..]), V::load(&od[t..]));
        a.store(&mut row[2 * t..]);
        b.store(&mut row[2 * t + l..]);
        t += l;
    }
    for t in t..pairs {
        row[2 * t] = ev[t];
        row[2 * t + 1] = od[t];
    }
}

/// One row of tiles of the input transform: `e[i]`, `o[i]` are the even and odd columns of
/// padded input row `i` of the tiles (`tw + 1` values each: padded columns `2t` and `2t + 1`),
/// and `out[xi][at + t]` receives `(B^T d B)[xi]` for tiles `t` in `0..tw`, `V::LANES` tiles at a
/// time.
#[inline(always)]
fn input_row_of_tiles<V: SimdF32>(
    e: [&[f32]; 4],
    o: [&[f32]; 4],
    out: &mut [&mut [f32]; 16],
    at: usize,
    tw: usize,
) {
    let l = V::LANES;
    let full = tw / l * l; // the loads at t + 1 end at t + 1 + l <= tw + 1
    let mut t = 0;
    while t < full {
        let mut d = [[V::splat(0.0); 4]; 4];
        for i in 0..4 {
            d[i] = [
                V::load(&e[i][t..]),
                V::load(&o[i][t..]),
                V::load(&e[i][t + 1..]),
                V::load(&o[i][t + 1..]),
            ];
        }
        let v = input_tile(d);
        for xi in 0..16 {
            v[xi].store(&mut out[xi][at + t..]);
        }
        t += l;
    }
    for t in t..tw {
        let mut d = [[0.0f32; 4]; 4];
        for i in 0..4 {
            d[i] = [e[i][t], o[i][t], e[i][t + 1], o[i][t + 1]];
        }
        let v = input_tile(d);
        for xi in 0..16 {
            out[xi][at + t] = v[xi];
        }
    }
}

/// One row of tiles of the output transform: `m[xi]` holds `M[xi]` for tiles `0..tw`;
/// writes `(A^T M A)[i][j] + b` to `y[i][j][t]` (row `i`, column parity `j`, tile `t`).
#[inline(always)]
fn output_row_of_tiles<V: SimdF32>(
    m: &[&[f32]; 16],
    b: f32,
    y: &mut [[Vec<f32>; 2]; 2],
    tw: usize,
) {
    let l = V::LANES;
    let full = tw / l * l;
    let mut t = 0;
    while t < full {
        let mut mv = [V::splat(0.0); 16];
        for xi in 0..16 {
            mv[xi] = V::load(&m[xi][t..]);
        }
        let r = output_tile(mv);
        let bv = V::splat(b);
        for (k, val) in r.into_iter().enumerate() {
            (val + bv).store(&mut y[k / 2][k % 2][t..]);
        }
        t += l;
    }
    for t in t..tw {
        let r = output_tile(std::array::from_fn(|xi| m[xi][t]));
        for (k, val) in r.into_iter().enumerate() {
            y[k / 2][k % 2][t] = val + b;
        }
    }
}

/// `A dY A^T` for one tile's 2x2 output gradient `y[a][b]` (the adjoint of
/// [`output_tile`]), as 16 values in row-major order. With `A^T` as in the module docs, each
/// pair `(y0, y1)` maps to `(y0, y0 + y1, y0 - y1, -y1)`, along rows and then along columns.
#[inline(always)]
fn grad_output_tile<T>(y: [[T; 2]; 2]) -> [T; 16]
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T> + std::ops::Neg<Output = T>,
{
    let spread = |a: T, b: T| [a, a + b, a - b, -b];
    let q = [spread(y[0][0], y[0][1]), spread(y[1][0], y[1][1])]; // q[a][j]
    let cols: [[T; 4]; 4] = std::array::from_fn(|j| spread(q[0][j], q[1][j])); // cols[j][i]
    std::array::from_fn(|xi| cols[xi % 4][xi / 4])
}

/// One row of tiles of the output-gradient transform: `e[a]`, `o[a]` are the even and odd
/// columns of output-gradient row `a` of the tiles (`tw` values each), and `out[xi][at + t]`
/// receives `(A dY A^T)[xi]` for tiles `t` in `0..tw`.
#[inline(always)]
fn grad_row_of_tiles<V: SimdF32>(
    e: [&[f32]; 2],
    o: [&[f32]; 2],
    out: &mut [&mut [f32]; 16],
    at: usize,
    tw: usize,
) {
    let l = V::LANES;
    let full = tw / l * l;
    let mut t = 0;
    while t < full {
        let y = [
            [V::load(&e[0][t..]), V::load(&o[0][t..])],
            [V::load(&e[1][t..]), V::load(&o[1][t..])],
        ];
        let m = grad_output_tile(y);
        for xi in 0..16 {
            m[xi].store(&mut out[xi][at + t..]);
        }
        t += l;
    }
    for t in t..tw {
        let m = grad_output_tile([[e[0][t], o[0][t]], [e[1][t], o[1][t]]]);
        for xi in 0..16 {
            out[xi][at + t] = m[xi];
        }
    }
}

/// The 16 rows `v[xi * plane + base ..][..len]` as separate mutable slices.
fn sixteen_rows(v: &mut [f32], plane: usize, base: usize, len: usize) -> [&mut [f32]; 16] {
    let mut rest = v;
    let mut start = 0;
    std::array::from_fn(|xi| {
        let at = xi * plane + base;
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(at - start);
        let (row, tail) = tail.split_at_mut(len);
        rest = tail;
        start = at + len;
        row
    })
}

/// `dM[xi][co][t0 + tile] = (A dY A^T)[xi]` for every channel and tile of one image's output
/// gradient `dy` (`[c_out, h, w]`); `m` has `16 * c_out` rows of `stride` values.
#[inline(always)]
fn transform_grad_output<V: SimdF32>(
    p: &Conv2dParams,
    dy: &[f32],
    m: &mut [f32],
    stride: usize,
    t0: usize,
) {
    let (th, tw) = tiles(p);
    let (h, w) = (p.h, p.w);
    let plane = p.c_out * stride;
    let mut even = [vec![0.0f32; tw], vec![0.0f32; tw]];
    let mut odd = [vec![0.0f32; tw], vec![0.0f32; tw]];
    for co in 0..p.c_out {
        let img = &dy[co * h * w..(co + 1) * h * w];
        let mut outs = sixteen_rows(m, plane, co * stride + t0, th * tw);
        for ty in 0..th {
            for a in 0..2 {
                let y = 2 * ty + a;
                let (e, o) = (&mut even[a], &mut odd[a]);
                if y >= h {
                    e.fill(0.0);
                    o.fill(0.0);
                    continue;
                }
                let row = &img[y * w..(y + 1) * w];
                split_even_odd::<V>(row, e, o);
                if w % 2 == 1 {
                    e[w / 2] = row[w - 1];
                    o[w / 2] = 0.0;
                }
            }
            let (e, o) = ([&even[0][..], &even[1]], [&odd[0][..], &odd[1]]);
            grad_row_of_tiles::<V>(e, o, &mut outs, ty * tw, tw);
        }
    }
}

/// `V[xi][ci][t0 + tile] = (B^T d B)[xi]` for every channel and tile of one image `x`
/// (`[c_in, h, w]`); `v` has `16 * c_in` rows of `stride` values.
#[inline(always)]
fn transform_input<V: SimdF32>(
    p: &Conv2dParams,
    x: &[f32],
    v: &mut [f32],
    stride: usize,
    t0: usize,
) {
    let (th, tw) = tiles(p);
    let (h, w) = (p.h, p.w);
    let plane = p.c_in * stride;
    // Even and odd padded columns of every padded row of a channel: padded row r holds input
    // row r - 1, padded column xp holds input column xp - 1; even[r][t] is column 2t and
    // odd[r][t] column 2t + 1. Rows and columns outside the image are 0.
    let prows = 2 * th + 2;
    let mut even = vec![0.0f32; prows * (tw + 1)];
    let mut odd = vec![0.0f32; prows * (tw + 1)];
    for ci in 0..p.c_in {
        let img = &x[ci * h * w..(ci + 1) * h * w];
        for (y, row) in img.chunks_exact(w).enumerate() {
            let e = &mut even[(y + 1) * (tw + 1)..(y + 2) * (tw + 1)];
            let o = &mut odd[(y + 1) * (tw + 1)..(y + 2) * (tw + 1)];
            // Input column x is padded column x + 1: odd x lands in even[(x + 1) / 2], even x
            // in odd[x / 2].
            split_even_odd::<V>(row, o, &mut e[1..]);
            if w % 2 == 1 {
                o[w / 2] = row[w - 1];
            }
        }
        let mut outs = sixteen_rows(v, plane, ci * stride + t0, th * tw);
        for ty in 0..th {
            let at = |r: usize| (2 * ty + r) * (tw + 1)..(2 * ty + r + 1) * (tw + 1);
            let ev = [&even[at(0)], &even[at(1)], &even[at(2)], &even[at(3)]];
            let od = [&odd[at(0)], &odd[at(1)], &odd[at(2)], &odd[at(3)]];
            input_row_of_tiles::<V>(ev, od, &mut outs, ty * tw, tw);
        }
    }
}

/// `Y = A^T M A + bias` for every output channel and tile of one image, written to `y`
/// (`[c_out, h, w]`), clipped at the image's edges.
#[inline(always)]
fn transform_output<V: SimdF32>(
    p: &Conv2dParams,
    m: &[f32],
    stride: usize,
    t0: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (th, tw) = tiles(p);
    let (h, w) = (p.h, p.w);
    let plane = p.c_out * stride;
    let mut rows = [
        [vec![0.0f32; tw], vec![0.0f32; tw]],
        [vec![0.0f32; tw], vec![0.0f32; tw]],
    ];
    for co in 0..p.c_out {
        let b = bias.map_or(0.0, |b| b[co]);
        let out = &mut y[co * h * w..(co + 1) * h * w];
        for ty in 0..th {
            let base = co * stride + t0 + ty * tw;
            let ms: [&[f32]; 16] = std::array::from_fn(|xi| &m[xi * plane + base..][..tw]);
            output_row_of_tiles::<V>(&ms, b, &mut rows, tw);
            for (i, r) in rows.iter().enumerate() {
                let yy = 2 * ty + i;
                if yy >= h {
                    continue;
                }
                let dst = &mut out[yy * w..(yy + 1) * w];
                join_even_odd::<V>(&r[0], &r[1], dst);
                if w % 2 == 1 {
                    dst[w - 1] = r[0][w / 2];
                }
            }
        }
    }
}

on_isa!(
    transform_input_on,
    transform_input,
    (p: &Conv2dParams, x: &[f32], v: &mut [f32], stride: usize, t0: usize)
);
on_isa!(
    transform_output_on,
    transform_output,
    (
        p: &Conv2dParams,
        m: &[f32],
        stride: usize,
        t0: usize,
        bias: Option<&[f32]>,
        y: &mut [f32]
    )
);
on_isa!(
    transform_grad_output_on,
    transform_grad_output,
    (p: &Conv2dParams, dy: &[f32], m: &mut [f32], stride: usize, t0: usize)
);

thread_local! {
    /// Each thread keeps its transformed inputs and products between calls, so a steady
    /// stream of convolutions neither allocates nor zeroes them (every value is written
    /// before it is read: the input transform fills `V`, the products overwrite `M`).
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on this thread's buffers grown to `v_len` and `m_len` values (fresh ones if they
/// are in use higher up the stack, as when rayon runs another chunk while this one waits).
pub(super) fn with_buffers<R>(
    v_len: usize,
    m_len: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    let run = |bufs: &mut (Vec<f32>, Vec<f32>)| {
        if bufs.0.len() < v_len {
            bufs.0.resize(v_len, 0.0);
        }
        if bufs.1.len() < m_len {
            bufs.1.resize(m_len, 0.0);
        }
        f(&mut bufs.0[..v_len], &mut bufs.1[..m_len])
    };
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => run(&mut bufs),
        Err(_) => run(&mut (Vec::new(), Vec::new())),
    })
}

/// Images per chunk for images of this size.
fn images_per_chunk(p: &Conv2dParams) -> usize {
    let (th, tw) = tiles(p);
    TILES_PER_CHUNK.div_ceil(th * tw).clamp(1, p.batch.max(1))
}

/// The convolution of every image of `input` (`[batch, c_in, h, w]`) with the transformed
/// filters `u` (from [`transform_weights`]) plus `bias`, into `output`
/// (`[batch, c_out, h, w]`, overwritten). Requires [`applies`].
pub(crate) fn forward(
    p: &Conv2dParams,
    input: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    debug_assert!(applies(p));
    let (th, tw) = tiles(p);
    let per_image = th * tw;
    let chunk = images_per_chunk(p);
    let isa = transform_isa(cpu::isa(), tw);
    let (in_len, out_len) = (p.c_in * p.h * p.w, p.c_out * p.h * p.w);
    output
        .par_chunks_mut(chunk * out_len)
        .zip(input.par_chunks(chunk * in_len))
        .for_each(|(out, inp)| {
            let images = inp.len() / in_len;
            let cols = images * per_image;
            with_buffers(16 * p.c_in * cols, 16 * p.c_out * cols, |v, m| {
                for (i, x) in inp.chunks_exact(in_len).enumerate() {
                    transform_input_on(isa, p, x, v, cols, i * per_image);
                }
                let (uk, vk, mk) = (p.c_out * p.c_in, p.c_in * cols, p.c_out * cols);
                for xi in 0..16 {
                    sgemm(
                        Trans::No,
                        Trans::No,
                        p.c_out,
                        cols,
                        p.c_in,
                        1.0,
                        &u[xi * uk..(xi + 1) * uk],
                        p.c_in,
                        &v[xi * vk..(xi + 1) * vk],
                        cols,
                        0.0,
                        &mut m[xi * mk..(xi + 1) * mk],
                        cols,
                    );
                }
                for (i, y) in out.chunks_exact_mut(out_len).enumerate() {
                    transform_output_on(isa, p, m, cols, i * per_image, bias, y);
                }
            });
        });
}

/// The weight gradient `dWt[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] X[n, ci, i + a - 1, j + b - 1]`
/// through the same tiles (the adjoint of [`forward`]): per chunk of images,
/// `dU[xi] (C_out x C_in) = dM[xi] V[xi]^T` with `dM = A dY A^T` and `V = B^T d B`, the
/// chunks' partials added in chunk order, then `dWt = G^T dU G` for every filter. `grad_weight`
/// is `[c_out, c_in, 3, 3]`, overwritten. Requires [`applies`].
pub(crate) fn backward_weight(
    p: &Conv2dParams,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
) {
    debug_assert!(applies(p));
    let (th, tw) = tiles(p);
    let per_image = th * tw;
    let chunk = images_per_chunk(p);
    let isa = transform_isa(cpu::isa(), tw);
    let (in_len, out_len) = (p.c_in * p.h * p.w, p.c_out * p.h * p.w);
    let uk = p.c_out * p.c_in;
    let mut partials = vec![0.0f32; p.batch.div_ceil(chunk) * 16 * uk];
    partials
        .par_chunks_mut(16 * uk)
        .zip(input.par_chunks(chunk * in_len))
        .zip(grad_output.par_chunks(chunk * out_len))
        .for_each(|((du, inp), dyc)| {
            let images = inp.len() / in_len;
            let cols = images * per_image;
            with_buffers(16 * p.c_in * cols, 16 * p.c_out * cols, |v, m| {
                for (i, (x, dy)) in inp
                    .chunks_exact(in_len)
                    .zip(dyc.chunks_exact(out_len))
                    .enumerate()
                {
                    transform_input_on(isa, p, x, v, cols, i * per_image);
                    transform_grad_output_on(isa, p, dy, m, cols, i * per_image);
                }
                let (vk, mk) = (p.c_in * cols, p.c_out * cols);
                for xi in 0..16 {
                    sgemm(
                        Trans::No,
                        Trans::Yes,
                        p.c_out,
                        p.c_in,
                        cols,
                        1.0,
                        &m[xi * mk..(xi + 1) * mk],
                        cols,
                        &v[xi * vk..(xi + 1) * vk],
                        cols,
                        0.0,
                        &mut du[xi * uk..(xi + 1) * uk],
                        p.c_in,
                    );
                }
            });
        });
    let (total, rest) = partials.split_at_mut(16 * uk);
    for part in rest.chunks_exact(16 * uk) {
        for (t, &x) in total.iter_mut().zip(part) {
            *t += x;
        }
    }
    // dWt = G^T dU G: each pair of G^T rows maps (u0, u1, u2, u3) to
    // (u0 + (u1 + u2) / 2, (u1 - u2) / 2, u3 + (u1 + u2) / 2).
    let fold = |u: [f32; 4]| {
        let half = 0.5 * (u[1] + u[2]);
        [u[0] + half, 0.5 * (u[1] - u[2]), u[3] + half]
    };
    for (f, g) in grad_weight.chunks_exact_mut(9).enumerate() {
        let du: [f32; 16] = std::array::from_fn(|xi| total[xi * uk + f]);
        // Over rows i for each column j, then over columns.
        let cols: [[f32; 3]; 4] =
            std::array::from_fn(|j| fold([du[j], du[4 + j], du[8 + j], du[12 + j]]));
        for a in 0..3 {
            let row = fold([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
            g[a * 3..a * 3 + 3].copy_from_slice(&row);
        }
    }
}
