//! Pointwise (1x1, stride 1, unpadded) convolutions whose input is given as blocks of channels.
//!
//! The input is the concatenation along the channels of parts `X_i` (`[N, C_i, H, W]`), part
//! `i` holding channels `off_i..off_i + C_i` with `off_i = C_0 + ... + C_{i-1}`. Per image `n`,
//! every pass is a sum (or a set) of plain GEMMs on the NCHW data as stored, one per part:
//!
//! ```text
//! forward:          Y[n]  = bias + sum_i W[:, off_i..off_i + C_i] X_i[n]
//! backward-data:    dX_i[n] = W[:, off_i..off_i + C_i]^T dY[n]
//! backward-weight:  dW[:, off_i..off_i + C_i] = sum_n dY[n] X_i[n]^T
//!                   dbias[co] = sum_{n, pixels} dY[n, co]
//! ```
//!
//! with `W` the `[C_out, C]` weight matrix (`C = sum_i C_i`), `X_i[n]` a `[C_i, pixels]` matrix
//! and `Y[n]` a `[C_out, pixels]` one. A column block of `W` (or `dW`) is the slice from
//! `off_i` with row stride `C`, so nothing is copied: a UNet block's `concat([h, skip])` need
//! not be built for its 1x1 shortcut. A single tensor is the one-part case, whose GEMMs are
//! exactly those of the plain pointwise convolution: `conv2d`'s 1x1 routes run through here.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::backward_weight::{bias_gradient, MAX_CHUNKS};
use super::Conv2dParams;
use crate::kernels::gemm::{sgemm, Trans};
use crate::ops::alloc::{assume_init, init_chunk};

/// A pointwise convolution's input as blocks of channels: `data[i]` is `[batch, channels[i],
/// pixels]` and holds channels `off_i..off_i + channels[i]` of the whole input.
#[derive(Clone, Copy)]
pub(super) struct Parts<'a> {
    data: &'a [&'a [f32]],
    channels: &'a [usize],
}

impl<'a> Parts<'a> {
    /// The parts `data` of `channels` channels each (the two of the same length).
    pub fn new(data: &'a [&'a [f32]], channels: &'a [usize]) -> Parts<'a> {
        debug_assert_eq!(data.len(), channels.len());
        Parts { data, channels }
    }

    /// The whole input's channel count `C`.
    fn total(&self) -> usize {
        self.channels.iter().sum()
    }

    /// Image `n` of every part with channels, as `(off_i, C_i, X_i[n])`, in part order.
    fn image(&self, n: usize, npix: usize) -> impl Iterator<Item = (usize, usize, &'a [f32])> {
        let offsets = self.channels.iter().scan(0, |off, &c| {
            *off += c;
            Some(*off - c)
        });
        self.data
            .iter()
            .zip(self.channels)
            .zip(offsets)
            .filter(|((_, &c), _)| c > 0)
            .map(move |((x, &c), off)| (off, c, &x[n * c * npix..][..c * npix]))
    }
}

/// The output element of a kernel: `f32` for an initialised buffer (its old values are
/// overwritten), `MaybeUninit<f32>` for a fresh one. Either way every element gets written.
pub(super) trait Out: Send + Sized {
    /// `piece` (`[rows, npix]`) with row `r` set to `bias[r]`.
    fn rows_of<'a>(piece: &'a mut [Self], bias: &[f32], npix: usize) -> &'a mut [f32];
    /// `piece` as values a GEMM with `beta = 0` may overwrite (a fresh piece is zeroed first).
    fn to_overwrite(piece: &mut [Self]) -> &mut [f32];
}

impl Out for f32 {
    fn rows_of<'a>(piece: &'a mut [f32], bias: &[f32], npix: usize) -> &'a mut [f32] {
        for (row, &b) in piece.chunks_exact_mut(npix).zip(bias) {
            row.fill(b);
        }
        piece
    }

    fn to_overwrite(piece: &mut [f32]) -> &mut [f32] {
        piece
    }
}

