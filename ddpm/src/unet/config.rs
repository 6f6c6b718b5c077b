//! The UNet's configuration: the fields of diffusers' `UNet2DModel` config that this
//! implementation supports, its defaults, four presets and validation (reading diffusers'
//! `config.json` is in [`super::diffusers_json`]).

use tensor::{Error, Result};

/// A down-sampling level: ResNet blocks only (`DownBlock2D`) or each followed by an attention
/// block (`AttnDownBlock2D`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownBlockType {
    /// diffusers' `DownBlock2D`.
    Down,
    /// diffusers' `AttnDownBlock2D`.
    AttnDown,
}

/// An up-sampling level: ResNet blocks only (`UpBlock2D`) or each followed by an attention
/// block (`AttnUpBlock2D`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpBlockType {
    /// diffusers' `UpBlock2D`.
    Up,
    /// diffusers' `AttnUpBlock2D`.
    AttnUp,
}

impl DownBlockType {
    /// diffusers' class name.
    pub fn name(self) -> &'static str {
        match self {
            DownBlockType::Down => "DownBlock2D",
            DownBlockType::AttnDown => "AttnDownBlock2D",
        }
    }

    /// True if the level has attention blocks.
    pub fn has_attention(self) -> bool {
        self == DownBlockType::AttnDown
    }

    pub(super) fn parse(name: &str) -> Result<DownBlockType> {
        match name {
            "DownBlock2D" => Ok(DownBlockType::Down),
            "AttnDownBlock2D" => Ok(DownBlockType::AttnDown),
            other => Err(invalid(format!(
                "down_block_types: `{other}` is not supported (expected DownBlock2D or AttnDownBlock2D)"
            ))),
        }
    }
}

impl UpBlockType {
    /// diffusers' class name.
    pub fn name(self) -> &'static str {
        match self {
            UpBlockType::Up => "UpBlock2D",
            UpBlockType::AttnUp => "AttnUpBlock2D",
        }
    }

    /// True if the level has attention blocks.
    pub fn has_attention(self) -> bool {
        self == UpBlockType::AttnUp
    }

    pub(super) fn parse(name: &str) -> Result<UpBlockType> {
        match name {
            "UpBlock2D" => Ok(UpBlockType::Up),
            "AttnUpBlock2D" => Ok(UpBlockType::AttnUp),
            other => Err(invalid(format!(
                "up_block_types: `{other}` is not supported (expected UpBlock2D or AttnUpBlock2D)"
            ))),
        }
    }
}

/// The architecture of a [`super::UNet`], field for field diffusers' `UNet2DModel` config
/// (the supported subset: positional time embedding, SiLU, convolutional resampling, the
/// "default" time conditioning, no class conditioning).
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// Image height and width the model was made for (metadata: any size divisible by
    /// `2^(levels - 1)` runs). diffusers' default: none.
    pub sample_size: Option<usize>,
    /// Channels of the input image.
    pub in_channels: usize,
    /// Channels of the output (twice the image channels for a learned variance, see
    /// [`UNetConfig::with_learned_variance`]).
    pub out_channels: usize,
    /// Map the input from [0, 1] to [-1, 1] first (`2x - 1`).
    pub center_input_sample: bool,
    /// Channels of each resolution level; level 0 also sets the time-embedding width.
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per down level (the up levels have one more).
    pub layers_per_block: usize,
    /// Down levels, from the highest resolution.
    pub down_block_types: Vec<DownBlockType>,
    /// Up levels, from the lowest resolution.
    pub up_block_types: Vec<UpBlockType>,
    /// Groups of every GroupNorm.
    pub norm_num_groups: usize,
    /// Groups of the mid block's attention GroupNorm (`None`: `norm_num_groups`).
    pub attn_norm_num_groups: Option<usize>,
    /// Epsilon of every GroupNorm.
    pub norm_eps: f32,
    /// Dropout probability inside the ResNet blocks (training only).
    pub dropout: f32,
    /// Channels per attention head (`None`: one head of all channels).
    pub attention_head_dim: Option<usize>,
    /// Order the sinusoids [cos, sin] instead of [sin, cos].
    pub flip_sin_to_cos: bool,
    /// Frequencies are `exp(-ln(10^4) i / (half - freq_shift))`.
    pub freq_shift: f32,
    /// 1: stride-2 convolutions pad every side by 1; 0: pad right and bottom by 1 only.
    pub downsample_padding: usize,
    /// Output scale factor of the mid block's ResNets and attention.
    pub mid_block_scale_factor: f32,
    /// Whether the mid block has its attention block.
    pub add_attention: bool,
    /// Width of the time embedding (`None`: `4 * block_out_channels[0]`).
    pub time_embedding_dim: Option<usize>,
}

