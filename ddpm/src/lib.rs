//! Denoising diffusion probabilistic models on top of `autograd` and `tensor`. Empty for now.
