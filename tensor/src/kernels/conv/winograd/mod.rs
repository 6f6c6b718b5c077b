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
//! would do 2.25x fewer, with cheaper transforms).
//!
//! The batch is processed in chunks of about [`CHUNK_VALUES`] transformed values (the chunk
//! size depends on the shape, and in the forward pass, which also serves backward-data, on
//! the thread count, see `parallel_chunks`: a forward tile does not depend on the chunk it is
//! in; the weight gradient's chunks depend on the shape only, as its sums run chunk by
//! chunk). A chunk takes three steps: every input channel's patches are gathered into `V`
//! and transformed there in place, vectorised across the chunk's tiles; the 36 products;
//! every output channel's products are transformed back in place and scattered into the
//! images. Either each step runs in parallel (over channels, over the 36 products), or, in
//! the forward pass when there are enough chunks or the batch is split into one chunk per
//! thread, whole chunks run in parallel; no result depends on the thread count. A channel's
//! 36 rows are a plane apart, and the planes are skewed by a cache line ([`PLANE_SKEW`]) so
//! the rows do not share cache sets.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use rayon::prelude::*;

use super::{Addends, Conv2dParams};
use crate::kernels::cpu::{self, Isa};
use crate::kernels::gemm::{sgemm_batched, Trans};
use crate::ops::alloc::as_uninit;
use crate::ops::par::SendPtr;

mod filters;
mod layout;
mod products;
#[cfg(test)]
mod tests;
mod transforms;

use super::source::{sum_pool_plane, upsample_plane, Sink, Source};
use filters::fold_filter_gradients;
pub(crate) use filters::Orientation;
use layout::{gather, gather_channel, gathers_upsampled, scatter_tiles, Epilogue, GatherPlan};
pub(crate) use products::Filters;
use transforms::{transform_grad_output_on, transform_input_on, transform_output_on};

/// Transformed values per chunk of images, in `V` (and likewise in `M`): 1 MiB, so that a
/// chunk's buffers stay in the outer caches. Measured against 0.5, 2 and 4 MiB on 64 channels
/// at 32x32 and 128 at 16x16 and 8x8 (`ddpm bench conv`), it was as fast or faster, most
/// clearly on two threads.
const CHUNK_VALUES: usize = 1 << 18;

/// The fewest tiles in a chunk (the products' column count), unless the batch has fewer.
const MIN_TILES_PER_CHUNK: usize = 64;

/// Rows of transformed values per channel (the 6x6 transformed tile).
const XI: usize = 36;

/// The tile loops run over columns padded to a multiple of this (the widest vector).
const COLUMN_ALIGN: usize = 16;

/// Rows of `V` and `M` hold a multiple of this many values (the direct kernel's column panel,
/// which [`products`] reads in place).
const ROW_ALIGN: usize = 32;

/// True if `p` is a convolution this module computes: 3x3, stride 1, padding 1, with enough
/// channels for the matrix products to pay for the transforms (and Winograd not forbidden by
/// [`super::allow_winograd`]).
pub(crate) fn applies(p: &Conv2dParams) -> bool {
    super::winograd_allowed()
        && p.kh == 3
        && p.kw == 3
        && p.stride == 1
        && p.padding == 1
        && p.c_in >= 16
        && p.c_out >= 16
        && p.h >= 4
        && p.w >= 4
}

/// Tiles of one image: `(rows, cols)` of 4x4 output tiles.
fn tiles(p: &Conv2dParams) -> (usize, usize) {
    (p.h.div_ceil(4), p.w.div_ceil(4))
}

