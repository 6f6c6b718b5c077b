//! `ddpm`: denoising diffusion probabilistic models (Ho et al., 2020) on top of `autograd` and
//! `tensor`: noise schedules, the forward process and its posterior, the training losses and
//! the variational bound, the UNet, and the DDPM and DDIM samplers. Every formula is in
//! `ddpm-math.md`, and each function names the equation it implements.

pub mod classifier;
pub mod data;
pub mod diffusion;
pub mod fid;
pub mod image;
pub mod sample;
pub mod schedule;
pub mod train;
pub mod unet;
