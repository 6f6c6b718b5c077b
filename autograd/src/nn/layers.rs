//! Convolution, normalisation, activation and dropout layers.

use tensor::rng::Rng;
use tensor::Tensor;

use super::init::uniform_fan_in;
use super::{Ctx, Module, ParamStore};
use crate::ops::conv::conv2d_add;
use crate::ops::norm::group_norm;
use crate::{Param, Var};

/// A 2-D convolution layer with weight `[C_out, C_in, k, k]` and optional bias `[C_out]`
/// (PyTorch's `nn.Conv2d` with square kernel, stride and padding).
pub struct Conv2d {
    /// `[C_out, C_in, k, k]`.
    pub weight: Param,
    /// `[C_out]`.
    pub bias: Option<Param>,
    /// Step between windows.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

impl Conv2d {
    /// Registers `weight` (and `bias`) under `store`, initialised as PyTorch does
    /// (fan_in = C_in * k * k).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Conv2d {
        let fan_in = c_in * kernel * kernel;
        let weight = store.param(
            "weight",
            uniform_fan_in(rng, &[c_out, c_in, kernel, kernel], fan_in),
        );
        let bias = bias.then(|| store.param("bias", uniform_fan_in(rng, &[c_out], fan_in)));
        Conv2d {
            weight,
            bias,
            stride,
            padding,
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        self.forward_add(ctx, x, None, None)
    }
}

impl Conv2d {
    /// `conv(x) + shift + residual` in one op ([`conv2d_add`]): a `shift` `[N, C_out, 1, 1]`
    /// (such as a time-embedding projection) and a `residual` of the output's shape, with the
    /// bits of [`Module::forward`] followed by the additions.
    pub fn forward_add(
        &self,
        ctx: &mut Ctx,
        x: &Var,
        shift: Option<&Var>,
        residual: Option<&Var>,
    ) -> Var {
        let w = ctx.param(&self.weight);
        let b = self.bias.as_ref().map(|b| ctx.param(b));
        conv2d_add(
            x,
            &w,
            b.as_ref(),
            self.stride,
            self.padding,
            shift,
            residual,
        )
    }

    /// The convolution of the nearest-neighbour 2x upsampling of `x` as one op
    /// ([`crate::ops::conv::conv2d_upsampled`]): the value of
    /// `self.forward(ctx, &x.upsample_nearest2x())` without the upsampled tensor.
    pub fn forward_upsampled(&self, ctx: &mut Ctx, x: &Var) -> Var {
        let w = ctx.param(&self.weight);
        let b = self.bias.as_ref().map(|b| ctx.param(b));
        let (stride, padding) = (self.stride, self.padding);
        crate::ops::conv::conv2d_upsampled(x, &w, b.as_ref(), stride, padding)
    }

    /// The convolution of the concatenation of `parts` along the channel axis: for a
    /// pointwise layer (1x1, stride 1, unpadded) without forming it
    /// ([`crate::ops::conv::conv2d_parts`]); one part, or any other layer, through
    /// [`Module::forward`] (of the concatenation).
    pub fn forward_parts(&self, ctx: &mut Ctx, parts: &[&Var]) -> Var {
        let pointwise = self.weight.shape()[2..] == [1, 1] && self.stride == 1 && self.padding == 0;
        if let [x] = parts {
            return self.forward(ctx, x);
        }
        if !pointwise {
            return self.forward(ctx, &Var::concat(parts, 1));
        }
        let w = ctx.param(&self.weight);
        let b = self.bias.as_ref().map(|b| ctx.param(b));
        crate::ops::conv::conv2d_parts(parts, &w, b.as_ref())
    }
}

/// Group normalisation with per-channel affine parameters `weight` (gamma, init 1) and `bias`
/// (beta, init 0), as PyTorch's `nn.GroupNorm`.
pub struct GroupNorm {
    /// Number of channel groups.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f32,
    /// gamma, `[C]`.
    pub weight: Param,
    /// beta, `[C]`.
    pub bias: Param,
}

impl GroupNorm {
    /// Registers `weight` and `bias` of `channels` elements under `store`. Panics unless
    /// `groups` divides `channels`.
    pub fn new(store: &ParamStore, groups: usize, channels: usize, eps: f32) -> GroupNorm {
        assert!(
            groups > 0 && channels.is_multiple_of(groups),
            "GroupNorm: {groups} groups do not divide {channels} channels"
        );
        let weight = store.param("weight", Tensor::ones(&[channels]));
        let bias = store.param("bias", Tensor::zeros(&[channels]));
        GroupNorm {
            groups,
            eps,
            weight,
            bias,
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        let (w, b) = (ctx.param(&self.weight), ctx.param(&self.bias));
        group_norm(x, self.groups, Some(&w), Some(&b), self.eps)
    }
}

impl GroupNorm {
    /// `silu(self.forward(x))` as one fused op ([`crate::ops::norm::group_norm_silu`]).
    pub fn forward_silu(&self, ctx: &mut Ctx, x: &Var) -> Var {
        let (w, b) = (ctx.param(&self.weight), ctx.param(&self.bias));
        crate::ops::norm::group_norm_silu(x, self.groups, Some(&w), Some(&b), self.eps)
    }

