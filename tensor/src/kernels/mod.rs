//! Compute kernels on raw f32 slices: the layer under [`crate::Tensor`]'s ops.
//!
//! Each kernel family picks its instruction set at run time through [`cpu`], so one release
//! binary runs on any x86-64 and uses the best kernels the CPU has; tests can force the
//! portable path with [`cpu::force_portable`].

pub mod conv;
pub mod cpu;
pub mod gemm;
pub mod norm;
pub mod peak;
pub mod stream;
