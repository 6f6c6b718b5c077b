//! Changing resolution between levels: a stride-2 convolution down (diffusers'
//! `Downsample2D` with `use_conv`) and nearest 2x then a convolution up (`Upsample2D`).

use autograd::nn::{Conv2d, Ctx, Module, ParamStore};
use autograd::Var;
use tensor::rng::Rng;
use tensor::Tensor;

/// Halves the resolution with a 3x3 stride-2 convolution `conv` (C -> C).
///
/// `padding = 1` pads every side by one (`[H, W] -> [ceil(H/2), ceil(W/2)]`). `padding = 0`
/// pads only the right and bottom by one pixel of zeros and then convolves without padding:
/// for even sizes the output size is the same, but the windows start at pixel 0 instead of
/// -1. This is TensorFlow's "SAME" padding, which the original DDPM used, and what diffusers
/// does for `downsample_padding = 0`.
pub struct Downsample {
    /// The stride-2 convolution, `downsamplers.0.conv`.
    pub conv: Conv2d,
    /// 1 (symmetric) or 0 (right and bottom only).
    pub padding: usize,
}

impl Downsample {
    /// Registers `conv` under `store` (diffusers: `downsamplers.0`).
    pub fn new(store: &ParamStore, rng: &mut Rng, channels: usize, padding: usize) -> Downsample {
        let conv = Conv2d::new(
            &store.sub("conv"),
            rng,
            channels,
            channels,
            3,
            2,
            padding,
            true,
        );
        Downsample { conv, padding }
    }

    /// `[N, C, H, W] -> [N, C, H/2, W/2]`.
    pub fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        if self.padding == 0 {
            self.conv.forward(ctx, &pad_right_bottom(x))
        } else {
            self.conv.forward(ctx, x)
        }
    }
}

/// `x` `[N, C, H, W]` with one column of zeros on the right and one row at the bottom:
/// `[N, C, H + 1, W + 1]` (two concatenations, so the gradient is a slice of `g`).
pub fn pad_right_bottom(x: &Var) -> Var {
    let &[n, c, h, w] = x.shape() else {
        panic!(
            "pad_right_bottom: expected [N, C, H, W], got {:?}",
            x.shape()
        );
    };
    let column = Var::constant(Tensor::zeros(&[n, c, h, 1]));
    let x = Var::concat(&[x, &column], 3);
    let row = Var::constant(Tensor::zeros(&[n, c, 1, w + 1]));
    Var::concat(&[&x, &row], 2)
}

/// Doubles the resolution: nearest-neighbour 2x, then a 3x3 convolution `conv` (C -> C,
/// padding 1), as one op that reads the small images in place
/// ([`autograd::nn::Conv2d::forward_upsampled`]).
pub struct Upsample {
    /// The convolution after the upsampling, `upsamplers.0.conv`.
    pub conv: Conv2d,
}

impl Upsample {
    /// Registers `conv` under `store` (diffusers: `upsamplers.0`).
    pub fn new(store: &ParamStore, rng: &mut Rng, channels: usize) -> Upsample {
        Upsample {
            conv: Conv2d::new(&store.sub("conv"), rng, channels, channels, 3, 1, 1, true),
        }
    }

    /// `[N, C, H, W] -> [N, C, 2H, 2W]`.
    pub fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        if super::reads_in_place() {
            self.conv.forward_upsampled(ctx, x)
        } else {
            self.conv.forward(ctx, &x.upsample_nearest2x())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_zero_windows_start_at_the_first_pixel() {
        let x = Var::constant(Tensor::from_vec(
            (1..=16).map(|v| v as f32).collect(),
            &[1, 1, 4, 4],
        ));
        let padded = pad_right_bottom(&x);
        assert_eq!(padded.shape(), &[1, 1, 5, 5]);
        assert_eq!(&padded.value().data()[..5], &[1.0, 2.0, 3.0, 4.0, 0.0]);
        assert!(padded.value().data()[20..].iter().all(|&v| v == 0.0));

        // A kernel picking the top-left tap of each window returns pixels (0,0),(0,2),(2,0),(2,2).
        let store = ParamStore::new();
        let down = Downsample::new(&store, &mut Rng::new(0, 0), 1, 0);
        let mut k = vec![0.0; 9];
        k[0] = 1.0;
        down.conv
            .weight
            .set_value(Tensor::from_vec(k, &[1, 1, 3, 3]));
        down.conv
            .bias
            .as_ref()
            .unwrap()
            .set_value(Tensor::zeros(&[1]));
        let y = down.forward(&mut Ctx::eval(), &x);
        assert_eq!(y.value().data(), &[1.0, 3.0, 9.0, 11.0]);
    }
}
