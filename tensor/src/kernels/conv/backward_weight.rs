//! conv2d backward-weight: the gradients of the loss with respect to the filters and the bias.

use std::cell::RefCell;

use rayon::prelude::*;

use super::direct;
use super::hwc::{im2row_rows, pad_channels_last, permute_to_oihw};
use super::im2col::Geometry;
use super::pointwise;
use super::source::{upsampled_images, Source};
use super::winograd;
use super::Conv2dParams;
use crate::kernels::gemm::{sgemm, Trans};

/// At most this many partial weight gradients (chunks of images) per call.
pub(super) const MAX_CHUNKS: usize = 8;

/// conv2d backward-weight:
/// `dWt[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] * X[n, ci, i*s + a - p, j*s + b - p]` and
/// `dbias[co] = sum_{n, i, j} dY[n, co, i, j]`.
///
/// `input` is `[batch, c_in, h, w]`, `grad_output` `[batch, c_out, out_h, out_w]`,
/// `grad_weight` `[c_out, c_in, kh, kw]` and `grad_bias` (if any) `[c_out]`, both overwritten.
/// Panics, naming the op and the shapes, if a length disagrees with `p`.
///
/// Per image, `dWt += dY_n * colsT_n` (a GEMM whose reduction runs over the image's output
/// pixels, with the pixel-major column matrix of `hwc`). The batch is cut into at most 8 chunks of `ceil(batch / 8)`
/// images; each chunk sums its images in order into its own partial, and the partials are then
/// added in chunk order, so the result does not depend on the number of threads.
pub fn conv2d_backward_weight(
    p: &Conv2dParams,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    grad_bias: Option<&mut [f32]>,
) {
    let input = (input, Source::Plain);
    backward_weight_from(p, input, grad_output, grad_weight, grad_bias);
}

/// [`conv2d_backward_weight`] of the convolution of the nearest-neighbour 2x upsampling of
/// `input` (see [`super::conv2d_forward_upsampled_uninit`]): `p` is the geometry of the
/// convolution of the upsampled images (`h x w`), `input` holds them at half the resolution
/// (`[batch, c_in, h / 2, w / 2]`). Where Winograd's algorithm applies, it reads `input` in
/// place; the other routes form the upsampled images first.
pub fn conv2d_backward_weight_upsampled(
    p: &Conv2dParams,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    grad_bias: Option<&mut [f32]>,
) {
    let input = (input, Source::Upsampled2x);
    backward_weight_from(p, input, grad_output, grad_weight, grad_bias);
}

/// The weight and bias gradients with the input held as its `Source` says.
fn backward_weight_from(
    p: &Conv2dParams,
    (input, source): (&[f32], Source),
    grad_output: &[f32],
    grad_weight: &mut [f32],
    grad_bias: Option<&mut [f32]>,
) {
    const OP: &str = "conv2d_backward_weight";
    let plain = (source == Source::Plain).then_some(input.len());
    p.validate(OP, plain, Some(grad_weight.len()), Some(grad_output.len()));
    source.check_len(OP, p, input.len());
    let g = Geometry::of(p);
    let (in_len, out_len) = (p.c_in * g.in_pixels(), p.c_out * g.out_pixels());
    if let Some(db) = grad_bias {
        assert_eq!(
            db.len(),
            p.c_out,
            "conv2d_backward_weight: grad_bias has {} values, expected c_out = {} (weight {:?})",
            db.len(),
            p.c_out,
            p.weight_shape()
        );
        bias_gradient(grad_output, p.batch, p.c_out, g.out_pixels(), db);
    }
    if grad_weight.is_empty() {
        return;
    }
    if p.batch == 0 || out_len == 0 {
        grad_weight.fill(0.0);
        return;
    }
    if winograd::applies(p) {
        winograd::backward_weight(p, (input, source), grad_output, grad_weight);
        return;
    }
    if source != Source::Plain {
        let formed = upsampled_images(p, input);
        let formed = (&formed[..], Source::Plain);
        return backward_weight_from(p, formed, grad_output, grad_weight, None);
    }
    let per_chunk = p.batch.div_ceil(MAX_CHUNKS);
    let chunks = p.batch.div_ceil(per_chunk);
    let wlen = grad_weight.len();
    if p.is_pointwise() {
        let (parts, channels) = ([input], [p.c_in]);
        let parts = pointwise::Parts::new(&parts, &channels);
        pointwise::backward_weight(
            p.c_out,
            g.out_pixels(),
            parts,
            grad_output,
            grad_weight,
            per_chunk,
        );
        return;
    }
    // One partial per chunk, in (co, a, b, ci) order (see `hwc`).
    let mut partials = vec![0.0f32; chunks * wlen];
    partials
        .par_chunks_exact_mut(wlen)
        .enumerate()
        .for_each(|(chunk, dw)| {
            SCRATCH.with(|cell| {
                let mut fresh = Workspace::default();
                let mut held = cell.try_borrow_mut();
                let ws = match held.as_deref_mut() {
                    Ok(ws) => ws,
                    Err(_) => &mut fresh,
                };
                let first = chunk * per_chunk;
                let last = (first + per_chunk).min(p.batch);
                for n in first..last {
                    let x = &input[n * in_len..][..in_len];
                    let dy = &grad_output[n * out_len..][..out_len];
                    accumulate_image(&g, p.c_out, x, dy, dw, n == first, ws);
                }
            })
        });
    let (sum, rest) = partials.split_at_mut(wlen);
    for partial in rest.chunks_exact(wlen) {
        for (d, &v) in sum.iter_mut().zip(partial) {
            *d += v;
        }
    }
    permute_to_oihw(&g, p.c_out, sum, grad_weight);
}