impl Out for MaybeUninit<f32> {
    fn rows_of<'a>(piece: &'a mut [Self], bias: &[f32], npix: usize) -> &'a mut [f32] {
        for (row, &b) in piece.chunks_exact_mut(npix).zip(bias) {
            for v in row {
                v.write(b);
            }
        }
        // SAFETY: `piece` is `bias.len()` rows of `npix`, every one of them just written.
        unsafe { assume_init(piece) }
    }

    fn to_overwrite(piece: &mut [Self]) -> &mut [f32] {
        init_chunk(piece)
    }
}

/// Forward, in parallel over images: `Y[n] = bias + sum_i W[:, off_i..off_i + C_i] X_i[n]`
/// into `output` (`[_, c_out, npix]`, every element written). The bias (if any) is written
/// first and is the first GEMM's initial C (`beta = 1`); without one the first GEMM overwrites
/// (`beta = 0`); each later part adds (`beta = 1`).
pub(super) fn forward<T: Out>(
    c_out: usize,
    npix: usize,
    parts: Parts,
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [T],
) {
    let (out_len, c) = (c_out * npix, parts.total());
    if out_len == 0 {
        return;
    }
    output
        .par_chunks_exact_mut(out_len)
        .enumerate()
        .for_each(|(n, y)| {
            let (y, mut beta) = match bias {
                Some(b) => (T::rows_of(y, b, npix), 1.0),
                None => (T::to_overwrite(y), 0.0),
            };
            for (off, ci, x) in parts.image(n, npix) {
                sgemm(
                    Trans::No,
                    Trans::No,
                    c_out,
                    npix,
                    ci,
                    1.0,
                    &weight[off..],
                    c,
                    x,
                    npix,
                    beta,
                    y,
                    npix,
                );
                beta = 1.0;
            }
            if beta == 0.0 {
                // No bias and no input channels: the sum is empty.
                y.fill(0.0);
            }
        });
}

/// Backward-data, in parallel over images: `dX_i[n] = W[:, off_i..off_i + C_i]^T dY[n]` into
/// `grad_parts[i]` (`[batch, channels[i], npix]`, every element written), one GEMM per part
/// and image (zeros when `c_out = 0`).
pub(super) fn backward_data<T: Out>(
    batch: usize,
    c_out: usize,
    npix: usize,
    channels: &[usize],
    grad_output: &[f32],
    weight: &[f32],
    grad_parts: &mut [&mut [T]],
) {
    let (out_len, c) = (c_out * npix, channels.iter().sum::<usize>());
    if c * npix == 0 {
        return;
    }
    // Every image's slice of every part, image by image.
    let mut rests: Vec<&mut [T]> = grad_parts.iter_mut().map(|dx| &mut **dx).collect();
    let mut images = Vec::with_capacity(batch * channels.len());
    for _ in 0..batch {
        for (rest, &ci) in rests.iter_mut().zip(channels) {
            let (head, tail) = std::mem::take(rest).split_at_mut(ci * npix);
            images.push(head);
            *rest = tail;
        }
    }
    images
        .par_chunks_mut(channels.len())
        .enumerate()
        .for_each(|(n, dxs)| {
            let mut off = 0;
            for (dx, &ci) in dxs.iter_mut().zip(channels) {
                if ci > 0 {
                    let dx = T::to_overwrite(dx);
                    if out_len == 0 {
                        dx.fill(0.0);
                    } else {
                        sgemm(
                            Trans::Yes,
                            Trans::No,
                            ci,
                            npix,
                            c_out,
                            1.0,
                            &weight[off..],
                            c,
                            &grad_output[n * out_len..][..out_len],
                            npix,
                            0.0,
                            dx,
                            npix,
                        );
                    }
                }
                off += ci;
            }
        });
}

