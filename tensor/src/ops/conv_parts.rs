//! Pointwise (1x1) convolutions of channel parts on [`Tensor`]s: the input is the
//! concatenation of the parts along the channel axis, read in place (the UNet's skip
//! connections), over [`crate::kernels::conv`]'s pointwise kernels.

use super::alloc;
use super::conv::{check_bias, check_grad_output, dims4};
use crate::kernels::conv::{self, Conv2dParams};
use crate::shape::numel;
use crate::Tensor;

/// The label of an input given as channel parts, for the profiler: `[16, 128+64, 16, 16]` for
/// parts of 128 and 64 channels of `like`'s batch and image size (`like` is `[N, _, H, W]`,
/// such as a part or the output gradient).
pub fn parts_shape_label(like: &[usize], part_channels: &[usize]) -> String {
    let channels: Vec<String> = part_channels.iter().map(|c| c.to_string()).collect();
    match like {
        &[n, _, h, w] => format!("[{n}, {}, {h}, {w}]", channels.join("+")),
        _ => format!("{like:?} in parts {part_channels:?}"),
    }
}

/// The geometry of a pointwise convolution of the concatenation along the channels of parts
/// of `part_shapes` (each `[N, C_i, H, W]`) with a weight of `weight_shape`
/// (`[C_out, sum C_i, 1, 1]`), and the parts' channel counts. Panics, naming `op` and the
/// shapes, unless there is at least one part, the parts agree in N, H and W, the weight is
/// 1x1 and its input channels are the parts' sum.
fn parts_params(
    op: &str,
    part_shapes: &[&[usize]],
    weight_shape: &[usize],
) -> (Conv2dParams, Vec<usize>) {
    let dims = |what: &str, s: &[usize]| -> [usize; 4] {
        s.try_into()
            .unwrap_or_else(|_| panic!("{op}: {what} must have 4 dimensions, got shape {s:?}"))
    };
    assert!(
        !part_shapes.is_empty(),
        "{op}: no input parts given (weight {weight_shape:?})"
    );
    let [c_out, wc_in, kh, kw] = dims("weight", weight_shape);
    let [batch, _, h, w] = dims("input part", part_shapes[0]);
    let mut channels = Vec::with_capacity(part_shapes.len());
    for s in part_shapes {
        let [n, c, ph, pw] = dims("input part", s);
        assert!(
            (n, ph, pw) == (batch, h, w),
            "{op}: input parts {part_shapes:?} disagree in batch or image size"
        );
        channels.push(c);
    }
    let label = || parts_shape_label(part_shapes[0], &channels);
    assert!(
        kh == 1 && kw == 1,
        "{op}: the parts form needs a 1x1 weight, got {weight_shape:?} for input {}",
        label()
    );
    let c_in: usize = channels.iter().sum();
    assert_eq!(
        c_in,
        wc_in,
        "{op}: input {} has {c_in} channels but weight {weight_shape:?} expects {wc_in}",
        label()
    );
    let p = Conv2dParams {
        batch,
        c_in,
        c_out,
        h,
        w,
        kh: 1,
        kw: 1,
        stride: 1,
        padding: 0,
    };
    (p, channels)
}