/// Per-task scratch: the padded channels-last image and one pixel-major column tile.
#[derive(Default)]
struct Workspace {
    padded: Vec<f32>,
    cols: Vec<f32>,
    direct: direct::Workspace,
}

thread_local! {
    /// Kept between calls so that each call does not fault in fresh pages (a fresh one is used
    /// if it is busy higher up the stack).
    static SCRATCH: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// `db[co] = sum_{n, pixels} dY[n, co, pixel]`, accumulated in f64 in a fixed order.
pub(super) fn bias_gradient(dy: &[f32], batch: usize, c_out: usize, npix: usize, db: &mut [f32]) {
    db.par_iter_mut().enumerate().for_each(|(co, d)| {
        // Eight interleaved accumulators: a fixed order the compiler can vectorise.
        let mut acc = [0.0f64; 8];
        for n in 0..batch {
            let row = &dy[(n * c_out + co) * npix..][..npix];
            let mut chunks = row.chunks_exact(8);
            for ch in &mut chunks {
                for (a, &v) in acc.iter_mut().zip(ch) {
                    *a += v as f64;
                }
            }
            for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
                *a += v as f64;
            }
        }
        *d = acc.iter().sum::<f64>() as f32;
    });
}

/// `dw (+)= dY_n * colsT_n` for one image (`x` is `[g.c, g.h, g.w]`, `dy` `[c_out, oh * ow]`,
/// `dw` `[c_out, (a, b, ci)]`); overwrites `dw` when `overwrite`, else adds to it. Both GEMM
/// operands are read in their stored orientation.
fn accumulate_image(
    g: &Geometry,
    c_out: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    overwrite: bool,
    ws: &mut Workspace,
) {
    let (k, npix) = (g.k(), g.out_pixels());
    let mut beta = if overwrite { 0.0 } else { 1.0 };
    pad_channels_last(g, x, &mut ws.padded);
    if direct::available() {
        direct::weight_grad_image(g, c_out, &ws.padded, dy, dw, overwrite, &mut ws.direct);
        return;
    }
    for (r0, r1) in g.tiles() {
        let t = (r1 - r0) * g.ow;
        ws.cols.resize(k * t, 0.0);
        let cols: &[f32] = if g.is_pointwise() {
            // The padded channels-last image already is the pixel-major column matrix.
            &ws.padded[r0 * g.ow * k..][..t * k]
        } else {
            im2row_rows(g, &ws.padded, r0, r1, &mut ws.cols);
            &ws.cols
        };
        sgemm(
            Trans::No,
            Trans::No,
            c_out,
            k,
            t,
            1.0,
            &dy[r0 * g.ow..],
            npix,
            cols,
            k,
            beta,
            dw,
            k,
        );
        beta = 1.0;
    }
}
