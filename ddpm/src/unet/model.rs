//! The whole network (diffusers' `UNet2DModel`): the time embedding, the input convolution,
//! the down path, the mid block, the up path with skip connections, and the output head.

use std::path::Path;

use autograd::nn::{Conv2d, Ctx, GroupNorm, Module, ParamStore};
use autograd::Var;
use tensor::rng::Rng;
use tensor::{Error, Result};

use super::blocks::{AttentionSpec, DownBlock, MidBlock, UpBlock, UpChannels};
use super::config::UNetConfig;
use super::embedding::TimeEmbedding;
use super::resnet::BlockSettings;

/// The DDPM UNet `eps_theta(x_t, t)`. With `C_i = block_out_channels[i]` and `L` levels:
///
/// ```text
/// emb   = time_embedding(e(t))                        [N, 4 C_0]
/// h     = conv_in(x);  skips = [h]                    3x3, in_channels -> C_0
/// h     = down_blocks.i(h, emb, skips)  for i < L     level i ends at C_i, halves H and W
///                                                       except at the last level
/// h     = mid_block(h, emb)
/// h     = up_blocks.i(h, emb, skips)    for i < L     level i ends at C_{L-1-i}, doubles H
///                                                       and W except at the last level
/// out   = conv_out(silu(conv_norm_out(h)))            3x3, C_0 -> out_channels
/// ```
///
/// Up level `i` has `layers_per_block + 1` ResNets, so it consumes exactly the skips down
/// level `L-1-i` pushed (its ResNets and downsampler), the last one being the previous
/// level's; every skip is used once. Parameter names and shapes are diffusers' for the same
/// config, so a diffusers checkpoint loads into the [`ParamStore`] the model was built with, as is.
pub struct UNet {
    /// The architecture.
    pub config: UNetConfig,
    /// `time_embedding`.
    pub time_embedding: TimeEmbedding,
    /// `conv_in`.
    pub conv_in: Conv2d,
    /// `down_blocks.i`.
    pub down_blocks: Vec<DownBlock>,
    /// `mid_block`.
    pub mid_block: MidBlock,
    /// `up_blocks.i`.
    pub up_blocks: Vec<UpBlock>,
    /// `conv_norm_out`.
    pub conv_norm_out: GroupNorm,
    /// `conv_out`.
    pub conv_out: Conv2d,
}

impl UNet {
    /// Builds the network, registering every parameter in `store` under diffusers' name and
    /// initialising it as PyTorch's layers do by default, drawing from `rng`. Panics if the
    /// config does not validate ([`UNetConfig::validate`]).
    pub fn new(config: UNetConfig, store: &ParamStore, rng: &mut Rng) -> UNet {
        if let Err(e) = config.validate() {
            panic!("UNet::new: {e}");
        }
        let boc = &config.block_out_channels;
        let levels = boc.len();
        let c0 = boc[0];
        let temb_channels = config.time_embed_dim();
        let settings = BlockSettings {
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            temb_channels,
            dropout: config.dropout,
        };
        let attention = |enabled: bool, channels: usize| AttentionSpec {
            enabled,
            heads: config.heads(channels),
        };

        let conv_in = Conv2d::new(
            &store.sub("conv_in"),
            rng,
            config.in_channels,
            c0,
            3,
            1,
            1,
            true,
        );
        let time_embedding = TimeEmbedding::new(
            &store.sub("time_embedding"),
            rng,
            c0,
            temb_channels,
            config.flip_sin_to_cos,
            config.freq_shift,
        );

        let mut down_blocks = Vec::with_capacity(levels);
        let mut c_out = c0;
        for (i, kind) in config.down_block_types.iter().enumerate() {
            let c_in = c_out;
            c_out = boc[i];
            let is_last = i + 1 == levels;
            down_blocks.push(DownBlock::new(
                &store.sub("down_blocks").sub(i),
                rng,
                c_in,
                c_out,
                config.layers_per_block,
                settings,
                attention(kind.has_attention(), c_out),
                (!is_last).then_some(config.downsample_padding),
            ));
        }

        let c_mid = boc[levels - 1];
        let mid_block = MidBlock::new(
            &store.sub("mid_block"),
            rng,
            c_mid,
            settings,
            attention(config.add_attention, c_mid),
            config
                .attn_norm_num_groups
                .unwrap_or(config.norm_num_groups),
            config.mid_block_scale_factor,
        );

        let mut up_blocks = Vec::with_capacity(levels);
        let reversed: Vec<usize> = boc.iter().rev().copied().collect();
        let mut c_out = reversed[0];
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let c_prev = c_out;
            c_out = reversed[i];
            let channels = UpChannels {
                c_out,
                c_skip_last: reversed[(i + 1).min(levels - 1)],
                c_prev,
            };
            up_blocks.push(UpBlock::new(
                &store.sub("up_blocks").sub(i),
                rng,
                channels,
                config.layers_per_block + 1,
                settings,
                attention(kind.has_attention(), c_out),
                i + 1 < levels,
            ));
        }