/// [`conv2d`](super::conv::conv2d) (1x1, stride 1, no padding) of the concatenation of `parts` along the channels,
/// without building it: with part `i` (`[N, C_i, H, W]`) holding channels
/// `off_i..off_i + C_i`, per image `Y[n] = bias + sum_i W[:, off_i..off_i + C_i] X_i[n]`, one
/// GEMM per part. `weight` is `[C_out, sum C_i, 1, 1]`, `bias` `[C_out]`; returns
/// `[N, C_out, H, W]`. One part gives exactly the bits of [`conv2d`](super::conv::conv2d). Panics, naming the op and
/// the shapes, if there is no part, the parts disagree in N, H or W, the weight is not 1x1 or
/// its input channels are not the parts' sum.
///
/// ```
/// use tensor::{ops::conv::conv2d, ops::conv_parts::conv2d_pointwise_parts, Tensor};
/// let (h, skip) = (Tensor::ones(&[1, 2, 3, 3]), Tensor::full(&[1, 1, 3, 3], 2.0));
/// let w = Tensor::ones(&[4, 3, 1, 1]);
/// let y = conv2d_pointwise_parts(&[&h, &skip], &w, None);
/// let x = Tensor::concat(&[&h, &skip], 1);
/// assert_eq!(y.data(), conv2d(&x, &w, None, 1, 0).data());
/// assert_eq!(y.data()[0], 4.0); // 1 + 1 + 2
/// ```
pub fn conv2d_pointwise_parts(parts: &[&Tensor], weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    const OP: &str = "conv2d";
    let shapes: Vec<&[usize]> = parts.iter().map(|t| t.shape()).collect();
    let (p, channels) = parts_params(OP, &shapes, weight.shape());
    let _prof = crate::profile::scope(OP, || {
        let s = crate::profile::shape;
        format!(
            "{} * {} s1 p0",
            parts_shape_label(shapes[0], &channels),
            s(weight.shape())
        )
    });
    check_bias(OP, &p, bias, weight);
    super::flops::add(p.flops() as u64);
    let data: Vec<&[f32]> = parts.iter().map(|t| t.data()).collect();
    let out_shape = p.output_shape();
    // SAFETY: conv2d_pointwise_parts_forward_uninit writes every element.
    let out = unsafe {
        alloc::filled_by(numel(&out_shape), |y| {
            conv::conv2d_pointwise_parts_forward_uninit(
                &p,
                &data,
                &channels,
                weight.data(),
                bias.map(|b| b.data()),
                y,
            )
        })
    };
    Tensor::from_vec(out, &out_shape)
}

/// The input gradient of [`conv2d_pointwise_parts`], one tensor per part:
/// `dX_i[n] = W[:, off_i..off_i + C_i]^T dY[n]` (`[N, C_i, H, W]`, `C_i = part_channels[i]`),
/// with `grad_output` `[N, C_out, H, W]` and `weight` `[C_out, sum C_i, 1, 1]`. Each element
/// has the bits of [`conv2d_backward_data`](super::conv::conv2d_backward_data) of the concatenated input. Panics, naming the op and
/// the shapes, on a mismatch.
pub fn conv2d_pointwise_parts_backward_data(
    grad_output: &Tensor,
    weight: &Tensor,
    part_channels: &[usize],
) -> Vec<Tensor> {
    const OP: &str = "conv2d_backward_data";
    let [n, _, h, w] = dims4(OP, "grad_output", grad_output);
    let shapes: Vec<[usize; 4]> = part_channels.iter().map(|&c| [n, c, h, w]).collect();
    let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
    let (p, channels) = parts_params(OP, &shape_refs, weight.shape());
    let _prof = crate::profile::scope(OP, || {
        let s = crate::profile::shape;
        format!(
            "{} * {} s1 p0",
            parts_shape_label(&shapes[0], &channels),
            s(weight.shape())
        )
    });
    check_grad_output(OP, &p, grad_output);
    let mut bufs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| alloc::with_capacity(numel(s)))
        .collect();
    let mut views: Vec<_> = bufs
        .iter_mut()
        .zip(&shapes)
        .map(|(b, s)| &mut b.spare_capacity_mut()[..numel(s)])
        .collect();
    conv::conv2d_pointwise_parts_backward_data_uninit(
        &p,
        grad_output.data(),
        weight.data(),
        &channels,
        &mut views,
    );
    bufs.into_iter()
        .zip(&shapes)
        .map(|(mut b, s)| {
            // SAFETY: the kernel wrote every element of every part (numel(s) of them).
            unsafe { b.set_len(numel(s)) };
            Tensor::from_vec(b, s)
        })
        .collect()
}

