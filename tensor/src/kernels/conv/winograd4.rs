//! 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(4x4, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016, section 4.2).
//!
//! The output is cut into 4x4 tiles; tile `(ty, tx)` needs the 6x6 input patch `d` starting at
//! `(4ty - 1, 4tx - 1)` of every input channel (zero outside the image). With the
//! interpolation points 0, 1, -1, 2, -2 and infinity,
//!
//! ```text
//!       | 4  0 -5  0  1  0 |        |  1/4     0     0  |
//!       | 0 -4 -4  1  1  0 |        | -1/6  -1/6  -1/6  |          | 1  1  1  1  1  0 |
//! B^T = | 0  4 -4 -1  1  0 |    G = | -1/6   1/6  -1/6  |    A^T = | 0  1 -1  2 -2  0 |
//!       | 0 -2 -1  2  1  0 |        |  1/24  1/12  1/6  |          | 0  1  1  4  4  0 |
//!       | 0  2 -1 -2  1  0 |        |  1/24 -1/12  1/6  |          | 0  1 -1  8 -8  1 |
//!       | 0  4  0 -5  0  1 |        |  0     0     1    |
//! ```
//!
//! the tile is `Y = A^T [ sum_ci (G g G^T) (.) (B^T d B) ] A` for the 3x3 filter `g`. For each of
//! the 36 positions `xi` of the 6x6 transformed tile the sum over input channels is one matrix
//! product `M[xi] (C_out x tiles) = U[xi] (C_out x C_in) V[xi] (C_in x tiles)`: 36 multiply-adds
//! per input channel per 16 outputs, where direct convolution does 144 (4x fewer; F(2x2, 3x3)
//! in `winograd.rs` does 2.25x fewer).
//!
//! The batch is processed in chunks of about [`TILES_PER_CHUNK`] tiles (the chunk size depends
//! on the image size only). Each chunk runs in three parallel steps: every input channel's
//! patches are gathered into `V` and transformed there in place, vectorised across the chunk's
//! tiles; the 36 products run in parallel; every output channel's products are transformed
//! back in place and scattered into the images. No step's result depends on the thread count.

use rayon::prelude::*;
use wide::f32x8;

use super::winograd::with_buffers;
use super::Conv2dParams;
use crate::kernels::cpu::{self, Isa};
use crate::kernels::gemm::{sgemm_batched, Trans};
use crate::ops::simd::{self, SimdF32};

/// Tiles per chunk of images: enough columns for efficient matrix products, few enough that a
/// chunk's transformed inputs and products stay in the outer caches.
const TILES_PER_CHUNK: usize = 256;

/// Rows of transformed values per channel (the 6x6 transformed tile).
const XI: usize = 36;

/// The tile loops run over columns padded to a multiple of this (the widest vector).
const COLUMN_ALIGN: usize = 16;

/// True if `p` is a convolution this module computes: 3x3, stride 1, padding 1, with enough
/// channels for the matrix products to pay for the transforms.
pub(crate) fn applies(p: &Conv2dParams) -> bool {
    p.kh == 3
        && p.kw == 3
        && p.stride == 1
        && p.padding == 1
        && p.c_in >= 16
        && p.c_out >= 16
        && p.h >= 4
        && p.w >= 4
}

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