pub(super) fn invalid(message: String) -> Error {
    Error::Invalid(format!("UNet config: {message}"))
}

impl Default for UNetConfig {
    /// diffusers' `UNet2DModel` defaults.
    fn default() -> UNetConfig {
        use DownBlockType::*;
        use UpBlockType::*;
        UNetConfig {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            down_block_types: vec![Down, AttnDown, AttnDown, AttnDown],
            up_block_types: vec![AttnUp, AttnUp, AttnUp, Up],
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            dropout: 0.0,
            attention_head_dim: Some(8),
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            add_attention: true,
            time_embedding_dim: None,
        }
    }
}

impl UNetConfig {
    /// A fast model for tests: 16x16 grey images, levels (32, 64) with attention (16-channel
    /// heads) at the 8x8 level, one ResNet per level, 8 groups. 701,345 parameters.
    pub fn tiny() -> UNetConfig {
        UNetConfig {
            sample_size: Some(16),
            in_channels: 1,
            out_channels: 1,
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            down_block_types: vec![DownBlockType::Down, DownBlockType::AttnDown],
            up_block_types: vec![UpBlockType::AttnUp, UpBlockType::Up],
            norm_num_groups: 8,
            attention_head_dim: Some(16),
            ..UNetConfig::default()
        }
    }

    /// The default model for 28x28 or 32x32 grey images (both halve twice): levels
    /// (64, 128, 128), attention with one head at the middle level, two ResNets per level,
    /// otherwise the bench model. 6,469,889 parameters.
    pub fn small() -> UNetConfig {
        UNetConfig {
            in_channels: 1,
            out_channels: 1,
            attention_head_dim: None,
            ..UNetConfig::bench()
        }
    }

    /// The benchmark model: 32x32 RGB, levels (64, 128, 128), two ResNets per level, attention
    /// at the 16x16 level, everything else at `UNet2DModel`'s defaults. 6,472,195 parameters.
    pub fn bench() -> UNetConfig {
        UNetConfig {
            sample_size: Some(32),
            block_out_channels: vec![64, 128, 128],
            down_block_types: vec![
                DownBlockType::Down,
                DownBlockType::AttnDown,
                DownBlockType::Down,
            ],
            up_block_types: vec![UpBlockType::Up, UpBlockType::AttnUp, UpBlockType::Up],
            ..UNetConfig::default()
        }
    }

    /// The DDPM paper's CIFAR-10 model (Ho et al., 2020) as diffusers' `google/ddpm-cifar10-32`
    /// config: levels (128, 256, 256, 256), attention with one head at 16x16, [sin, cos]
    /// embedding with frequencies over `half - 1`, eps 1e-6, TF "SAME" downsampling. Dropout is
    /// the paper's 0.1 (the diffusers config leaves it at 0, which only matters in training).
    /// 35,746,307 parameters.
    pub fn ddpm_cifar10() -> UNetConfig {
        use DownBlockType::*;
        use UpBlockType::*;
        UNetConfig {
            sample_size: Some(32),
            block_out_channels: vec![128, 256, 256, 256],
            down_block_types: vec![Down, AttnDown, Down, Down],
            up_block_types: vec![Up, Up, AttnUp, Up],
            norm_eps: 1e-6,
            dropout: 0.1,
            attention_head_dim: None,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            downsample_padding: 0,
            ..UNetConfig::default()
        }
    }

