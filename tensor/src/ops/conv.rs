//! conv2d on [`Tensor`]s (NCHW images, `[c_out, c_in, kh, kw]` weights): forward and both
//! backward passes, over [`crate::kernels::conv`].
//!
//! ```
//! use tensor::{ops::conv::conv2d, Tensor};
//! let x = Tensor::ones(&[1, 2, 4, 4]);
//! let w = Tensor::ones(&[3, 2, 3, 3]);
//! let y = conv2d(&x, &w, None, 1, 1);
//! assert_eq!(y.shape(), &[1, 3, 4, 4]);
//! assert_eq!(y.data()[5], 18.0); // an interior pixel sees 2 channels x 9 taps
//! ```

use super::alloc;
use crate::kernels::conv::{self, Conv2dParams};
use crate::shape::numel;
use crate::Tensor;

pub(super) fn dims4(op: &str, what: &str, t: &Tensor) -> [usize; 4] {
    match t.shape() {
        &[a, b, c, d] => [a, b, c, d],
        s => panic!("{op}: {what} must have 4 dimensions, got shape {s:?}"),
    }
}

/// The geometry for an input of `input_shape` and a weight of `weight_shape`, checking that
/// their channel counts agree.
fn params_of(
    op: &str,
    input_shape: [usize; 4],
    weight_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Conv2dParams {
    let [batch, c_in, h, w] = input_shape;
    let [c_out, wc_in, kh, kw] = weight_shape;
    assert_eq!(
        c_in, wc_in,
        "{op}: input {input_shape:?} has {c_in} channels but weight {weight_shape:?} expects {wc_in}"
    );
    assert!(
        stride >= 1 && h + 2 * padding >= kh && w + 2 * padding >= kw,
        "{op}: weight {weight_shape:?} does not fit input {input_shape:?} with stride {stride}, \
         padding {padding}"
    );
    Conv2dParams {
        batch,
        c_in,
        c_out,
        h,
        w,
        kh,
        kw,
        stride,
        padding,
    }
}

/// The profiler's label of a convolution: `[16, 128, 16, 16] * [128, 128, 3, 3] s1 p1`, with
/// `up2x` after the input's shape when it is upsampled first.
fn label(
    input: &[usize],
    upsampled: bool,
    weight: &[usize],
    stride: usize,
    padding: usize,
) -> String {
    let (s, up) = (crate::profile::shape, if upsampled { " up2x" } else { "" });
    format!("{}{up} * {} s{stride} p{padding}", s(input), s(weight))
}

/// conv2d forward:
/// `Y[n, co, i, j] = bias[co] + sum_{ci, a, b} W[co, ci, a, b] * X[n, ci, i*s + a - p, j*s + b - p]`
/// with `input` `[N, C_in, H, W]`, `weight` `[C_out, C_in, kh, kw]`, `bias` `[C_out]`; returns
/// `[N, C_out, out_h, out_w]`. Panics, naming the op and the shapes, on a mismatch.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Tensor {
    conv2d_plus(input, weight, bias, stride, padding, ConvAddends::default())
}

/// What [`conv2d_plus`] adds to the convolution after its bias.
#[derive(Clone, Copy, Default)]
pub struct ConvAddends<'a> {
    /// `[N, C_out, 1, 1]` (or `[N, C_out]`): one value per image and output channel, such as
    /// a time-embedding projection.
    pub shift: Option<&'a Tensor>,
    /// The output's shape: a residual connection.
    pub residual: Option<&'a Tensor>,
}

/// [`conv2d`] followed by the additions of `addends`:
/// `Y = ((conv2d(X, W) + bias) + shift) + residual`, each addition rounded on its own, so the
/// result has the bits of [`conv2d`] followed by broadcast additions, without their passes
/// over memory where the convolution adds as it writes (the Winograd path). Panics, naming
/// the op and the shapes, on a mismatch.
pub fn conv2d_plus(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    addends: ConvAddends,
) -> Tensor {
    const OP: &str = "conv2d";
    let _prof = crate::profile::scope(OP, || {
        label(input.shape(), false, weight.shape(), stride, padding)
    });
    let p = params_of(
        OP,
        dims4(OP, "input", input),
        dims4(OP, "weight", weight),
        stride,
        padding,
    );
    check_bias(OP, &p, bias, weight);
    let out_shape = p.output_shape();
    if let Some(s) = addends.shift {
        let ok = s.shape() == [p.batch, p.c_out] || s.shape() == [p.batch, p.c_out, 1, 1];
        assert!(
            ok,
            "{OP}: shift shape {:?} is not [{}, {}, 1, 1] for output {out_shape:?}",
            s.shape(),
            p.batch,
            p.c_out
        );
    }
    if let Some(r) = addends.residual {
        assert_eq!(
            r.shape(),
            &out_shape,
            "{OP}: residual shape {:?} is not the output shape {out_shape:?}",
            r.shape()
        );
    }
    super::flops::add(p.flops() as u64);
    let plus = conv::Addends {
        shift: addends.shift.map(|s| s.data()),
        residual: addends.residual.map(|r| r.data()),
    };
    // SAFETY: conv2d_forward_uninit_plus writes every element.
    let out = unsafe {
        alloc::filled_by(numel(&out_shape), |y| {
            conv::conv2d_forward_uninit_plus(
                &p,
                input.data(),
                weight.data(),
                bias.map(|b| b.data()),
                plus,
                y,
            )
        })
    };
    Tensor::from_vec(out, &out_shape)
}