/// The rows of the 36 planes of `U` (planes `plane` values apart, each holding
/// `channels` rows of `len` values), channel by channel: channel `c`'s 36 rows are entries
/// `c * XI..(c + 1) * XI` (so that `chunks_mut(XI)` hands each channel its rows, and channels
/// can be worked on in parallel). One flat list of slices: building it moves 16 bytes per
/// row, not an array of 36 slices per channel.
fn rows_by_channel<T>(data: &mut [T], plane: usize, channels: usize, len: usize) -> Vec<&mut [T]> {
    let mut planes: Vec<std::slice::ChunksExactMut<T>> = data
        .chunks_exact_mut(plane)
        .take(XI)
        .map(|p| p[..channels * len].chunks_exact_mut(len))
        .collect();
    assert_eq!(planes.len(), XI, "winograd: 36 planes of rows");
    let mut rows = Vec::with_capacity(channels * XI);
    for _ in 0..channels {
        rows.extend(planes.iter_mut().map(|p| p.next().unwrap()));
    }
    rows
}

/// The rows of the 36 planes of `V` or `M` (as [`rows_by_channel`] lays them out), handed
/// out one channel at a time: channel `c`'s 36 rows are `data[xi * plane + c * len..][..len]`.
/// Building the whole list of slices took about 1% of a two-thread training step, most of it
/// on the thread that then waits for the parallel loop to start.
struct ChannelRows<'a> {
    data: SendPtr,
    plane: usize,
    len: usize,
    channels: usize,
    _data: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> ChannelRows<'a> {
    /// The rows of `channels` channels of `len` values in the 36 planes of `data`, `plane`
    /// values apart.
    fn new(data: &'a mut [f32], plane: usize, channels: usize, len: usize) -> Self {
        assert!(
            channels * len <= plane && data.len() >= (XI - 1) * plane + channels * len,
            "winograd: 36 planes of rows"
        );
        ChannelRows {
            data: SendPtr(data.as_mut_ptr()),
            plane,
            len,
            channels,
            _data: std::marker::PhantomData,
        }
    }

    /// Channel `c`'s 36 rows.
    ///
    /// # Safety
    /// No other rows of channel `c` may be alive: each channel's rows go to one task at a
    /// time.
    unsafe fn rows(&self, c: usize) -> [&'a mut [f32]; XI] {
        assert!(
            c < self.channels,
            "winograd: channel {c} of {}",
            self.channels
        );
        std::array::from_fn(|xi| {
            // SAFETY: inside the planes (checked in `new`), disjoint from every other
            // channel's rows and from the other planes; the caller owns channel c's.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.data.0.add(xi * self.plane + c * self.len),
                    self.len,
                )
            }
        })
    }
}

/// Splits `data`, a sequence of `groups` groups of `group_len` values that each start with
/// `channels` blocks of `len` values, into those blocks channel by channel: channel `c`'s blocks
/// (one per group, in order) are entries `c * groups..(c + 1) * groups` (so that
/// `chunks_mut(groups)` hands each channel its blocks).
fn blocks_by_channel<T>(
    data: &mut [T],
    group_len: usize,
    channels: usize,
    len: usize,
) -> Vec<&mut [T]> {
    let mut groups: Vec<std::slice::ChunksExactMut<T>> = data
        .chunks_exact_mut(group_len)
        .map(|g| g[..channels * len].chunks_exact_mut(len))
        .collect();
    let mut blocks = Vec::with_capacity(channels * groups.len());
    for _ in 0..channels {
        blocks.extend(groups.iter_mut().map(|g| g.next().unwrap()));
    }
    blocks
}

/// Floats between the 36 planes of `V` and `M` in excess of their contents: a channel's 36
/// rows are one plane apart, and with planes a multiple of 4 KiB (as power-of-two channel
/// counts make them) all 36 would fall in the same cache sets; one cache line of skew per plane
/// spreads them out.
const PLANE_SKEW: usize = 16;