/// `U[xi][co][ci] = (G g G^T)[xi]` for every filter `g = weight[co, ci]` (computed in f64 and
/// rounded once); `weight` is `[c_out, c_in, 3, 3]`.
pub(crate) fn transform_weights(c_out: usize, c_in: usize, weight: &[f32]) -> Vec<f32> {
    // Filters go in blocks, each block's 36 runs written contiguously: written one filter at a
    // time, the 36 values lie `plane` floats apart, which for power-of-two channel counts all
    // map to the same cache set.
    const BLOCK: usize = 64;
    let plane = c_out * c_in;
    let mut u = vec![0.0f32; XI * plane];
    let mut block = [[0.0f32; BLOCK]; XI];
    for (b, filters) in weight.chunks(9 * BLOCK).enumerate() {
        let count = filters.len() / 9;
        for (k, g) in filters.chunks_exact(9).enumerate() {
            let g = |i: usize| f64::from(g[i]);
            // Gg: 6 x 3, one filter column at a time; then (Gg) G^T one row at a time.
            let cols: [[f64; 6]; 3] =
                std::array::from_fn(|j| filter_column([g(j), g(3 + j), g(6 + j)]));
            for i in 0..6 {
                let row = filter_column([cols[0][i], cols[1][i], cols[2][i]]);
                for (j, &v) in row.iter().enumerate() {
                    block[i * 6 + j][k] = v as f32;
                }
            }
        }
        for (xi, run) in block.iter().enumerate() {
            let at = xi * plane + b * BLOCK;
            u[at..at + count].copy_from_slice(&run[..count]);
        }
    }
    u
}