/// conv2d backward-data: the gradient with respect to the input,
/// `dX[n, ci, y, x] = sum_{co, a, b, i, j : i*s + a - p = y, j*s + b - p = x} dY[n, co, i, j] * W[co, ci, a, b]`.
///
/// `input_shape` is the forward input's `[N, C_in, H, W]` (needed because with stride 2
/// several input sizes give the same output size). Panics, naming the op and the shapes, if
/// `grad_output` is not the forward output's shape.
pub fn conv2d_backward_data(
    grad_output: &Tensor,
    weight: &Tensor,
    input_shape: &[usize],
    stride: usize,
    padding: usize,
) -> Tensor {
    data_gradient(grad_output, weight, input_shape, (stride, padding, false))
}

/// [`conv2d_backward_data`] and, with `upsampled`, [`conv2d_upsampled_backward_data`].
fn data_gradient(
    grad_output: &Tensor,
    weight: &Tensor,
    input_shape: &[usize],
    (stride, padding, upsampled): (usize, usize, bool),
) -> Tensor {
    const OP: &str = "conv2d_backward_data";
    let _prof = crate::profile::scope(OP, || {
        label(input_shape, upsampled, weight.shape(), stride, padding)
    });
    let input_shape: [usize; 4] = input_shape.try_into().unwrap_or_else(|_| {
        panic!("{OP}: input shape must have 4 dimensions, got {input_shape:?}")
    });
    let [n, c, h, w] = input_shape;
    let seen = if upsampled {
        [n, c, 2 * h, 2 * w]
    } else {
        input_shape
    };
    let p = params_of(OP, seen, dims4(OP, "weight", weight), stride, padding);
    check_grad_output(OP, &p, grad_output);
    let kernel = if upsampled {
        conv::conv2d_backward_data_pooled_uninit
    } else {
        conv::conv2d_backward_data_uninit
    };
    // SAFETY: both kernels write every element.
    let grad_input = unsafe {
        alloc::filled_by(numel(&input_shape), |dx| {
            kernel(&p, grad_output.data(), weight.data(), dx)
        })
    };
    Tensor::from_vec(grad_input, &input_shape)
}

/// conv2d backward-weight: `dW[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] * X[n, ci, i*s + a - p, j*s + b - p]`
/// and, when `with_bias`, `dbias[co] = sum_{n, i, j} dY[n, co, i, j]`.
///
/// `weight_shape` is `[C_out, C_in, kh, kw]`. Panics, naming the op and the shapes, if
/// `grad_output` is not the forward output's shape.
pub fn conv2d_backward_weight(
    input: &Tensor,
    grad_output: &Tensor,
    weight_shape: &[usize],
    stride: usize,
    padding: usize,
    with_bias: bool,
) -> (Tensor, Option<Tensor>) {
    let geometry = (stride, padding, false);
    weight_gradient(input, grad_output, weight_shape, geometry, with_bias)
}

/// [`conv2d_backward_weight`] and, with `upsampled`, [`conv2d_upsampled_backward_weight`].
fn weight_gradient(
    input: &Tensor,
    grad_output: &Tensor,
    weight_shape: &[usize],
    (stride, padding, upsampled): (usize, usize, bool),
    with_bias: bool,
) -> (Tensor, Option<Tensor>) {
    const OP: &str = "conv2d_backward_weight";
    let _prof = crate::profile::scope(OP, || {
        label(input.shape(), upsampled, weight_shape, stride, padding)
    });
    let weight_shape: [usize; 4] = weight_shape.try_into().unwrap_or_else(|_| {
        panic!("{OP}: weight shape must have 4 dimensions, got {weight_shape:?}")
    });
    let p = if upsampled {
        upsampled_params(OP, input, weight_shape, stride, padding)
    } else {
        params_of(OP, dims4(OP, "input", input), weight_shape, stride, padding)
    };
    check_grad_output(OP, &p, grad_output);
    let mut grad_weight = Tensor::zeros(&weight_shape);
    let mut grad_bias = with_bias.then(|| Tensor::zeros(&[p.c_out]));
    let kernel = if upsampled {
        conv::conv2d_backward_weight_upsampled
    } else {
        conv::conv2d_backward_weight
    };
    kernel(
        &p,
        input.data(),
        grad_output.data(),
        grad_weight.data_mut(),
        grad_bias.as_mut().map(|b| b.data_mut()),
    );
    (grad_weight, grad_bias)
}