thread_local! {
    /// Each thread keeps its transformed inputs and products (and, in the weight gradient,
    /// the transformed gradient) between calls, so a steady stream of convolutions neither
    /// allocates nor zeroes them (every value is written before it is read: the input
    /// transform fills `V`, the products overwrite `M`, the first chunk overwrites `dU`). A
    /// stack of sets: a convolution that runs while another is under way on the same thread
    /// (rayon runs other work while a thread waits, such as a deferred weight gradient) takes
    /// a second set, kept for the next time as well.
    static BUFFERS: RefCell<Vec<[Vec<f32>; 3]>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a set of this thread's three buffers grown to `lens` values.
fn with_buffers<R>(lens: [usize; 3], f: impl FnOnce([&mut [f32]; 3]) -> R) -> R {
    let mut bufs = BUFFERS
        .with(|cell| cell.borrow_mut().pop())
        .unwrap_or_default();
    for (b, &len) in bufs.iter_mut().zip(&lens) {
        if b.len() < len {
            b.resize(len, 0.0);
        }
    }
    let [a, b, c] = &mut bufs;
    let result = f([&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]]]);
    BUFFERS.with(|cell| cell.borrow_mut().push(bufs));
    result
}

/// Chunk geometry for images of this size: `(tiles per image, images per chunk, columns of
/// the buffers)`.
fn chunking(p: &Conv2dParams) -> (usize, usize, usize) {
    let (th, tw) = tiles(p);
    let per_image = th * tw;
    let tiles_per_chunk = (CHUNK_VALUES / (XI * p.c_in.max(p.c_out))).max(MIN_TILES_PER_CHUNK);
    let chunk = tiles_per_chunk.div_ceil(per_image).clamp(1, p.batch.max(1));
    (
        per_image,
        chunk,
        (chunk * per_image).next_multiple_of(ROW_ALIGN),
    )
}

/// Runs `f(scratch, (c, rows))` for every channel `c` of `rows` with its 36 rows, in
/// parallel if `par` (with one scratch value from `init` per task), else in order on this
/// thread.
fn for_each_channel<S>(
    rows: &mut ChannelRows,
    par: bool,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, (usize, &mut [&mut [f32]])) + Sync + Send,
) {
    // SAFETY (both): each channel's rows go to one call, and `rows` is borrowed exclusively
    // for all of them.
    let rows = &*rows;
    if par {
        (0..rows.channels)
            .into_par_iter()
            .for_each_init(init, |scratch, c| {
                f(scratch, (c, unsafe { &mut rows.rows(c) }))
            });
    } else {
        let mut scratch = init();
        for c in 0..rows.channels {
            f(&mut scratch, (c, unsafe { &mut rows.rows(c) }));
        }
    }
}

/// Phase one of a chunk: `V[xi][ci][..len] = (B^T d B)[xi]` for every input channel `ci` and
/// tile of the images `inp` (`[_, c_in, h, w]`, held as `source` says), in parallel over
/// channels if `par`. `V` has planes of `v_plane` values and rows of `stride`; columns
/// `cols..len` are zero.
fn transform_chunk_input(
    p: &Conv2dParams,
    isa: Isa,
    (inp, source): (&[f32], Source),
    (v, v_plane, stride): (&mut [f32], usize, usize),
    par: bool,
) {
    let rows = &mut ChannelRows::new(v, v_plane, p.c_in, stride);
    gather_transformed::<6, 1>(p, (inp, p.c_in, source), rows, par, |rows, len| {
        transform_input_on(isa, rows, len)
    });
}

