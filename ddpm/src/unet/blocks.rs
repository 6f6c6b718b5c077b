//! The UNet's levels: a down block (diffusers' `DownBlock2D` / `AttnDownBlock2D`), an up block
//! (`UpBlock2D` / `AttnUpBlock2D`) and the mid block (`UNetMidBlock2D`).

use autograd::nn::{Ctx, ParamStore};
use autograd::Var;
use tensor::rng::Rng;

use super::attention::AttentionBlock;
use super::resample::{Downsample, Upsample};
use super::resnet::{BlockSettings, ResnetBlock};

/// One down level: `layers` ResNet blocks (each followed by an attention block if the level
/// has attention) and, except at the last level, a [`Downsample`]:
///
/// ```text
/// for j: h = attn_j(resnet_j(h, emb));  skips.push(h)
/// h = downsample(h);                    skips.push(h)
/// ```
///
/// Every intermediate output is kept for the up path's skip connections.
pub struct DownBlock {
    /// `resnets.j`; the first maps `c_in -> c_out`, the rest `c_out -> c_out`.
    pub resnets: Vec<ResnetBlock>,
    /// `attentions.j` (empty without attention).
    pub attentions: Vec<AttentionBlock>,
    /// `downsamplers.0` (absent at the last level).
    pub downsample: Option<Downsample>,
}

/// Where a block's attention comes from: heads, and whether it has any.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec {
    /// Attention blocks after each ResNet.
    pub enabled: bool,
    /// Heads of each attention block.
    pub heads: usize,
}

impl DownBlock {
    /// Registers the level under `store` (diffusers: `down_blocks.i`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        layers: usize,
        settings: BlockSettings,
        attention: AttentionSpec,
        downsample_padding: Option<usize>,
    ) -> DownBlock {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let c = if j == 0 { c_in } else { c_out };
            let resnet_store = store.sub("resnets").sub(j);
            resnets.push(ResnetBlock::new(
                &resnet_store,
                rng,
                c,
                c_out,
                settings,
                1.0,
            ));
            if attention.enabled {
                let attn_store = store.sub("attentions").sub(j);
                attentions.push(AttentionBlock::new(
                    &attn_store,
                    rng,
                    c_out,
                    attention.heads,
                    settings.groups,
                    settings.eps,
                    1.0,
                ));
            }
        }
        let downsample = downsample_padding
            .map(|p| Downsample::new(&store.sub("downsamplers").sub(0), rng, c_out, p));
        DownBlock {
            resnets,
            attentions,
            downsample,
        }
    }

    /// Runs the level on `h`, appending each intermediate output to `skips`.
    pub fn forward(&self, ctx: &mut Ctx, h: &Var, temb_act: &Var, skips: &mut Vec<Var>) -> Var {
        let mut h = h.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(ctx, &h, temb_act);
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(ctx, &h);
            }
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsample {
            h = down.forward(ctx, &h);
            skips.push(h.clone());
        }
        h
    }
}

/// One up level: `layers + 1` ResNet blocks, each on the previous output concatenated (along
/// channels) with the most recent unused skip, each followed by an attention block if the
/// level has attention, then, except at the last level, an [`Upsample`] (the concatenation is
/// never formed: [`ResnetBlock::forward_parts`] reads `h` and the skip in place):
///
/// ```text
/// for j: h = attn_j(resnet_j(concat(h, skips.pop()), emb))
/// h = upsample(h)
/// ```
pub struct UpBlock {
    /// `resnets.j`, all with a `conv_shortcut` because the concatenation widens the input.
    pub resnets: Vec<ResnetBlock>,
    /// `attentions.j` (empty without attention).
    pub attentions: Vec<AttentionBlock>,
    /// `upsamplers.0` (absent at the last level).
    pub upsample: Option<Upsample>,
}

/// The channel counts an up level connects: its own output, the level above it in the down
/// path (whose skips it consumes last), and the input from the level below.
#[derive(Clone, Copy, Debug)]
pub struct UpChannels {
    /// Output channels of the level (`out_channels`).
    pub c_out: usize,
    /// Channels of the last skip it takes (diffusers' `in_channels`).
    pub c_skip_last: usize,
    /// Channels of the incoming feature map (`prev_output_channel`).
    pub c_prev: usize,
}

