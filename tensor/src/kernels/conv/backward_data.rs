//! conv2d backward-data: the gradient of the loss with respect to the input images.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::forward::forward_images;
use super::im2col::{col2im_rows, Geometry};
use super::pointwise;
use super::source::{sum_pool_plane, Sink, Source};
use super::winograd;
use super::Conv2dParams;
use crate::kernels::gemm::{sgemm, Trans};
use crate::ops::alloc::{as_uninit, init_zeroed};

/// conv2d backward-data (the adjoint of the forward pass in `X`):
/// `dX[n, ci, y, x] = sum_{co, a, b, i, j : i*s + a - p = y, j*s + b - p = x} dY[n, co, i, j] * Wt[co, ci, a, b]`.
///
/// `grad_output` is `[batch, c_out, out_h, out_w]`, `weight` `[c_out, c_in, kh, kw]`,
/// `grad_input` `[batch, c_in, h, w]` (overwritten). Panics, naming the op and the shapes, if a
/// length disagrees with `p`.
///
/// Three routes, chosen by geometry only:
/// - 1x1, stride 1, no padding: `dX_n = Wt^T * dY_n`, one GEMM per image;
/// - stride 1 with `p < kh` and `p < kw`: a forward convolution of `dY` (padding
///   `kh - 1 - p`, `kw - 1 - p`) with the flipped, channel-transposed kernel
///   `Wf[ci, co, a, b] = Wt[co, ci, kh-1-a, kw-1-b]`, which keeps the GEMM's reduction long
///   (`c_out * kh * kw`);
/// - otherwise: per tile of output rows, `dcols = Wt^T * dY` then a scatter-add (col2im).
pub fn conv2d_backward_data(
    p: &Conv2dParams,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    if backward_data_winograd(p, grad_output, weight, (as_uninit(grad_input), Sink::Plain)) {
        return;
    }
    if p.is_pointwise() {
        pointwise_images(p, grad_output, weight, grad_input);
        return;
    }
    backward_data_other(p, grad_output, weight, grad_input);
}

/// [`conv2d_backward_data`] into an output that may be uninitialised: every element is
/// written, by the Winograd path without zeroing the output first, by the others after
/// zeroing it. Panics as [`conv2d_backward_data`] does.
pub fn conv2d_backward_data_uninit(
    p: &Conv2dParams,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [MaybeUninit<f32>],
) {
    if backward_data_winograd(p, grad_output, weight, (grad_input, Sink::Plain)) {
        return;
    }
    if p.is_pointwise() {
        // Each image's gradient is zeroed right before its GEMM writes it (while in cache),
        // not in a pass of its own.
        pointwise_images(p, grad_output, weight, grad_input);
        return;
    }
    backward_data_other(p, grad_output, weight, init_zeroed(grad_input));
}

/// The 1x1, stride-1, unpadded route (the arguments already checked): `dX_n = Wt^T * dY_n`,
/// one GEMM per image, every element of `grad_input` written (see `pointwise.rs`).
fn pointwise_images<T: pointwise::Out>(
    p: &Conv2dParams,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [T],
) {
    let (npix, channels) = (p.h * p.w, [p.c_in]);
    pointwise::backward_data(
        p.batch,
        p.c_out,
        npix,
        &channels,
        grad_output,
        weight,
        &mut [grad_input],
    );
}

/// The gradient with respect to the small images of a convolution of their nearest-neighbour
/// 2x upsampling (see [`super::conv2d_forward_upsampled_uninit`]): [`conv2d_backward_data`]
/// of the upsampled images, summed over each 2x2 block (the adjoint of the upsampling), with
/// the bits of the two steps apart. `p` is the geometry of the convolution of the upsampled
/// images (`h x w`), `grad_input` is `[batch, c_in, h / 2, w / 2]`, every element written.
/// Where Winograd's algorithm applies, each image's full-size gradient exists only one
/// channel at a time, in scratch.
pub fn conv2d_backward_data_pooled_uninit(
    p: &Conv2dParams,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [MaybeUninit<f32>],
) {
    if backward_data_winograd(
        p,
        grad_output,
        weight,
        (&mut *grad_input, Sink::SumPooled2x),
    ) {
        return;
    }
    let mut full = vec![0.0f32; p.batch * p.c_in * p.h * p.w];
    conv2d_backward_data(p, grad_output, weight, &mut full);
    let plane = Source::Upsampled2x.plane(p);
    if plane > 0 {
        grad_input
            .par_chunks_mut(plane)
            .zip(full.par_chunks(p.h * p.w))
            .for_each(|(dst, src)| sum_pool_plane(src, p.w, dst));
    }
}

