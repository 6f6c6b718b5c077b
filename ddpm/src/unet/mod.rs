//! The DDPM noise-prediction network: a UNet built as diffusers' `UNet2DModel` builds it, with
//! the same parameter names and shapes, so diffusers checkpoints load without renaming.
//!
//! One idea per file: [`config`] (the architecture and presets, `config.json`), [`embedding`]
//! (sinusoidal time code and its MLP), [`resnet`] (the time-conditioned residual block),
//! [`attention`] (spatial self-attention), [`resample`] (down- and upsampling), [`blocks`]
//! (down, up and mid levels) and [`model`] (the network).

pub mod attention;
pub mod blocks;
pub mod config;
pub mod embedding;
pub mod model;
pub mod resample;
pub mod resnet;

pub use config::{DownBlockType, UNetConfig, UpBlockType};
pub use model::UNet;

#[cfg(test)]
mod tests;