/// Tiles of one image: `(rows, cols)` of 4x4 output tiles.
fn tiles(p: &Conv2dParams) -> (usize, usize) {
    (p.h.div_ceil(4), p.w.div_ceil(4))
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

/// `rows[xi][c] <- (B^T d B)[xi]` in place, where `rows[i * 6 + j][c]` holds `d[i][j]` of the
/// tile in column `c`, for columns `0..len` (`len` a multiple of [`COLUMN_ALIGN`]).
#[inline(always)]
fn transform_input<V: SimdF32>(rows: &mut [&mut [f32]], len: usize) {
    let mut c = 0;
    while c < len {
        // B^T d (down each column j of the patch), then (B^T d) B (along each row i).
        let t: [[V; 6]; 6] = std::array::from_fn(|j| {
            input_column(std::array::from_fn(|i| V::load(&rows[i * 6 + j][c..])))
        });
        for i in 0..6 {
            let v = input_column(std::array::from_fn(|j| t[j][i]));
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
        let t: [[V; 4]; 6] = std::array::from_fn(|j| {
            output_column(std::array::from_fn(|i| V::load(&rows[i * 6 + j][c..])))
        });
        for a in 0..4 {
            for (b, yb) in output_column(std::array::from_fn(|j| t[j][a]))
                .into_iter()
                .enumerate()
            {
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
        let t: [[V; 6]; 4] = std::array::from_fn(|b| {
            grad_column(std::array::from_fn(|a| V::load(&rows[a * 4 + b][c..])))
        });
        for i in 0..6 {
            let m = grad_column(std::array::from_fn(|b| t[b][i]));
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

/// `dst = src` for runs of the lengths a row of tiles has in practice, as fixed-size moves
/// rather than calls to `memcpy`.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = (&mut dst[..N]).try_into().unwrap();
        let s: &[f32; N] = src[..N].try_into().unwrap();
        *d = *s;
    }
    match dst.len() {
        1 => dst[0] = src[0],
        2 => fixed::<2>(dst, src),
        4 => fixed::<4>(dst, src),
        8 => fixed::<8>(dst, src),
        16 => fixed::<16>(dst, src),
        _ => dst.copy_from_slice(&src[..dst.len()]),
    }
}

/// `rows[i * N + j][col0 + ty * tw + tx] = x[4ty + i - OFF][4tx + j - OFF]` (zero outside the
/// image) for every tile of one channel `x` (`h x w`) of one image: the 6x6 input patches
/// (`N = 6`, `OFF = 1`) or the 4x4 output blocks (`N = 4`, `OFF = 0`). `phases` is scratch of at
/// least `(4 * th + 2) * 4 * (tw + 1)` values: shifted row `r` (image row `r - OFF`) split by
/// shifted column `4t + k` (image column `4t + k - OFF`) into `phases[(4r + k) * (tw + 1) + t]`,
/// zero outside the image, so that each run of `rows` is contiguous there.
fn gather<const N: usize, const OFF: usize>(
    p: &Conv2dParams,
    x: &[f32],
    rows: &mut [&mut [f32]],
    col0: usize,
    phases: &mut [f32],
) {
    let (th, tw) = tiles(p);
    let w = p.w;
    let run = tw + 1;
    phases.fill(0.0);
    for (y, row) in x.chunks_exact(w).enumerate() {
        let at = |k: usize| (4 * (y + OFF) + k) * run;
        // Image column 4s + k is shifted column 4s + k + OFF.
        let mut quads = row.chunks_exact(4);
        for (s, q) in quads.by_ref().enumerate() {
            for (k, &v) in q.iter().enumerate() {
                phases[at((k + OFF) % 4) + s + (k + OFF) / 4] = v;
            }
        }
        let s = w / 4;
        for (k, &v) in quads.remainder().iter().enumerate() {
            phases[at((k + OFF) % 4) + s + (k + OFF) / 4] = v;
        }
    }
    for ty in 0..th {
        let at = col0 + ty * tw;
        for i in 0..N {
            let r = 4 * ty + i;
            for j in 0..N {
                let src = &phases[(4 * r + j % 4) * run + j / 4..];
                copy_run(&mut rows[i * N + j][at..at + tw], src);
            }
        }
    }
}

/// `y[4ty + a][4tx + b] = rows[a * 4 + b][col0 + ty * tw + tx] + bias` for every tile of one
/// channel `y` (`h x w`) of one image, clipped at the image's edges; `row` is scratch of at
/// least `4 * tw` values (used when the tiles overhang the image).
fn scatter_tiles(
    p: &Conv2dParams,
    rows: &[&mut [f32]],
    col0: usize,
    bias: f32,
    y: &mut [f32],
    row: &mut [f32],
) {
    let (th, tw) = tiles(p);
    let (h, w) = (p.h, p.w);
    for ty in 0..th {
        let at = col0 + ty * tw;
        for a in 0..4 {
            let yy = 4 * ty + a;
            if yy >= h {
                break;
            }
            let src: [&[f32]; 4] = std::array::from_fn(|b| &rows[a * 4 + b][at..at + tw]);
            let exact = w == 4 * tw;
            let dst = if exact {
                &mut y[yy * w..(yy + 1) * w]
            } else {
                &mut row[..4 * tw]
            };
            for (tx, out) in dst.chunks_exact_mut(4).enumerate() {
                for b in 0..4 {
                    out[b] = src[b][tx] + bias;
                }
            }
            if !exact {
                y[yy * w..(yy + 1) * w].copy_from_slice(&row[..w]);
            }
        }
    }
}

/// Splits `data`, a sequence of groups of `group_len` values that each start with `channels`
/// blocks of `len` values, into one list per channel of that channel's block in every group
/// (so that channels can be worked on in parallel).
fn blocks_by_channel(
    data: &mut [f32],
    group_len: usize,
    channels: usize,
    len: usize,
) -> Vec<Vec<&mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..channels).map(|_| Vec::new()).collect();
    for group in data.chunks_exact_mut(group_len) {
        for (c, block) in group[..channels * len].chunks_exact_mut(len).enumerate() {
            out[c].push(block);
        }
    }
    out
}

/// Floats between the 36 planes of `V` and `M` in excess of their contents: a channel's 36
/// rows are one plane apart, and with planes a multiple of 4 KiB (as power-of-two channel
/// counts make them) all 36 would fall in the same cache sets; one cache line of skew per plane
/// spreads them out.
const PLANE_SKEW: usize = 16;

/// Chunk geometry for images of this size: `(tiles per image, images per chunk, columns of
/// the buffers)`.
fn chunking(p: &Conv2dParams) -> (usize, usize, usize) {
    let (th, tw) = tiles(p);
    let per_image = th * tw;
    let chunk = TILES_PER_CHUNK.div_ceil(per_image).clamp(1, p.batch.max(1));
    (
        per_image,
        chunk,
        (chunk * per_image).next_multiple_of(COLUMN_ALIGN),
    )
}

/// Phase one of a chunk: `V[xi][ci][..len] = (B^T d B)[xi]` for every input channel `ci` and
/// tile of the images `inp` (`[_, c_in, h, w]`), in parallel over channels. `V` has planes of
/// `v_plane` values and rows of `stride`; columns `cols..len` are zero.
fn transform_chunk_input(
    p: &Conv2dParams,
    isa: Isa,
    inp: &[f32],
    v: &mut [f32],
    v_plane: usize,
    stride: usize,
) {
    let (th, tw) = tiles(p);
    let plane = p.h * p.w;
    let in_len = p.c_in * plane;
    let per_image = th * tw;
    let cols = inp.len() / in_len * per_image;
    let len = cols.next_multiple_of(COLUMN_ALIGN);
    blocks_by_channel(v, v_plane, p.c_in, stride)
        .into_par_iter()
        .enumerate()
        .for_each_init(
            || vec![0.0f32; (4 * th + 2) * 4 * (tw + 1)],
            |phases, (ci, mut rows)| {
                for (n, x) in inp.chunks_exact(in_len).enumerate() {
                    let x = &x[ci * plane..(ci + 1) * plane];
                    gather::<6, 1>(p, x, &mut rows, n * per_image, phases);
                }
                for r in rows.iter_mut() {
                    r[cols..len].fill(0.0);
                }
                transform_input_on(isa, &mut rows, len);
            },
        );
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
    let (_, tw) = tiles(p);
    let (per_image, chunk, stride) = chunking(p);
    let isa = cpu::isa();
    let plane = p.h * p.w;
    let (in_len, out_len) = (p.c_in * plane, p.c_out * plane);
    let (v_plane, m_plane) = (p.c_in * stride + PLANE_SKEW, p.c_out * stride + PLANE_SKEW);
    with_buffers(XI * v_plane, XI * m_plane, |v, m| {
        for (inp, out) in input
            .chunks(chunk * in_len)
            .zip(output.chunks_mut(chunk * out_len))
        {
            let cols = inp.len() / in_len * per_image;
            let len = cols.next_multiple_of(COLUMN_ALIGN);
            transform_chunk_input(p, isa, inp, v, v_plane, stride);
            sgemm_batched(
                XI,
                Trans::No,
                Trans::No,
                p.c_out,
                cols,
                p.c_in,
                1.0,
                u,
                p.c_in,
                p.c_out * p.c_in,
                v,
                stride,
                v_plane,
                0.0,
                m,
                stride,
                m_plane,
            );
            blocks_by_channel(m, m_plane, p.c_out, stride)
                .into_par_iter()
                .zip(blocks_by_channel(out, out_len, p.c_out, plane))
                .enumerate()
                .for_each_init(
                    || vec![0.0f32; 4 * tw],
                    |row, (co, (mut rows, planes))| {
                        transform_output_on(isa, &mut rows, len);
                        let b = bias.map_or(0.0, |b| b[co]);
                        for (n, y) in planes.into_iter().enumerate() {
                            scatter_tiles(p, &rows, n * per_image, b, y, row);
                        }
                    },
                );
        }
    });
}

/// `(G^T u)` for six values `u` (one row or column of a transformed filter gradient), in f64.
#[inline(always)]
fn filter_fold(u: [f64; 6]) -> [f64; 3] {
    const SIXTH: f64 = 1.0 / 6.0;
    let (s12, d12) = (u[1] + u[2], u[1] - u[2]);
    let (s34, d34) = (u[3] + u[4], u[3] - u[4]);
    [
        0.25 * u[0] + SIXTH * (0.25 * s34 - s12),
        SIXTH * (0.5 * d34 - d12),
        SIXTH * (s34 - s12) + u[5],
    ]
}

/// The weight gradient `dWt[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] X[n, ci, i + a - 1, j + b - 1]`
/// through the same tiles (the adjoint of [`forward`]): per chunk of images,
/// `dU[xi] (C_out x C_in) += dM[xi] V[xi]^T` with `dM = A dY A^T` and `V = B^T d B` (the
/// chunks in order, each product accumulating onto the last), then `dWt = G^T dU G` for every
/// filter. `grad_weight` is `[c_out, c_in, 3, 3]`, overwritten. Requires [`applies`].
pub(crate) fn backward_weight(
    p: &Conv2dParams,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
) {
    debug_assert!(applies(p));
    let (th, tw) = tiles(p);
    let (per_image, chunk, stride) = chunking(p);
    let isa = cpu::isa();
    let plane = p.h * p.w;
    let (in_len, out_len) = (p.c_in * plane, p.c_out * plane);
    let (v_plane, m_plane) = (p.c_in * stride + PLANE_SKEW, p.c_out * stride + PLANE_SKEW);
    let u_plane = p.c_out * p.c_in + PLANE_SKEW;
    let mut du = vec![0.0f32; XI * u_plane];
    with_buffers(XI * v_plane, XI * m_plane, |v, m| {
        for (k, (inp, dyc)) in input
            .chunks(chunk * in_len)
            .zip(grad_output.chunks(chunk * out_len))
            .enumerate()
        {
            let cols = inp.len() / in_len * per_image;
            let len = cols.next_multiple_of(COLUMN_ALIGN);
            transform_chunk_input(p, isa, inp, v, v_plane, stride);
            blocks_by_channel(m, m_plane, p.c_out, stride)
                .into_par_iter()
                .enumerate()
                .for_each_init(
                    || vec![0.0f32; (4 * th + 2) * 4 * (tw + 1)],
                    |phases, (co, mut rows)| {
                        for (n, dy) in dyc.chunks_exact(out_len).enumerate() {
                            let dy = &dy[co * plane..(co + 1) * plane];
                            gather::<4, 0>(p, dy, &mut rows, n * per_image, phases);
                        }
                        for r in rows[..16].iter_mut() {
                            r[cols..len].fill(0.0);
                        }
                        transform_grad_output_on(isa, &mut rows, len);
                    },
                );
            sgemm_batched(
                XI,
                Trans::No,
                Trans::Yes,
                p.c_out,
                p.c_in,
                cols,
                1.0,
                m,
                stride,
                m_plane,
                v,
                stride,
                v_plane,
                if k == 0 { 0.0 } else { 1.0 },
                &mut du,
                p.c_in,
                u_plane,
            );
        }
    });
    // dWt = G^T dU G, filters in blocks whose 36 runs are read contiguously (see
    // `transform_weights`).
    const BLOCK: usize = 64;
    let mut block = [[0.0f64; BLOCK]; XI];
    for (b, filters) in grad_weight.chunks_mut(9 * BLOCK).enumerate() {
        let count = filters.len() / 9;
        for (xi, run) in block.iter_mut().enumerate() {
            let at = xi * u_plane + b * BLOCK;
            for (r, &x) in run.iter_mut().zip(&du[at..at + count]) {
                *r = f64::from(x);
            }
        }
        for (k, g) in filters.chunks_exact_mut(9).enumerate() {
            // Down each column j of dU, then along each row a of the result.
            let cols: [[f64; 3]; 6] =
                std::array::from_fn(|j| filter_fold(std::array::from_fn(|i| block[i * 6 + j][k])));
            for a in 0..3 {
                let row = filter_fold(std::array::from_fn(|j| cols[j][a]));
                for (bb, &v) in row.iter().enumerate() {
                    g[a * 3 + bb] = v as f32;
                }
            }
        }
    }
}