/// Backward-weight (`batch > 0`, `c_out * npix > 0`, `grad_weight` `[c_out, C]` not empty):
/// per image `dW[:, off_i..off_i + C_i] += dY[n] X_i[n]^T` straight from the NCHW tensors, one
/// partial per chunk of `per_chunk` images, the partials added in chunk order.
pub(super) fn backward_weight(
    c_out: usize,
    npix: usize,
    parts: Parts,
    grad_output: &[f32],
    grad_weight: &mut [f32],
    per_chunk: usize,
) {
    let batch = grad_output.len() / (c_out * npix);
    let len = batch.div_ceil(per_chunk) * grad_weight.len();
    let mut run = |partials: &mut [f32]| {
        backward_weight_into(
            c_out,
            npix,
            parts,
            grad_output,
            grad_weight,
            per_chunk,
            partials,
        )
    };
    PARTIALS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            // Grown, never cleared: the first image of each chunk overwrites its partial.
            if kept.len() < len {
                kept.resize(len, 0.0);
            }
            run(&mut kept[..len]);
        }
        Err(_) => run(&mut vec![0.0f32; len]),
    });
}

thread_local! {
    /// The pointwise weight gradient's per-chunk partials, kept by the calling thread between
    /// calls (neither zeroed nor faulted in again).
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`backward_weight`] with the partials' storage (`chunks * wlen` values, overwritten).
fn backward_weight_into(
    c_out: usize,
    npix: usize,
    parts: Parts,
    grad_output: &[f32],
    grad_weight: &mut [f32],
    per_chunk: usize,
    partials: &mut [f32],
) {
    let (out_len, wlen, c) = (c_out * npix, grad_weight.len(), parts.total());
    let batch = grad_output.len() / out_len;
    partials
        .par_chunks_exact_mut(wlen)
        .enumerate()
        .for_each(|(chunk, dw)| {
            let first = chunk * per_chunk;
            for n in first..(first + per_chunk).min(batch) {
                let beta = if n == first { 0.0 } else { 1.0 };
                let dy = &grad_output[n * out_len..][..out_len];
                for (off, ci, x) in parts.image(n, npix) {
                    sgemm(
                        Trans::No,
                        Trans::Yes,
                        c_out,
                        ci,
                        npix,
                        1.0,
                        dy,
                        npix,
                        x,
                        npix,
                        beta,
                        &mut dw[off..],
                        c,
                    );
                }
            }
        });
    // The partials added in chunk order, straight into the gradient, in parallel over blocks
    // of its entries.
    const BLOCK: usize = 4096;
    let partials = &*partials;
    grad_weight
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, out)| {
            let at = b * BLOCK;
            out.copy_from_slice(&partials[at..at + out.len()]);
            for partial in partials.chunks_exact(wlen).skip(1) {
                for (d, &v) in out.iter_mut().zip(&partial[at..]) {
                    *d += v;
                }
            }
        });
}

/// Panics, naming `op`, unless `p` is pointwise, `channels` add up to `p.c_in`, there are as
/// many parts (of the lengths in `part_lens`) as channel counts, each of `[batch, C_i, h, w]`,
/// and the weight and output have `p`'s lengths.
fn check_parts(
    op: &str,
    p: &Conv2dParams,
    channels: &[usize],
    part_lens: &[usize],
    weight: usize,
    output: usize,
) {
    assert!(
        p.is_pointwise(),
        "{op}: the parts form needs a 1x1, stride-1, unpadded convolution, got weight {:?} \
         stride {} padding {}",
        p.weight_shape(),
        p.stride,
        p.padding
    );
    p.validate(op, None, Some(weight), Some(output));
    let total: usize = channels.iter().sum();
    assert!(
        total == p.c_in && part_lens.len() == channels.len(),
        "{op}: {} parts of channels {channels:?} (sum {total}) for input {:?}",
        part_lens.len(),
        p.input_shape()
    );
    for (i, (&len, &c)) in part_lens.iter().zip(channels).enumerate() {
        let want = p.batch * c * p.h * p.w;
        assert_eq!(
            len,
            want,
            "{op}: part {i} has {len} values but [{}, {c}, {}, {}] needs {want} (input {:?})",
            p.batch,
            p.h,
            p.w,
            p.input_shape()
        );
    }
}

