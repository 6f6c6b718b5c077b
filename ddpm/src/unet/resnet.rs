//! The time-conditioned residual block (diffusers' `ResnetBlock2D` with
//! `time_embedding_norm = "default"`, DDPM's `resnet_block`).

use autograd::nn::{Conv2d, Ctx, Dropout, GroupNorm, Linear, Module, ParamStore};
use autograd::Var;
use tensor::rng::Rng;

/// A residual block from `c_in` to `c_out` channels conditioned on the time embedding:
///
/// ```text
/// h   = conv1(silu(norm1(x)))                                 3x3, c_in -> c_out
/// h   = h + time_emb_proj(silu(emb))[:, :, None, None]        one shift per channel
/// h   = conv2(dropout(silu(norm2(h))))                        3x3, c_out -> c_out
/// out = (shortcut(x) + h) / output_scale_factor
/// ```
///
/// `shortcut` is the identity when `c_in == c_out` and a 1x1 convolution `conv_shortcut`
/// otherwise. The caller passes `silu(emb)` once for every block (diffusers applies the SiLU
/// inside each block; the values are the same).
pub struct ResnetBlock {
    /// GroupNorm over the input.
    pub norm1: GroupNorm,
    /// First 3x3 convolution.
    pub conv1: Conv2d,
    /// Linear map of the activated time embedding to one shift per channel.
    pub time_emb_proj: Linear,
    /// GroupNorm before the second convolution.
    pub norm2: GroupNorm,
    /// Dropout before the second convolution.
    pub dropout: Dropout,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// 1x1 convolution on the skip path when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
    /// The sum is divided by this.
    pub output_scale_factor: f32,
}

/// What every block of one model shares: GroupNorm settings, time-embedding width, dropout.
#[derive(Clone, Copy, Debug)]
pub struct BlockSettings {
    /// Groups of every GroupNorm.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f32,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// Dropout probability.
    pub dropout: f32,
}

impl ResnetBlock {
    /// Registers the block's layers under `store` with diffusers' names.
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        settings: BlockSettings,
        output_scale_factor: f32,
    ) -> ResnetBlock {
        let (groups, eps) = (settings.groups, settings.eps);
        let norm1 = GroupNorm::new(&store.sub("norm1"), groups, c_in, eps);
        let conv1 = Conv2d::new(&store.sub("conv1"), rng, c_in, c_out, 3, 1, 1, true);
        let time_emb_proj = Linear::new(
            &store.sub("time_emb_proj"),
            rng,
            settings.temb_channels,
            c_out,
            true,
        );
        let norm2 = GroupNorm::new(&store.sub("norm2"), groups, c_out, eps);
        let conv2 = Conv2d::new(&store.sub("conv2"), rng, c_out, c_out, 3, 1, 1, true);
        let conv_shortcut = (c_in != c_out)
            .then(|| Conv2d::new(&store.sub("conv_shortcut"), rng, c_in, c_out, 1, 1, 0, true));
        ResnetBlock {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            dropout: Dropout {
                p: settings.dropout,
            },
            conv2,
            conv_shortcut,
            output_scale_factor,
        }
    }

    /// The block on `x` `[N, c_in, H, W]` given `temb_act = silu(emb)` `[N, temb_channels]`.
    pub fn forward(&self, ctx: &mut Ctx, x: &Var, temb_act: &Var) -> Var {
        self.forward_parts(ctx, &[x], temb_act)
    }

    /// The block on the concatenation of `parts` along the channel axis (`c_in` channels in
    /// all), without forming it: the first group norm and the 1x1 shortcut read the parts in
    /// place (the up path's skip connections).
    pub fn forward_parts(&self, ctx: &mut Ctx, parts: &[&Var], temb_act: &Var) -> Var {
        let h = self.norm1.forward_silu_parts(ctx, parts);
        // conv1(h) + time_emb_proj(temb) and skip + conv2(h) are each one op: the
        // convolution adds them as it writes its output (the same bits as separate adds).
        let shift = self.time_emb_proj.forward(ctx, temb_act);
        let (n, c) = (shift.shape()[0], shift.shape()[1]);
        let h = self
            .conv1
            .forward_add(ctx, &h, Some(&shift.reshape(&[n, c, 1, 1])), None);
        let h = self.norm2.forward_silu(ctx, &h);
        let h = self.dropout.forward(ctx, &h);
        let skip = match (&self.conv_shortcut, parts) {
            (Some(conv), _) => conv.forward_parts(ctx, parts),
            (None, [x]) => (*x).clone(),
            (None, _) => Var::concat(parts, 1),
        };
        let out = self.conv2.forward_add(ctx, &h, None, Some(&skip));
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out.mul_scalar(1.0 / self.output_scale_factor)
        }
    }
}
