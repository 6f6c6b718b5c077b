//! conv2d forward: per image, `Y[co, pixels] = bias[co] + Wt[co, (ci, a, b)] * cols`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::direct;
use super::im2col::{im2col_rows, Geometry};
use super::pointwise::{self, Parts};
use super::source::{upsampled_images, Sink, Source};
use super::winograd;
use super::{Addends, Conv2dParams};
use crate::kernels::gemm::{sgemm, Trans};
use crate::ops::alloc::{as_uninit, assume_init, init_zeroed};

/// conv2d forward on NCHW images:
/// `Y[n, co, i, j] = bias[co] + sum_{ci, a, b} Wt[co, ci, a, b] * X[n, ci, i*s + a - p, j*s + b - p]`
/// (zero outside the image).
///
/// `input` is `[batch, c_in, h, w]`, `weight` `[c_out, c_in, kh, kw]`, `bias` (if any)
/// `[c_out]`, `output` `[batch, c_out, out_h, out_w]` (overwritten). Panics, naming the op and
/// the shapes, if a length disagrees with `p`.
pub fn conv2d_forward(
    p: &Conv2dParams,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    check_args(p, (input, Source::Plain), weight, bias, output.len());
    if winograd::applies(p) {
        let u = winograd::Filters::new(weight, p.c_out, p.c_in, winograd::Orientation::Forward);
        let input = (input, Source::Plain);
        let output = (as_uninit(output), Sink::Plain);
        winograd::forward(p, input, &u, bias, Addends::default(), output);
        return;
    }
    forward_images(&Geometry::of(p), p.c_out, input, weight, bias, output);
}

/// [`conv2d_forward`] into an output that may be uninitialised: every element is written, by
/// the Winograd path without zeroing the output first (saving a pass over memory), by the
/// others after zeroing it. Panics as [`conv2d_forward`] does.
pub fn conv2d_forward_uninit(
    p: &Conv2dParams,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [MaybeUninit<f32>],
) {
    conv2d_forward_uninit_plus(p, input, weight, bias, Addends::default(), output);
}

/// [`conv2d_forward_uninit`] with `addends` added to the output after the bias (see
/// [`Addends`]): as the Winograd path writes each tile, elsewhere in a pass after the
/// convolution. Panics as [`conv2d_forward`] does, or if an addend's length disagrees with `p`.
pub fn conv2d_forward_uninit_plus(
    p: &Conv2dParams,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    addends: Addends,
    output: &mut [MaybeUninit<f32>],
) {
    forward_from(p, (input, Source::Plain), weight, bias, addends, output);
}

/// [`conv2d_forward_uninit`] of the nearest-neighbour 2x upsampling of `input`: `p` is the
/// geometry of the convolution of the upsampled images (`h x w`), `input` holds them at half
/// the resolution (`[batch, c_in, h / 2, w / 2]`). Where Winograd's algorithm applies, it
/// reads `input` in place, so the upsampled images are never written out; the other routes
/// form them first. Each output value has the bits of upsampling and then convolving.
pub fn conv2d_forward_upsampled_uninit(
    p: &Conv2dParams,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [MaybeUninit<f32>],
) {
    let input = (input, Source::Upsampled2x);
    forward_from(p, input, weight, bias, Addends::default(), output);
}

/// The forward convolution of the input held as its `Source` says (see
/// [`conv2d_forward_uninit_plus`]).
fn forward_from(
    p: &Conv2dParams,
    (input, source): (&[f32], Source),
    weight: &[f32],
    bias: Option<&[f32]>,
    addends: Addends,
    output: &mut [MaybeUninit<f32>],
) {
    check_args(p, (input, source), weight, bias, output.len());
    if let Some(s) = addends.shift {
        assert_eq!(
            s.len(),
            p.batch * p.c_out,
            "conv2d: shift of {} values for {} images of {} channels",
            s.len(),
            p.batch,
            p.c_out
        );
    }
    if let Some(r) = addends.residual {
        assert_eq!(
            r.len(),
            output.len(),
            "conv2d: residual of {} values for an output of {}",
            r.len(),
            output.len()
        );
    }
    if winograd::applies(p) {
        let u = winograd::Filters::new(weight, p.c_out, p.c_in, winograd::Orientation::Forward);
        winograd::forward(p, (input, source), &u, bias, addends, (output, Sink::Plain));
        return;
    }
    if source != Source::Plain {
        let formed = upsampled_images(p, input);
        forward_from(p, (&formed, Source::Plain), weight, bias, addends, output);
        return;
    }
    let g = Geometry::of(p);
    let y = if g.is_pointwise() && g.c > 0 {
        // Each image's rows are first written with the bias (or zeroed), which initialises
        // them, so no zeroing pass over the whole output comes first.
        pointwise::forward(
            p.c_out,
            g.out_pixels(),
            Parts::new(&[input], &[g.c]),
            weight,
            bias,
            output,
        );
        // SAFETY: pointwise::forward wrote every element.
        unsafe { assume_init(output) }
    } else {
        let y = init_zeroed(output);
        forward_images(&g, p.c_out, input, weight, bias, y);
        y
    };
    add_after(p.c_out, g.out_pixels(), addends, y);
}