/// The geometry of the convolution of the nearest-neighbour 2x upsampling of `input`
/// (`[N, C_in, H, W]`, so the convolution sees `2H x 2W` images).
fn upsampled_params(
    op: &str,
    input: &Tensor,
    weight_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Conv2dParams {
    let [n, c, h, w] = dims4(op, "input", input);
    params_of(op, [n, c, 2 * h, 2 * w], weight_shape, stride, padding)
}

/// [`conv2d`] of the nearest-neighbour 2x upsampling of `input` (`[N, C_in, H, W]`, so the
/// convolution sees `[N, C_in, 2H, 2W]` with `up[y][x] = input[y / 2][x / 2]`), as a UNet's
/// upsampling block does, with the bits of `conv2d(&input.upsample_nearest2x(), ..)`. Where
/// Winograd's algorithm applies (3x3, stride 1, padding 1, at least 16 channels) the kernel
/// reads `input` in place, so the upsampled tensor is never written out. Panics, naming the op
/// and the shapes, on a mismatch.
pub fn conv2d_upsampled(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Tensor {
    const OP: &str = "conv2d";
    let _prof = crate::profile::scope(OP, || {
        label(input.shape(), true, weight.shape(), stride, padding)
    });
    let p = upsampled_params(OP, input, dims4(OP, "weight", weight), stride, padding);
    check_bias(OP, &p, bias, weight);
    super::flops::add(p.flops() as u64);
    let out_shape = p.output_shape();
    // SAFETY: conv2d_forward_upsampled_uninit writes every element.
    let out = unsafe {
        alloc::filled_by(numel(&out_shape), |y| {
            conv::conv2d_forward_upsampled_uninit(
                &p,
                input.data(),
                weight.data(),
                bias.map(|b| b.data()),
                y,
            )
        })
    };
    Tensor::from_vec(out, &out_shape)
}

/// The input gradient of [`conv2d_upsampled`]: [`conv2d_backward_data`] on the upsampled
/// shape, summed over each 2x2 block (`sum_pool2x`, the adjoint of the upsampling), with the
/// bits of the two steps apart; where Winograd's algorithm applies, the full-size gradient is
/// never written out. `input_shape` is the small images' `[N, C_in, H, W]`. Panics, naming the
/// op and the shapes, on a mismatch.
pub fn conv2d_upsampled_backward_data(
    grad_output: &Tensor,
    weight: &Tensor,
    input_shape: &[usize],
    stride: usize,
    padding: usize,
) -> Tensor {
    data_gradient(grad_output, weight, input_shape, (stride, padding, true))
}

/// The weight (and, when `with_bias`, bias) gradient of [`conv2d_upsampled`]: that of
/// [`conv2d_backward_weight`] on the upsampled input, read in place where the forward pass
/// reads it in place. Its input gradient is [`conv2d_upsampled_backward_data`]. Panics, naming
/// the op and the shapes, on a mismatch.
pub fn conv2d_upsampled_backward_weight(
    input: &Tensor,
    grad_output: &Tensor,
    weight_shape: &[usize],
    stride: usize,
    padding: usize,
    with_bias: bool,
) -> (Tensor, Option<Tensor>) {
    let geometry = (stride, padding, true);
    weight_gradient(input, grad_output, weight_shape, geometry, with_bias)
}

pub(super) fn check_grad_output(op: &str, p: &Conv2dParams, grad_output: &Tensor) {
    assert_eq!(
        grad_output.shape(),
        &p.output_shape(),
        "{op}: grad_output shape {:?} is not the output shape {:?} of input {:?} and weight {:?}",
        grad_output.shape(),
        p.output_shape(),
        p.input_shape(),
        p.weight_shape()
    );
}

/// Panics, naming `op` and the shapes, unless `bias` (if any) is `[C_out]`.
pub(super) fn check_bias(op: &str, p: &Conv2dParams, bias: Option<&Tensor>, weight: &Tensor) {
    if let Some(b) = bias {
        assert_eq!(
            b.shape(),
            &[p.c_out],
            "{op}: bias shape {:?} does not match weight {:?}",
            b.shape(),
            weight.shape()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| ((i * 7919) % 23) as f32 * scale - 0.5)
            .collect();
        Tensor::from_vec(data, shape)
    }

    /// `<conv(x), dy> = <x, conv_backward_data(dy)> = <w, conv_backward_weight(x, dy)>`:
    /// the wrappers are adjoint to the forward op (the kernels are checked elementwise in
    /// `kernels::conv`).
    #[test]
    fn conv_ops_are_adjoint() {
        let x = seq(&[2, 3, 9, 8], 0.05);
        let w = seq(&[4, 3, 3, 3], 0.04);
        let y = conv2d(&x, &w, None, 2, 1);
        assert_eq!(y.shape(), &[2, 4, 5, 4]);
        let dy = seq(y.shape(), 0.03);
        let dot = |a: &Tensor, b: &Tensor| -> f64 {
            a.data()
                .iter()
                .zip(b.data())
                .map(|(&p, &q)| p as f64 * q as f64)
                .sum()
        };
        let dx = conv2d_backward_data(&dy, &w, x.shape(), 2, 1);
        let (dw, db) = conv2d_backward_weight(&x, &dy, w.shape(), 2, 1, true);
        let lhs = dot(&y, &dy);
        assert!((lhs - dot(&x, &dx)).abs() < 1e-3 * (1.0 + lhs.abs()));
        assert!((lhs - dot(&w, &dw)).abs() < 1e-3 * (1.0 + lhs.abs()));
        let sum: f64 = dy.data().iter().map(|&v| v as f64).sum::<f64>() / 4.0;
        let db = db.unwrap();
        assert_eq!(db.shape(), &[4]);
        let db_mean = db.data().iter().map(|&v| v as f64).sum::<f64>() / 4.0;
        assert!((sum - db_mean).abs() < 1e-4);
    }

    /// `conv2d_plus` has the bits of `conv2d` followed by the two additions, on the Winograd
    /// path (where the additions are fused), the pointwise path with a bias, the direct path,
    /// with one and two threads.
    #[test]
    fn conv_plus_is_conv_then_adds_bitwise() {
        let _guard = crate::ops::testutil::isa_lock();
        // (c_in, c_out, h, kernel, stride, padding)
        for (ci, co, h, k, s, p) in [
            (16, 24, 10, 3, 1, 1),
            (16, 16, 33, 3, 1, 1),
            (5, 6, 7, 1, 1, 0),
            (5, 6, 9, 3, 2, 1),
        ] {
            let x = seq(&[3, ci, h, h], 0.05);
            let w = seq(&[co, ci, k, k], 0.03);
            let b = seq(&[co], 0.1);
            let plain = conv2d(&x, &w, Some(&b), s, p);
            let shift = seq(&[3, co, 1, 1], 0.07);
            let residual = seq(plain.shape(), 0.02);
            let want = plain.add(&shift).add(&residual);
            let want_shift = plain.add(&shift);
            for threads in [1, 2] {
                let got = crate::ops::testutil::on_threads(threads, || {
                    let both = ConvAddends {
                        shift: Some(&shift),
                        residual: Some(&residual),
                    };
                    let only_shift = ConvAddends {
                        shift: Some(&shift),
                        residual: None,
                    };
                    (
                        conv2d_plus(&x, &w, Some(&b), s, p, both),
                        conv2d_plus(&x, &w, Some(&b), s, p, only_shift),
                    )
                });
                let same = |a: &Tensor, b: &Tensor| {
                    a.shape() == b.shape()
                        && a.data()
                            .iter()
                            .zip(b.data())
                            .all(|(x, y)| x.to_bits() == y.to_bits())
                };
                assert!(
                    same(&got.0, &want),
                    "{ci}->{co} {h}x{h} k{k} s{s}: shift and residual"
                );
                assert!(
                    same(&got.1, &want_shift),
                    "{ci}->{co} {h}x{h} k{k} s{s}: shift"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "conv2d: residual shape [1, 2, 4, 4] is not the output shape")]
    fn conv_plus_panics_on_a_residual_of_another_shape() {
        let addends = ConvAddends {
            shift: None,
            residual: Some(&Tensor::zeros(&[1, 2, 4, 4])),
        };
        conv2d_plus(
            &Tensor::zeros(&[1, 3, 5, 5]),
            &Tensor::zeros(&[2, 3, 3, 3]),
            None,
            1,
            1,
            addends,
        );
    }

    #[test]
    #[should_panic(expected = "conv2d: input [1, 3, 5, 5] has 3 channels")]
    fn conv_op_panics_on_channel_mismatch() {
        conv2d(
            &Tensor::zeros(&[1, 3, 5, 5]),
            &Tensor::zeros(&[2, 4, 3, 3]),
            None,
            1,
            1,
        );
    }
}