/// The weight gradient of [`conv2d_pointwise_parts`]:
/// `dW[:, off_i..off_i + C_i] = sum_n dY[n] X_i[n]^T` and, when `want_bias`,
/// `dbias[co] = sum_{n, pixels} dY[n, co]`, with `weight_shape` `[C_out, sum C_i, 1, 1]`. One
/// part gives exactly the bits of [`conv2d_backward_weight`](super::conv::conv2d_backward_weight). Panics, naming the op and the
/// shapes, on a mismatch.
pub fn conv2d_pointwise_parts_backward_weight(
    parts: &[&Tensor],
    grad_output: &Tensor,
    weight_shape: &[usize],
    want_bias: bool,
) -> (Tensor, Option<Tensor>) {
    const OP: &str = "conv2d_backward_weight";
    let shapes: Vec<&[usize]> = parts.iter().map(|t| t.shape()).collect();
    let (p, channels) = parts_params(OP, &shapes, weight_shape);
    let _prof = crate::profile::scope(OP, || {
        let s = crate::profile::shape;
        format!(
            "{} * {} s1 p0",
            parts_shape_label(shapes[0], &channels),
            s(weight_shape)
        )
    });
    check_grad_output(OP, &p, grad_output);
    let data: Vec<&[f32]> = parts.iter().map(|t| t.data()).collect();
    let mut grad_weight = Tensor::zeros(weight_shape);
    let mut grad_bias = want_bias.then(|| Tensor::zeros(&[p.c_out]));
    conv::conv2d_pointwise_parts_backward_weight(
        &p,
        &data,
        &channels,
        grad_output.data(),
        grad_weight.data_mut(),
        grad_bias.as_mut().map(|b| b.data_mut()),
    );
    (grad_weight, grad_bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "conv2d: no input parts given (weight [2, 3, 1, 1])")]
    fn conv_parts_panics_without_parts() {
        conv2d_pointwise_parts(&[], &Tensor::zeros(&[2, 3, 1, 1]), None);
    }

    #[test]
    #[should_panic(
        expected = "conv2d: the parts form needs a 1x1 weight, got [2, 3, 3, 3] \
                               for input [1, 2+1, 5, 5]"
    )]
    fn conv_parts_panics_on_a_3x3_weight() {
        let (a, b) = (Tensor::zeros(&[1, 2, 5, 5]), Tensor::zeros(&[1, 1, 5, 5]));
        conv2d_pointwise_parts(&[&a, &b], &Tensor::zeros(&[2, 3, 3, 3]), None);
    }

    #[test]
    #[should_panic(
        expected = "conv2d_backward_weight: input parts [[1, 2, 5, 5], [1, 1, 5, 4]] \
                               disagree in batch or image size"
    )]
    fn conv_parts_panics_on_parts_of_other_sizes() {
        let (a, b) = (Tensor::zeros(&[1, 2, 5, 5]), Tensor::zeros(&[1, 1, 5, 4]));
        let dy = Tensor::zeros(&[1, 2, 5, 5]);
        conv2d_pointwise_parts_backward_weight(&[&a, &b], &dy, &[2, 3, 1, 1], false);
    }

    #[test]
    #[should_panic(
        expected = "conv2d_backward_data: input [1, 2+2, 5, 5] has 4 channels but \
                               weight [2, 3, 1, 1] expects 3"
    )]
    fn conv_parts_panics_on_channel_mismatch() {
        let dy = Tensor::zeros(&[1, 2, 5, 5]);
        conv2d_pointwise_parts_backward_data(&dy, &Tensor::zeros(&[2, 3, 1, 1]), &[2, 2]);
    }

    #[test]
    #[should_panic(
        expected = "conv2d_backward_data: grad_output shape [1, 3, 5, 5] is not the \
                               output shape [1, 2, 5, 5]"
    )]
    fn conv_parts_panics_on_a_grad_output_of_another_shape() {
        let dy = Tensor::zeros(&[1, 3, 5, 5]);
        conv2d_pointwise_parts_backward_data(&dy, &Tensor::zeros(&[2, 3, 1, 1]), &[2, 1]);
    }
}