        let conv_norm_out = GroupNorm::new(
            &store.sub("conv_norm_out"),
            config.norm_num_groups,
            c0,
            config.norm_eps,
        );
        let conv_out = Conv2d::new(
            &store.sub("conv_out"),
            rng,
            c0,
            config.out_channels,
            3,
            1,
            1,
            true,
        );
        UNet {
            config,
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        }
    }

    /// Predicts `[N, out_channels, H, W]` from `x` `[N, in_channels, H, W]` and one timestep
    /// per image (or one for all). `H` and `W` must be divisible by `2^(levels - 1)`. Panics
    /// with both shapes on a mismatch.
    pub fn forward(&self, ctx: &mut Ctx, x: &Var, timesteps: &[f32]) -> Var {
        let levels = self.config.block_out_channels.len();
        let factor = 1 << (levels - 1);
        let &[n, c, h, w] = x.shape() else {
            panic!(
                "UNet::forward: expected x [N, C, H, W], got {:?}",
                x.shape()
            );
        };
        assert!(
            c == self.config.in_channels && h.is_multiple_of(factor) && w.is_multiple_of(factor),
            "UNet::forward: x has shape {:?}, expected [N, {}, H, W] with H and W divisible by {factor}",
            x.shape(),
            self.config.in_channels
        );
        let timesteps: Vec<f32> = match timesteps.len() {
            1 => vec![timesteps[0]; n],
            len if len == n => timesteps.to_vec(),
            len => panic!("UNet::forward: {len} timesteps for a batch of {n}"),
        };

        let emb = self.time_embedding.forward(ctx, &timesteps);
        let temb_act = emb.silu();
        let x = if self.config.center_input_sample {
            x.affine(2.0, -1.0)
        } else {
            x.clone()
        };
        let mut h = self.conv_in.forward(ctx, &x);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(ctx, &h, &temb_act, &mut skips);
        }
        h = self.mid_block.forward(ctx, &h, &temb_act);
        for block in &self.up_blocks {
            h = block.forward(ctx, &h, &temb_act, &mut skips);
        }
        debug_assert!(skips.is_empty(), "every skip connection is used once");
        let h = self.conv_norm_out.forward_silu(ctx, &h);
        self.conv_out.forward(ctx, &h)
    }

    /// Loads a diffusers `UNet2DModel` folder: `config.json` and
    /// `diffusion_pytorch_model.safetensors`, with no renaming. Returns the model and the store
    /// holding its parameters.
    pub fn load_diffusers(dir: impl AsRef<Path>) -> Result<(UNet, ParamStore)> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let json = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            path: config_path.display().to_string(),
            source,
        })?;
        let config = UNetConfig::from_diffusers_json(&json)?;
        let store = ParamStore::new();
        let unet = UNet::new(config, &store, &mut Rng::new(0, 0));
        store.load(dir.join("diffusion_pytorch_model.safetensors"))?;
        Ok((unet, store))
    }
}