/// The checks, then the Winograd route if it applies (returns whether it did), the input
/// gradient stored as `sink` says.
fn backward_data_winograd(
    p: &Conv2dParams,
    grad_output: &[f32],
    weight: &[f32],
    (grad_input, sink): (&mut [MaybeUninit<f32>], Sink),
) -> bool {
    const OP: &str = "conv2d_backward_data";
    let plain = (sink == Sink::Plain).then_some(grad_input.len());
    p.validate(OP, plain, Some(weight.len()), Some(grad_output.len()));
    let want = p.batch * p.c_in * sink.plane(p.h, p.w);
    assert_eq!(
        grad_input.len(),
        want,
        "{OP}: grad_input has {} values, {:?} stored as {sink:?} needs {want}",
        grad_input.len(),
        p.input_shape()
    );
    let g = Geometry::of(p);
    if p.c_in * g.in_pixels() == 0 || p.c_out * g.out_pixels() == 0 {
        return false;
    }
    let tp = transposed(p);
    if !(transposes(p) && winograd::applies(&tp)) {
        return false;
    }
    let u = winograd::Filters::new(weight, p.c_in, p.c_out, winograd::Orientation::Adjoint);
    let dy = (grad_output, Source::Plain);
    winograd::forward(&tp, dy, &u, None, Default::default(), (grad_input, sink));
    true
}

/// True if backward-data runs as a forward convolution of `dY` (stride 1, `p < kh, kw`, not
/// pointwise).
fn transposes(p: &Conv2dParams) -> bool {
    p.stride == 1 && p.padding < p.kh && p.padding < p.kw && !p.is_pointwise()
}

/// The parameters of that forward convolution: 3x3 with padding 1 stays 3x3 with padding 1.
fn transposed(p: &Conv2dParams) -> Conv2dParams {
    Conv2dParams {
        c_in: p.c_out,
        c_out: p.c_in,
        ..*p
    }
}

/// Every route but Winograd's and the pointwise one (the arguments already checked).
fn backward_data_other(
    p: &Conv2dParams,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    let g = Geometry::of(p);
    let (in_len, out_len) = (p.c_in * g.in_pixels(), p.c_out * g.out_pixels());
    if in_len == 0 {
        return;
    }
    if out_len == 0 {
        grad_input.fill(0.0);
        return;
    }
    if transposes(p) {
        let flipped = flip_kernel(p, weight);
        let tg = Geometry {
            c: p.c_out,
            h: g.oh,
            w: g.ow,
            kh: p.kh,
            kw: p.kw,
            stride: 1,
            pad_h: p.kh - 1 - p.padding,
            pad_w: p.kw - 1 - p.padding,
            oh: p.h,
            ow: p.w,
        };
        forward_images(&tg, p.c_in, grad_output, &flipped, None, grad_input);
        return;
    }
    grad_input
        .par_chunks_exact_mut(in_len)
        .zip(grad_output.par_chunks_exact(out_len))
        .for_each_init(Vec::new, |cols, (dx, dy)| {
            backward_data_image(&g, p.c_out, dy, weight, dx, cols)
        });
}

/// `Wf[ci, co, a, b] = Wt[co, ci, kh-1-a, kw-1-b]`: the kernel of the transposed convolution.
fn flip_kernel(p: &Conv2dParams, weight: &[f32]) -> Vec<f32> {
    let taps = p.kh * p.kw;
    let mut flipped = vec![0.0; weight.len()];
    // In parallel over the flipped kernel's output channels (the input channels `ci`).
    flipped
        .par_chunks_mut(p.c_out * taps)
        .enumerate()
        .for_each(|(ci, row)| {
            for (co, dst) in row.chunks_exact_mut(taps).enumerate() {
                let src = &weight[(co * p.c_in + ci) * taps..][..taps];
                for (d, &v) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = v;
                }
            }
        });
    flipped
}

/// One image (not pointwise) by GEMM + col2im: `dy` is `[c_out, oh * ow]`, `dx` is
/// `[g.c, g.h, g.w]`.
fn backward_data_image(
    g: &Geometry,
    c_out: usize,
    dy: &[f32],
    weight: &[f32],
    dx: &mut [f32],
    cols: &mut Vec<f32>,
) {
    let (k, npix) = (g.k(), g.out_pixels());
    dx.fill(0.0);
    for (r0, r1) in g.tiles() {
        let t = (r1 - r0) * g.ow;
        cols.resize(k * t, 0.0);
        sgemm(
            Trans::Yes,
            Trans::No,
            k,
            t,
            c_out,
            1.0,
            weight,
            k,
            &dy[r0 * g.ow..],
            npix,
            0.0,
            cols,
            t,
        );
        col2im_rows(g, cols, r0, r1, dx);
    }
}