/// Pointwise conv2d forward on an input given as channel parts:
/// `Y[n] = bias + sum_i W[:, off_i..off_i + C_i] X_i[n]` (see the module doc), with `parts[i]`
/// `[batch, channels[i], h, w]`, `p` the convolution of their concatenation (`p.c_in` =
/// `sum channels`, 1x1, stride 1, padding 0), `weight` `[c_out, c_in]`, `bias` `[c_out]` and
/// `output` `[batch, c_out, h, w]`, every element of which is written. Panics, naming the op
/// and the shapes, if a length disagrees with `p`.
pub fn conv2d_pointwise_parts_forward_uninit(
    p: &Conv2dParams,
    parts: &[&[f32]],
    channels: &[usize],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [MaybeUninit<f32>],
) {
    const OP: &str = "conv2d_forward";
    let lens: Vec<usize> = parts.iter().map(|x| x.len()).collect();
    check_parts(OP, p, channels, &lens, weight.len(), output.len());
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            p.c_out,
            "{OP}: bias has {} values, expected c_out = {} (weight {:?})",
            b.len(),
            p.c_out,
            p.weight_shape()
        );
    }
    let parts = Parts::new(parts, channels);
    forward(p.c_out, p.h * p.w, parts, weight, bias, output);
}

/// Pointwise conv2d backward-data into channel parts: `dX_i[n] = W[:, off_i..off_i + C_i]^T
/// dY[n]` (see the module doc), with `grad_output` `[batch, c_out, h, w]`, `weight`
/// `[c_out, c_in]` and `grad_parts[i]` `[batch, channels[i], h, w]`, every element of which is
/// written. Each element has the bits of the single-tensor backward-data of the concatenated
/// input. Panics, naming the op and the shapes, if a length disagrees with `p`.
pub fn conv2d_pointwise_parts_backward_data_uninit(
    p: &Conv2dParams,
    grad_output: &[f32],
    weight: &[f32],
    channels: &[usize],
    grad_parts: &mut [&mut [MaybeUninit<f32>]],
) {
    const OP: &str = "conv2d_backward_data";
    let lens: Vec<usize> = grad_parts.iter().map(|x| x.len()).collect();
    check_parts(OP, p, channels, &lens, weight.len(), grad_output.len());
    backward_data(
        p.batch,
        p.c_out,
        p.h * p.w,
        channels,
        grad_output,
        weight,
        grad_parts,
    );
}

/// Pointwise conv2d backward-weight from an input given as channel parts:
/// `dW[:, off_i..off_i + C_i] = sum_n dY[n] X_i[n]^T` and `dbias[co] = sum_{n, pixels} dY[n, co]`
/// (see the module doc), with `parts[i]` `[batch, channels[i], h, w]`, `grad_output`
/// `[batch, c_out, h, w]`, `grad_weight` `[c_out, c_in]` and `grad_bias` `[c_out]`, both
/// overwritten. As in `conv2d_backward_weight`, each chunk of `ceil(batch / 8)` images sums
/// its images in order into a partial of its own, and the partials are added in chunk order,
/// so the result does not depend on the number of threads. Panics, naming the op and the
/// shapes, if a length disagrees with `p`.
pub fn conv2d_pointwise_parts_backward_weight(
    p: &Conv2dParams,
    parts: &[&[f32]],
    channels: &[usize],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    grad_bias: Option<&mut [f32]>,
) {
    const OP: &str = "conv2d_backward_weight";
    let lens: Vec<usize> = parts.iter().map(|x| x.len()).collect();
    check_parts(OP, p, channels, &lens, grad_weight.len(), grad_output.len());
    let npix = p.h * p.w;
    if let Some(db) = grad_bias {
        assert_eq!(
            db.len(),
            p.c_out,
            "{OP}: grad_bias has {} values, expected c_out = {} (weight {:?})",
            db.len(),
            p.c_out,
            p.weight_shape()
        );
        bias_gradient(grad_output, p.batch, p.c_out, npix, db);
    }
    if grad_weight.is_empty() {
        return;
    }
    if p.batch == 0 || npix == 0 {
        grad_weight.fill(0.0);
        return;
    }
    let per_chunk = p.batch.div_ceil(MAX_CHUNKS);
    let parts = Parts::new(parts, channels);
    backward_weight(p.c_out, npix, parts, grad_output, grad_weight, per_chunk);
}