    /// [`GroupNorm::forward_silu`] of the concatenation of `parts` along the channel axis,
    /// without forming it ([`crate::ops::norm::group_norm_silu_parts`]).
    pub fn forward_silu_parts(&self, ctx: &mut Ctx, parts: &[&Var]) -> Var {
        let (w, b) = (ctx.param(&self.weight), ctx.param(&self.bias));
        crate::ops::norm::group_norm_silu_parts(parts, self.groups, Some(&w), Some(&b), self.eps)
    }
}

/// Layer normalisation over the last axis with affine parameters (PyTorch's `nn.LayerNorm`
/// for one normalised dimension): `y = (x - mean) / sqrt(var + eps) * weight + bias`, the
/// biased variance over the last axis.
pub struct LayerNorm {
    /// Added to the variance.
    pub eps: f32,
    /// gamma, `[D]`.
    pub weight: Param,
    /// beta, `[D]`.
    pub bias: Param,
}

impl LayerNorm {
    /// Registers `weight` (ones) and `bias` (zeros) of `dim` elements.
    pub fn new(store: &ParamStore, dim: usize, eps: f32) -> LayerNorm {
        let weight = store.param("weight", Tensor::ones(&[dim]));
        let bias = store.param("bias", Tensor::zeros(&[dim]));
        LayerNorm { eps, weight, bias }
    }
}

/// Layer normalisation of `x` over its last axis, composed from differentiable ops so its
/// gradient follows from theirs.
pub fn layer_norm(x: &Var, weight: Option<&Var>, bias: Option<&Var>, eps: f32) -> Var {
    let centred = x.sub(&x.mean(&[-1], true));
    let rstd = centred.square().mean(&[-1], true).add_scalar(eps).rsqrt();
    let mut y = centred.mul(&rstd);
    if let Some(w) = weight {
        y = y.mul(w);
    }
    if let Some(b) = bias {
        y = y.add(b);
    }
    y
}

impl Module for LayerNorm {
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        let (w, b) = (ctx.param(&self.weight), ctx.param(&self.bias));
        layer_norm(x, Some(&w), Some(&b), self.eps)
    }
}

/// SiLU activation `x * sigmoid(x)`.
pub struct Silu;

impl Module for Silu {
    fn forward(&self, _ctx: &mut Ctx, x: &Var) -> Var {
        x.silu()
    }
}

/// ReLU activation `max(x, 0)`.
pub struct Relu;

impl Module for Relu {
    fn forward(&self, _ctx: &mut Ctx, x: &Var) -> Var {
        x.relu()
    }
}

/// Dropout with probability `p` in training mode; the identity in evaluation mode.
pub struct Dropout {
    /// The probability of zeroing an element.
    pub p: f32,
}

impl Module for Dropout {
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        if ctx.training {
            x.dropout(self.p, &mut ctx.rng)
        } else {
            x.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    /// Smooth (the variance of these inputs is about 1): default tolerances.
    #[test]
    fn layer_norm_passes_gradcheck_and_normalises() {
        let x = randn(&[3, 8], 1);
        let (w, b) = (randn(&[8], 2), randn(&[8], 3));
        gradcheck(
            |v| layer_norm(&v[0], Some(&v[1]), Some(&v[2]), 1e-5),
            &[x.clone(), w, b],
            Tolerance::default(),
        )
        .unwrap();
        let y = layer_norm(&Var::constant(x), None, None, 0.0);
        let mean = y.value().mean(&[-1], false);
        let var = y.value().var(&[-1], 0, false);
        assert!(mean.data().iter().all(|m| m.abs() < 1e-6));
        assert!(var.data().iter().all(|v| (v - 1.0).abs() < 1e-5));
    }

    #[test]
    fn conv_init_follows_pytorch_bounds_and_names() {
        let store = ParamStore::new();
        let conv = Conv2d::new(
            &store.sub("conv_in"),
            &mut Rng::new(0, 0),
            4,
            8,
            3,
            1,
            1,
            true,
        );
        let bound = 1.0 / (4.0f32 * 9.0).sqrt();
        let w = conv.weight.value();
        assert!(w.data().iter().all(|v| v.abs() <= bound));
        assert!(w.max_all().item() > 0.9 * bound, "the range is used");
        let names: Vec<String> = store.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["conv_in.weight", "conv_in.bias"]);
    }
}