/// For every channel of the images `images` (`[_, channels, h, w]`, held as `source` says)
/// with its 36 rows of `rows`, in parallel over channels if `par`:
/// [`gather`]s the channel's `N x N` patches (offset `OFF`) of every image into the first
/// `N * N` rows, zeroes those rows' columns past the tiles up to the next multiple of
/// [`COLUMN_ALIGN`] (`len`), and calls `transform(rows, len)`.
fn gather_transformed<const N: usize, const OFF: usize>(
    p: &Conv2dParams,
    (images, channels, source): (&[f32], usize, Source),
    rows: &mut ChannelRows,
    par: bool,
    transform: impl Fn(&mut [&mut [f32]], usize) + Sync + Send,
) {
    let (th, tw) = tiles(p);
    let plane = source.plane(p);
    let image_len = channels * plane;
    let per_image = th * tw;
    let cols = images.len() / image_len * per_image;
    let len = cols.next_multiple_of(COLUMN_ALIGN);
    // Where the gather cannot read an upsampled channel itself, it is upsampled into scratch.
    let up = source.scale();
    let fast = gathers_upsampled(p);
    let upsample_first = up > 1 && !fast;
    let plan = fast.then(|| GatherPlan::new::<N, OFF>(p, up));
    for_each_channel(
        rows,
        par,
        // Zeros, reused only for this geometry (see `gather`), and the upsampled plane.
        || {
            let upsampled = if upsample_first { p.h * p.w } else { 0 };
            (
                vec![0.0f32; (4 * th + 2) * 4 * (tw + 1)],
                vec![0.0f32; upsampled],
            )
        },
        |(phases, upsampled), (c, rows)| {
            if let Some(plan) = &plan {
                gather_channel::<N, OFF>(p, (images, image_len, c * plane), up, plan, rows);
            } else {
                for (n, x) in images.chunks_exact(image_len).enumerate() {
                    let x = &x[c * plane..(c + 1) * plane];
                    let x = if upsample_first {
                        upsample_plane(p, x, upsampled);
                        &upsampled[..]
                    } else {
                        x
                    };
                    gather::<N, OFF>(p, x, rows, n * per_image, phases);
                }
            }
            for r in rows[..N * N].iter_mut() {
                r[cols..len].fill(0.0);
            }
            transform(rows, len);
        },
    );
}

/// The convolution of every image of `input` (`[batch, c_in, h, w]`, held as `source` says)
/// with the transformed filters `u` (from [`Filters::new`]) plus `bias` and `addends` (added
/// as each tile is written), into `output`
/// (`[batch, c_out, h, w]`, every element written, so it may start uninitialised). Requires
/// [`applies`].
///
/// Where [`parallel_chunks`] says so, chunks run in parallel, each on one thread (no barrier
/// between a chunk's steps) but the last, whose steps run in parallel; otherwise chunks run
/// in turn, each step in parallel. Either way every tile is computed the same way, so the
/// result depends on neither.
pub(crate) fn forward(
    p: &Conv2dParams,
    (input, source): (&[f32], Source),
    u: &Filters,
    bias: Option<&[f32]>,
    addends: Addends,
    (output, sink): (&mut [MaybeUninit<f32>], Sink),
) {
    debug_assert!(applies(p));
    assert!(
        sink == Sink::Plain
            || (bias.is_none() && addends.shift.is_none() && addends.residual.is_none()),
        "winograd: a pooled output takes no bias or addends"
    );
    let threads = rayon::current_num_threads();
    let (per_image, chunk, _) = chunking(p);
    let (parallel, chunk) = parallel_chunks(p.batch, per_image, chunk, threads);
    let stride = (chunk * per_image).next_multiple_of(ROW_ALIGN);
    let (in_len, out_len) = (p.c_in * source.plane(p), p.c_out * sink.plane(p.h, p.w));
    let (v_plane, m_plane) = (p.c_in * stride + PLANE_SKEW, p.c_out * stride + PLANE_SKEW);
    let (v_len, m_len) = (XI * v_plane, XI * m_plane);
    // Chunk k's share of the addends.
    let addends_of = |k: usize| Addends {
        shift: addends.shift.map(|s| &s[k * chunk * p.c_out..]),
        residual: addends.residual.map(|r| &r[k * chunk * out_len..]),
    };
    if parallel {
        // Each thread claims the next chunk until none is left; the last chunk's steps run in
        // parallel, so that a thread that finds nothing left to claim helps finish it rather
        // than wait. With every chunk on one thread, two threads' finishing times differed by
        // about half a chunk: 3.7-5.7% of a 64-channel 32x32 forward pass, 6.4-9% of a
        // 128-channel 16x16 one (change 52).
        let unclaimed = Mutex::new((0usize, output));
        let claim = || {
            let mut rest = unclaimed.lock().unwrap_or_else(|e| e.into_inner());
            let (k, out) = &mut *rest;
            if out.is_empty() {
                return None;
            }
            let len = (chunk * out_len).min(out.len());
            let (mine, tail) = std::mem::take(out).split_at_mut(len);
            *out = tail;
            *k += 1;
            Some((*k - 1, mine, out.is_empty()))
        };
        (0..threads).into_par_iter().for_each(|_| {
            while let Some((k, out, last)) = claim() {
                let inp = &input[k * chunk * in_len..][..out.len() / out_len * in_len];
                with_buffers([v_len, m_len, 0], |[v, m, _]| {
                    let extra = (bias, addends_of(k));
                    forward_chunk(p, u, extra, (inp, source, out, sink), (v, m, stride), last);
                });
            }
        });
    } else {
        with_buffers([v_len, m_len, 0], |[v, m, _]| {
            for (k, (inp, out)) in input
                .chunks(chunk * in_len)
                .zip(output.chunks_mut(chunk * out_len))
                .enumerate()
            {
                let extra = (bias, addends_of(k));
                forward_chunk(
                    p,
                    u,
                    extra,
                    (inp, source, out, sink),
                    (&mut *v, &mut *m, stride),
                    true,
                );
            }
        });
    }
}

