//! conv2d backward-weight: the gradients of the loss with respect to the filters and the bias.

use rayon::prelude::*;

use super::im2col::{im2col_rows, Geometry};
use super::Conv2dParams;
use crate::kernels::gemm::{sgemm, Trans};

/// At most this many partial weight gradients (chunks of images) per call.
const MAX_CHUNKS: usize = 8;

/// conv2d backward-weight:
/// `dWt[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] * X[n, ci, i*s + a - p, j*s + b - p]` and
/// `dbias[co] = sum_{n, i, j} dY[n, co, i, j]`.
///
/// `input` is `[batch, c_in, h, w]`, `grad_output` `[batch, c_out, out_h, out_w]`,
/// `grad_weight` `[c_out, c_in, kh, kw]` and `grad_bias` (if any) `[c_out]`, both overwritten.
/// Panics, naming the op and the shapes, if a length disagrees with `p`.
///
/// Per image, `dWt += dY_n * cols_n^T` (a GEMM whose reduction runs over the image's output
/// pixels). The batch is cut into at most 8 chunks of `ceil(batch / 8)`
/// images; each chunk sums its images in order into its own partial, and the partials are then
/// added in chunk order, so the result does not depend on the number of threads.
pub fn conv2d_backward_weight(
    p: &Conv2dParams,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
    grad_bias: Option<&mut [f32]>,
) {
    p.validate(
        "conv2d_backward_weight",
        Some(input.len()),
        Some(grad_weight.len()),
        Some(grad_output.len()),
    );
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
    let per_chunk = p.batch.div_ceil(MAX_CHUNKS);
    let chunks = p.batch.div_ceil(per_chunk);
    let wlen = grad_weight.len();
    let mut partials = vec![0.0f32; (chunks - 1) * wlen];
    {
        let mut dests: Vec<&mut [f32]> = Vec::with_capacity(chunks);
        dests.push(&mut *grad_weight);
        dests.extend(partials.chunks_exact_mut(wlen));
        dests
            .into_par_iter()
            .enumerate()
            .for_each_init(Vec::new, |cols, (chunk, dw)| {
                let first = chunk * per_chunk;
                let last = (first + per_chunk).min(p.batch);
                for n in first..last {
                    let x = &input[n * in_len..][..in_len];
                    let dy = &grad_output[n * out_len..][..out_len];
                    accumulate_image(&g, p.c_out, x, dy, dw, n == first, cols);
                }
            });
    }
    for partial in partials.chunks_exact(wlen) {
        for (d, &v) in grad_weight.iter_mut().zip(partial) {
            *d += v;
        }
    }
}

/// `db[co] = sum_{n, pixels} dY[n, co, pixel]`, accumulated in f64 in a fixed order.
fn bias_gradient(dy: &[f32], batch: usize, c_out: usize, npix: usize, db: &mut [f32]) {
    db.par_iter_mut().enumerate().for_each(|(co, d)| {
        let mut sum = 0.0f64;
        for n in 0..batch {
            let row = &dy[(n * c_out + co) * npix..][..npix];
            sum += row.iter().map(|&v| v as f64).sum::<f64>();
        }
        *d = sum as f32;
    });
}

/// `dw (+)= dY_n * cols_n^T` for one image (`x` is `[g.c, g.h, g.w]`, `dy` `[c_out, oh * ow]`,
/// `dw` `[c_out, g.k()]`); overwrites `dw` when `overwrite`, else adds to it.
fn accumulate_image(
    g: &Geometry,
    c_out: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    overwrite: bool,
    cols: &mut Vec<f32>,
) {
    let (k, npix) = (g.k(), g.out_pixels());
    let mut beta = if overwrite { 0.0 } else { 1.0 };
    if g.is_pointwise() {
        sgemm(
            Trans::No,
            Trans::Yes,
            c_out,
            k,
            npix,
            1.0,
            dy,
            npix,
            x,
            npix,
            beta,
            dw,
            k,
        );
        return;
    }
    for (r0, r1) in g.tiles() {
        let t = (r1 - r0) * g.ow;
        cols.resize(k * t, 0.0);
        im2col_rows(g, x, r0, r1, cols);
        sgemm(
            Trans::No,
            Trans::Yes,
            c_out,
            k,
            t,
            1.0,
            &dy[r0 * g.ow..],
            npix,
            cols,
            t,
            beta,
            dw,
            k,
        );
        beta = 1.0;
    }
}