    /// The default model of `ddpm train` on the built-in shapes: 32x32 grey images, levels
    /// (32, 64, 64) with one ResNet each, one attention head at the 16x16 level, 8 groups.
    /// Small enough to learn the shapes in a few minutes on two cores.
    pub fn shapes() -> UNetConfig {
        UNetConfig {
            sample_size: Some(32),
            in_channels: 1,
            out_channels: 1,
            block_out_channels: vec![32, 64, 64],
            layers_per_block: 1,
            down_block_types: vec![
                DownBlockType::Down,
                DownBlockType::AttnDown,
                DownBlockType::Down,
            ],
            up_block_types: vec![UpBlockType::Up, UpBlockType::AttnUp, UpBlockType::Up],
            norm_num_groups: 8,
            attention_head_dim: None,
            ..UNetConfig::default()
        }
    }

    /// A preset by name: `shapes`, `tiny`, `small`, `bench` or `ddpm-cifar10`.
    pub fn preset(name: &str) -> Result<UNetConfig> {
        match name {
            "shapes" => Ok(UNetConfig::shapes()),
            "tiny" => Ok(UNetConfig::tiny()),
            "small" => Ok(UNetConfig::small()),
            "bench" => Ok(UNetConfig::bench()),
            "ddpm-cifar10" => Ok(UNetConfig::ddpm_cifar10()),
            other => Err(invalid(format!(
                "unknown preset `{other}` (expected shapes, tiny, small, bench or ddpm-cifar10)"
            ))),
        }
    }

    /// The same model predicting a variance too: twice the input channels out.
    pub fn with_learned_variance(mut self) -> UNetConfig {
        self.out_channels = 2 * self.in_channels;
        self
    }

    /// Width of the time embedding: `time_embedding_dim`, or `4 * block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// Heads of an attention block over `channels` channels.
    pub fn heads(&self, channels: usize) -> usize {
        self.attention_head_dim.map_or(1, |d| channels / d)
    }

    /// Checks that the fields describe a buildable model.
    pub fn validate(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        if levels == 0 || self.block_out_channels.contains(&0) {
            return Err(invalid(format!(
                "block_out_channels {:?} must be non-empty and positive",
                self.block_out_channels
            )));
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(invalid(format!(
                "{} down and {} up block types for {levels} levels of block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if self.in_channels == 0
            || self.out_channels == 0
            || self.layers_per_block == 0
            || self.time_embedding_dim == Some(0)
        {
            return Err(invalid(
                "in_channels, out_channels, layers_per_block and time_embedding_dim must be positive"
                    .into(),
            ));
        }
        let groups = self.norm_num_groups;
        for &c in &self.block_out_channels {
            if groups == 0 || !c.is_multiple_of(groups) {
                return Err(invalid(format!(
                    "norm_num_groups {groups} does not divide {c} channels"
                )));
            }
            if let Some(d) = self.attention_head_dim {
                if d == 0 || !c.is_multiple_of(d) {
                    return Err(invalid(format!(
                        "attention_head_dim {d} does not divide {c} channels"
                    )));
                }
            }
        }
        if let Some(g) = self.attn_norm_num_groups {
            let c = self.block_out_channels[levels - 1];
            if g == 0 || !c.is_multiple_of(g) {
                return Err(invalid(format!(
                    "attn_norm_num_groups {g} does not divide {c} channels"
                )));
            }
        }
        if self.downsample_padding > 1 {
            return Err(invalid(format!(
                "downsample_padding {} is not supported (expected 0 or 1)",
                self.downsample_padding
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(format!(
                "dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        let half = (self.block_out_channels[0] / 2) as f32;
        if half - self.freq_shift <= 0.0 {
            return Err(invalid(format!(
                "freq_shift {} leaves no frequencies for a {}-wide embedding",
                self.freq_shift, self.block_out_channels[0]
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for name in ["tiny", "small", "bench", "ddpm-cifar10"] {
            UNetConfig::preset(name).unwrap().validate().unwrap();
        }
        assert!(UNetConfig::preset("huge").is_err());
        assert_eq!(UNetConfig::tiny().with_learned_variance().out_channels, 2);
    }
}