/// How [`forward`] runs a batch of `batch` images of `per_image` tiles, in chunks of `chunk`
/// images (from [`chunking`]) on `threads` threads: `(whole chunks in parallel, images per
/// chunk)`. Each output tile is computed the same way in any chunk, so neither changes a
/// result.
///
/// - At least two chunks per thread: whole chunks in parallel; on more than one thread, of
///   half as many images, so that two threads' buffers together hold about what one chunk's
///   do in the caches they share, and each thread has more, smaller chunks to even out a slow
///   one (change 51).
/// - The whole batch in one chunk, on more than one thread, with at least [`ROW_ALIGN`] tiles
///   (one column panel of the products) per thread in the batch: chunks of `batch / threads`
///   images (rounded up), one per thread, in parallel (change 56). Each step of a chunk that small is too short to share: the 128-channel 8x8
///   forward pass spent a fifth of its time with one thread waiting on the other between
///   the steps.
/// - Otherwise: chunk by chunk, each step in parallel.
fn parallel_chunks(batch: usize, per_image: usize, chunk: usize, threads: usize) -> (bool, usize) {
    if batch.div_ceil(chunk) >= 2 * threads {
        let half = if threads > 1 && chunk > 1 {
            chunk / 2
        } else {
            chunk
        };
        (true, half)
    } else if threads > 1 && chunk >= batch && batch * per_image >= ROW_ALIGN * threads {
        (true, batch.div_ceil(threads))
    } else {
        (false, chunk)
    }
}