impl UpBlock {
    /// Registers the level under `store` (diffusers: `up_blocks.i`). ResNet `j` takes
    /// `(j == 0 ? c_prev : c_out) + (j == layers - 1 ? c_skip_last : c_out)` channels.
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        channels: UpChannels,
        layers: usize,
        settings: BlockSettings,
        attention: AttentionSpec,
        upsample: bool,
    ) -> UpBlock {
        let UpChannels {
            c_out,
            c_skip_last,
            c_prev,
        } = channels;
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let c_h = if j == 0 { c_prev } else { c_out };
            let c_skip = if j == layers - 1 { c_skip_last } else { c_out };
            let resnet_store = store.sub("resnets").sub(j);
            resnets.push(ResnetBlock::new(
                &resnet_store,
                rng,
                c_h + c_skip,
                c_out,
                settings,
                1.0,
            ));
            if attention.enabled {
                let attn_store = store.sub("attentions").sub(j);
                attentions.push(AttentionBlock::new(
                    &attn_store,
                    rng,
                    c_out,
                    attention.heads,
                    settings.groups,
                    settings.eps,
                    1.0,
                ));
            }
        }
        let upsample = upsample.then(|| Upsample::new(&store.sub("upsamplers").sub(0), rng, c_out));
        UpBlock {
            resnets,
            attentions,
            upsample,
        }
    }

    /// Runs the level on `h`, taking one skip from the end of `skips` per ResNet.
    pub fn forward(&self, ctx: &mut Ctx, h: &Var, temb_act: &Var, skips: &mut Vec<Var>) -> Var {
        let mut h = h.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("UpBlock: ran out of skip connections");
            h = if super::reads_in_place() {
                resnet.forward_parts(ctx, &[&h, &skip], temb_act)
            } else {
                resnet.forward(ctx, &Var::concat(&[&h, &skip], 1), temb_act)
            };
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(ctx, &h);
            }
        }
        match &self.upsample {
            Some(up) => up.forward(ctx, &h),
            None => h,
        }
    }
}

/// The bottleneck at the lowest resolution: `h = resnet_1(attn(resnet_0(h, emb)), emb)`, all
/// with `mid_block_scale_factor` as output scale factor (diffusers' `UNetMidBlock2D`; without
/// `add_attention` the attention is skipped).
pub struct MidBlock {
    /// `resnets.0` and `resnets.1`.
    pub resnets: [ResnetBlock; 2],
    /// `attentions.0`.
    pub attention: Option<AttentionBlock>,
}

impl MidBlock {
    /// Registers the block under `store` (diffusers: `mid_block`). `attn_groups` are the
    /// groups of the attention's GroupNorm.
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        channels: usize,
        settings: BlockSettings,
        attention: AttentionSpec,
        attn_groups: usize,
        scale_factor: f32,
    ) -> MidBlock {
        let resnets = store.sub("resnets");
        let first = ResnetBlock::new(
            &resnets.sub(0),
            rng,
            channels,
            channels,
            settings,
            scale_factor,
        );
        let attention = attention.enabled.then(|| {
            AttentionBlock::new(
                &store.sub("attentions").sub(0),
                rng,
                channels,
                attention.heads,
                attn_groups,
                settings.eps,
                scale_factor,
            )
        });
        let second = ResnetBlock::new(
            &resnets.sub(1),
            rng,
            channels,
            channels,
            settings,
            scale_factor,
        );
        MidBlock {
            resnets: [first, second],
            attention,
        }
    }

    /// Runs the block on `h`.
    pub fn forward(&self, ctx: &mut Ctx, h: &Var, temb_act: &Var) -> Var {
        let mut h = self.resnets[0].forward(ctx, h, temb_act);
        if let Some(attn) = &self.attention {
            h = attn.forward(ctx, &h);
        }
        self.resnets[1].forward(ctx, &h, temb_act)
    }
}
