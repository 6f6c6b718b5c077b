//! `tensor`: n-dimensional f32 tensors for CPUs.
//!
//! A [`Tensor`] is a shape plus contiguous row-major f32 storage, shared on clone. The heavy work
//! lives in [`kernels`]: a blocked, packed GEMM with `std::arch` micro-kernels chosen at run time,
//! conv2d (forward and both backwards), group normalisation, and SIMD element-wise code. [`rng`]
//! is a counter-based generator (Philox 4x32-10) whose draws do not depend on the thread count,
//! and [`io`] reads and writes safetensors files.
//!
//! Shape mismatches inside an op are programming errors and panic with the op's name and the
//! shapes; anything that touches files returns [`Result`].

pub mod awake;
pub mod error;
pub mod io;
pub mod kernels;
pub mod ops;
pub mod profile;
pub mod rng;
pub mod shape;
mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;
