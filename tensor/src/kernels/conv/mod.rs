//! conv2d on NCHW images: forward, backward-data and backward-weight.
//!
//! With input `X[n, ci, y, x]` (`H x W`), weight `Wt[co, ci, a, b]` (`kh x kw`), stride `s` and
//! symmetric zero padding `p`, the output is `oh x ow` with `oh = (H + 2p - kh) / s + 1`, and
//!
//! ```text
//! forward:          Y[n, co, i, j]  = bias[co] + sum_{ci, a, b} Wt[co, ci, a, b] * X[n, ci, i*s + a - p, j*s + b - p]
//! backward-data:    dX[n, ci, y, x] = sum_{co, a, b : y = i*s + a - p, x = j*s + b - p} dY[n, co, i, j] * Wt[co, ci, a, b]
//! backward-weight:  dWt[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] * X[n, ci, i*s + a - p, j*s + b - p]
//!                   dbias[co] = sum_{n, i, j} dY[n, co, i, j]
//! ```
//!
//! (out-of-range input positions read as zero). All three are GEMMs over the "column" matrix
//! `cols[(ci, a, b), (i, j)]` of one image:
//!
//! - with AVX-512 (`direct.rs`), the columns are packed straight into the micro-kernel's panel
//!   layout from a padded copy of the image (split into stride phases, so every copy is
//!   contiguous), by tiles of pixels that stay in L2, and an `8 x 32` micro-kernel
//!   (`avx512.rs`) consumes them; the bias is the accumulators' starting value. Backward-weight
//!   uses pixel-major columns from a channels-last copy (`hwc.rs`);
//! - otherwise, the column matrix is built one tile of output rows at a time (im2col) and
//!   handed to [`crate::kernels::gemm::sgemm`].
//!
//! 3x3, stride-1, padding-1 convolutions with at least 16 channels each way, on images of at
//! least 4x4, go through Winograd's minimal filtering F(4x4, 3x3) instead (`winograd/`), in
//! all three passes.
//!
//! Backward-data with stride 1 is a forward convolution of `dY` with the flipped,
//! channel-transposed kernel; with stride 2 it is `dcols = Wt^T * dY` then a scatter-add
//! (col2im). A 1x1, stride-1, unpadded convolution is a plain GEMM on the image
//! (`pointwise.rs`), which also takes its input as a list of channel parts (the operands of a
//! channel concatenation, never built) and gives its input gradient part by part.
//!
//! Threads: rayon over images (forward, backward-data) or over fixed-size chunks of images whose
//! partial weight gradients are added in chunk order (backward-weight), so results are bitwise
//! identical for any thread count.

use std::sync::atomic::{AtomicBool, Ordering};

mod avx512;
mod backward_data;
mod backward_weight;
mod direct;
mod forward;
mod hwc;
mod im2col;
mod params;
mod pointwise;
mod source;
mod winograd;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

/// Whether 3x3 convolutions may use Winograd's algorithm (see [`allow_winograd`]).
static WINOGRAD: AtomicBool = AtomicBool::new(true);

/// Allows (the default) or forbids Winograd's F(4x4, 3x3) for the convolutions it applies to,
/// process-wide, so that benchmarks can measure the direct kernels on the same shapes. The two
/// differ only by rounding. Returns the previous setting.
pub fn allow_winograd(allowed: bool) -> bool {
    WINOGRAD.swap(allowed, Ordering::Relaxed)
}

/// True unless [`allow_winograd`] forbade Winograd's algorithm.
pub fn winograd_allowed() -> bool {
    WINOGRAD.load(Ordering::Relaxed)
}

pub use backward_data::{
    conv2d_backward_data, conv2d_backward_data_pooled_uninit, conv2d_backward_data_uninit,
};
pub use backward_weight::{conv2d_backward_weight, conv2d_backward_weight_upsampled};
pub use forward::{
    conv2d_forward, conv2d_forward_uninit, conv2d_forward_uninit_plus,
    conv2d_forward_upsampled_uninit,
};
pub use pointwise::{
    conv2d_pointwise_parts_backward_data_uninit, conv2d_pointwise_parts_backward_weight,
    conv2d_pointwise_parts_forward_uninit,
};

/// What a forward convolution's output gets added after its bias, each as a rounding of its
/// own in this order (so the result has the bits of separate additions):
/// `Y[n, co, i, j] = ((conv + bias[co]) + shift[n, co]) + residual[n, co, i, j]`.
/// A time-embedding shift and a residual connection then cost no pass over memory of their
/// own where the convolution can add them as it writes (the Winograd path).
#[derive(Clone, Copy, Default)]
pub struct Addends<'a> {
    /// `[batch, c_out]`: one value per image and output channel.
    pub shift: Option<&'a [f32]>,
    /// `[batch, c_out, out_h, out_w]`: the output's shape.
    pub residual: Option<&'a [f32]>,
}
pub use params::Conv2dParams;
pub(crate) use source::sum_pool_plane;
