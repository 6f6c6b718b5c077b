//! The DDPM noise-prediction network: a UNet built as diffusers' `UNet2DModel` builds it, with
//! the same parameter names and shapes, so diffusers checkpoints load without renaming.
//!
//! One idea per file: [`config`] (the architecture and presets), [`diffusers_json`] (reading
//! diffusers' `config.json`), [`embedding`] (sinusoidal time code and its MLP), [`resnet`]
//! (the time-conditioned residual block), [`attention`] (spatial self-attention),
//! [`resample`] (down- and upsampling), [`blocks`] (down, up and mid levels) and [`model`]
//! (the network).
//!
//! ```no_run
//! use autograd::nn::{Ctx, ParamStore};
//! use autograd::{no_grad, Var};
//! use ddpm::unet::{UNet, UNetConfig};
//! use tensor::{rng::Rng, Tensor};
//!
//! let store = ParamStore::new();
//! let unet = UNet::new(UNetConfig::small(), &store, &mut Rng::new(0, 0));
//! let x_t = Var::constant(Tensor::randn(&[4, 1, 28, 28], 1, 0));
//! let eps = no_grad(|| unet.forward(&mut Ctx::eval(), &x_t, &[10.0, 200.0, 500.0, 999.0]));
//! assert_eq!(eps.shape(), &[4, 1, 28, 28]);
//!
//! // A diffusers folder (config.json + diffusion_pytorch_model.safetensors):
//! let (cifar, _params) = UNet::load_diffusers("ddpm-cifar10-32/unet")?;
//! # Ok::<(), tensor::Error>(())
//! ```

pub mod attention;
pub mod blocks;
pub mod config;
pub mod diffusers_json;
pub mod embedding;
pub mod model;
pub mod resample;
pub mod resnet;

pub use config::{DownBlockType, UNetConfig, UpBlockType};
pub use model::UNet;

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the up path reads its inputs in place (see [`read_in_place`]).
static READ_IN_PLACE: AtomicBool = AtomicBool::new(true);

/// Lets the up path read its skip concatenations and upsampled images in place (the
/// default: the first group norm and the 1x1 shortcut of each up ResNet block take `h` and
/// the skip as channel parts, and each upsampling's convolution reads the small images), or
/// makes it form them (`Var::concat`, then `upsample_nearest2x`), process-wide, so that
/// `ddpm bench unet --compare-in-place` can time both forms in one process. The two agree
/// to rounding (the 1x1 shortcut sums its two parts in another order; the rest has the same
/// bits). Returns the previous setting.
pub fn read_in_place(allowed: bool) -> bool {
    READ_IN_PLACE.swap(allowed, Ordering::Relaxed)
}

/// True unless [`read_in_place`] turned reading in place off.
pub fn reads_in_place() -> bool {
    READ_IN_PLACE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests;
