//! The spatial self-attention block (diffusers' `Attention` as the UNet2D blocks build it:
//! group norm, residual connection, output rescale; DDPM's `attn_block`).

use autograd::nn::{Ctx, GroupNorm, Module, ParamStore, SelfAttention};
use autograd::Var;
use tensor::rng::Rng;

/// Self-attention over the `H W` pixels of a feature map, each pixel a token of `C` channels:
///
/// ```text
/// h   = group_norm(x)                     reshaped [N, C, H W] -> [N, H W, C]
/// q, k, v = h W_q^T + b_q, h W_k^T + b_k, h W_v^T + b_v
/// o   = concat over heads of softmax(q_i k_i^T / sqrt(d)) v_i      d = C / heads
/// out = (x + (o W_o^T + b_o) reshaped back to [N, C, H, W]) / rescale_output_factor
/// ```
///
/// Computed without turning the image to `[N, H W, C]`: the projections are 1x1 convolutions
/// and the heads are read channels first (`SelfAttention::forward_pixels`), the same values up
/// to rounding.
///
/// Names follow diffusers: `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0` (all with bias).
/// With one head (`attention_head_dim: None`) the scale is DDPM's `C^-1/2`.
pub struct AttentionBlock {
    /// GroupNorm over the input.
    pub group_norm: GroupNorm,
    /// The projections and heads.
    pub attention: SelfAttention,
    /// The residual sum is divided by this.
    pub rescale_output_factor: f32,
}

impl AttentionBlock {
    /// Registers the block under `store` for `channels` channels in `heads` heads.
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        channels: usize,
        heads: usize,
        groups: usize,
        eps: f32,
        rescale_output_factor: f32,
    ) -> AttentionBlock {
        AttentionBlock {
            group_norm: GroupNorm::new(&store.sub("group_norm"), groups, channels, eps),
            attention: SelfAttention::new(store, rng, channels, heads, true),
            rescale_output_factor,
        }
    }

    /// The block on `x` `[N, C, H, W]`.
    pub fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        assert!(
            x.shape().len() == 4,
            "AttentionBlock: expected [N, C, H, W], got {:?}",
            x.shape()
        );
        // The pixels are the tokens; the projections run on the image as 1x1 convolutions.
        let normed = self.group_norm.forward(ctx, x);
        let o = self.attention.forward_pixels(ctx, &normed);
        let out = x.add(&o);
        if self.rescale_output_factor == 1.0 {
            out
        } else {
            out.mul_scalar(1.0 / self.rescale_output_factor)
        }
    }
}