/// `y += shift[n, co]`, then `y += residual`, plane by plane (`c_out` planes of `npix` values
/// per image), in parallel over images.
fn add_after(c_out: usize, npix: usize, addends: Addends, y: &mut [f32]) {
    let out_len = c_out * npix;
    if (addends.shift.is_none() && addends.residual.is_none()) || out_len == 0 {
        return;
    }
    y.par_chunks_mut(out_len)
        .enumerate()
        .for_each(|(n, image)| {
            for (co, plane) in image.chunks_mut(npix).enumerate() {
                if let Some(s) = addends.shift {
                    let s = s[n * c_out + co];
                    plane.iter_mut().for_each(|v| *v += s);
                }
                if let Some(r) = addends.residual {
                    let at = n * out_len + co * npix;
                    for (v, &a) in plane.iter_mut().zip(&r[at..at + npix]) {
                        *v += a;
                    }
                }
            }
        });
}

/// The length checks of [`conv2d_forward`], the input held as `source` says.
fn check_args(
    p: &Conv2dParams,
    (input, source): (&[f32], Source),
    weight: &[f32],
    bias: Option<&[f32]>,
    output_len: usize,
) {
    let plain = (source == Source::Plain).then_some(input.len());
    p.validate(
        "conv2d_forward",
        plain,
        Some(weight.len()),
        Some(output_len),
    );
    source.check_len("conv2d_forward", p, input.len());
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            p.c_out,
            "conv2d_forward: bias has {} values, expected c_out = {} (weight {:?})",
            b.len(),
            p.c_out,
            p.weight_shape()
        );
    }
}

/// The forward convolution of every image of `input` (`[_, g.c, g.h, g.w]`) with `weight`
/// (`[c_out, g.k()]`) into `output` (`[_, c_out, g.oh, g.ow]`), in parallel over images.
/// Also serves backward-data, as a convolution of the output gradient.
pub(crate) fn forward_images(
    g: &Geometry,
    c_out: usize,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let out_len = c_out * g.out_pixels();
    if out_len == 0 {
        return;
    }
    let in_len = g.c * g.in_pixels();
    if in_len == 0 {
        // No input channels: only the bias remains.
        for y in output.chunks_exact_mut(out_len) {
            fill_bias(y, bias, g.out_pixels());
        }
        return;
    }
    if g.is_pointwise() {
        pointwise::forward(
            c_out,
            g.out_pixels(),
            Parts::new(&[input], &[g.c]),
            weight,
            bias,
            output,
        );
        return;
    }
    if direct::available() {
        let mut packed = Vec::new();
        direct::pack_rows(weight, c_out, g.k(), g.k(), 0, &mut packed);
        output
            .par_chunks_exact_mut(out_len)
            .zip(input.par_chunks_exact(in_len))
            .for_each(|(y, x)| {
                direct::with_workspace(|ws| {
                    direct::forward_image(g, c_out, &packed, x, bias, y, ws)
                })
            });
        return;
    }
    output
        .par_chunks_exact_mut(out_len)
        .zip(input.par_chunks_exact(in_len))
        .for_each_init(Vec::new, |cols, (y, x)| {
            forward_image(g, c_out, x, weight, bias, y, cols)
        });
}

/// Sets every row `co` of `y` (`[c_out, npix]`) to `bias[co]`, or to zero without a bias.
fn fill_bias(y: &mut [f32], bias: Option<&[f32]>, npix: usize) {
    match bias {
        Some(b) => {
            for (row, &v) in y.chunks_exact_mut(npix).zip(b) {
                row.fill(v);
            }
        }
        None => y.fill(0.0),
    }
}

/// One image of a convolution that is not pointwise: `x` is `[g.c, g.h, g.w]`, `y` is
/// `[c_out, g.oh * g.ow]`; `cols` is scratch.
fn forward_image(
    g: &Geometry,
    c_out: usize,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    cols: &mut Vec<f32>,
) {
    let (k, npix) = (g.k(), g.out_pixels());
    // The bias is the GEMM's initial C (beta = 1), so it costs no extra pass over Y.
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    for (r0, r1) in g.tiles() {
        let t = (r1 - r0) * g.ow;
        cols.resize(k * t, 0.0);
        im2col_rows(g, x, r0, r1, cols);
        let c = &mut y[r0 * g.ow..];
        if let Some(b) = bias {
            for (co, &v) in b.iter().enumerate() {
                c[co * npix..][..t].fill(v);
            }
        }
        sgemm(
            Trans::No,
            Trans::No,
            c_out,
            t,
            k,
            1.0,
            weight,
            k,
            cols,
            t,
            beta,
            c,
            npix,
        );
    }
}