/// [`forward`] for one chunk of images (`inp` to `out`, with the bias and the chunk's share of
/// the addends) with the buffers `V` and `M` (rows of `stride` values), each step in parallel
/// if `par`. A pooled output plane is scattered whole into scratch first, then summed.
fn forward_chunk(
    p: &Conv2dParams,
    u: &Filters,
    (bias, addends): (Option<&[f32]>, Addends),
    (inp, source, out, sink): (&[f32], Source, &mut [MaybeUninit<f32>], Sink),
    (v, m, stride): (&mut [f32], &mut [f32], usize),
    par: bool,
) {
    let (th, tw) = tiles(p);
    let per_image = th * tw;
    let isa = cpu::isa();
    let plane = p.h * p.w;
    let (in_len, out_len) = (p.c_in * source.plane(p), p.c_out * sink.plane(p.h, p.w));
    let (v_plane, m_plane) = (p.c_in * stride + PLANE_SKEW, p.c_out * stride + PLANE_SKEW);
    let cols = inp.len() / in_len * per_image;
    let len = cols.next_multiple_of(COLUMN_ALIGN);
    transform_chunk_input(p, isa, (inp, source), (&mut *v, v_plane, stride), par);
    u.products(par, cols, (v, v_plane), (&mut *m, m_plane), stride);
    let images = inp.len() / in_len;
    let mut planes = blocks_by_channel(out, out_len, p.c_out, sink.plane(p.h, p.w));
    let each = |(row, full): &mut (Vec<f32>, Vec<f32>),
                co: usize,
                rows: &mut [&mut [f32]],
                planes: &mut [&mut [MaybeUninit<f32>]]| {
        transform_output_on(isa, rows, len);
        let bias = bias.map_or(0.0, |b| b[co]);
        for (n, y) in planes.iter_mut().enumerate() {
            let at = (n * p.c_out + co) * plane;
            let epilogue = Epilogue {
                bias,
                shift: addends.shift.map(|s| s[n * p.c_out + co]),
                residual: addends.residual.map(|r| &r[at..at + plane]),
            };
            // Every element of the plane is written: the output is never zeroed.
            if sink == Sink::Plain {
                scatter_tiles(p, rows, n * per_image, epilogue, y, row);
            } else {
                scatter_tiles(p, rows, n * per_image, epilogue, as_uninit(full), row);
                sum_pool_plane(full, p.w, y);
            }
        }
    };
    let rows = ChannelRows::new(m, m_plane, p.c_out, stride);
    let full = if sink == Sink::Plain { 0 } else { plane };
    let row = || (vec![0.0f32; 4 * tw], vec![0.0f32; full]);
    // SAFETY (both): each channel's rows go to one call.
    if par {
        planes
            .par_chunks_mut(images)
            .enumerate()
            .for_each_init(row, |row, (co, planes)| {
                each(row, co, unsafe { &mut rows.rows(co) }, planes)
            });
    } else {
        let mut scratch = row();
        for (co, planes) in planes.chunks_mut(images).enumerate() {
            each(&mut scratch, co, unsafe { &mut rows.rows(co) }, planes);
        }
    }
}

/// The weight gradient `dWt[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] X[n, ci, i + a - 1, j + b - 1]`
/// through the same tiles (the adjoint of [`forward`]): per chunk of images,
/// `dU[xi] (C_out x C_in) += dM[xi] V[xi]^T` with `dM = A dY A^T` and `V = B^T d B` (the
/// chunks in order, each product accumulating onto the last), then `dWt = G^T dU G` for every
/// filter. `input` is held as `source` says; `grad_weight` is `[c_out, c_in, 3, 3]`, overwritten.
/// Requires [`applies`].
pub(crate) fn backward_weight(
    p: &Conv2dParams,
    (input, source): (&[f32], Source),
    grad_output: &[f32],
    grad_weight: &mut [f32],
) {
    debug_assert!(applies(p));
    let (per_image, chunk, stride) = chunking(p);
    let isa = cpu::isa();
    let plane = p.h * p.w;
    let (in_len, out_len) = (p.c_in * source.plane(p), p.c_out * plane);
    let (v_plane, m_plane) = (p.c_in * stride + PLANE_SKEW, p.c_out * stride + PLANE_SKEW);
    let u_plane = p.c_out * p.c_in + PLANE_SKEW;
    with_buffers([XI * v_plane, XI * m_plane, XI * u_plane], |[v, m, du]| {
        for (k, (inp, dyc)) in input
            .chunks(chunk * in_len)
            .zip(grad_output.chunks(chunk * out_len))
            .enumerate()
        {
            let cols = inp.len() / in_len * per_image;
            transform_chunk_input(p, isa, (inp, source), (&mut *v, v_plane, stride), true);
            let rows = &mut ChannelRows::new(m, m_plane, p.c_out, stride);
            gather_transformed::<4, 0>(
                p,
                (dyc, p.c_out, Source::Plain),
                rows,
                true,
                |rows, len| transform_grad_output_on(isa, rows, len),
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
                du,
                p.c_in,
                u_plane,
            );
        }
        if p.batch == 0 {
            // No chunk overwrote the reused buffer.
            du.fill(0.0);
        }
        fold_filter_gradients(du, u_plane, grad_weight);
    });
}
