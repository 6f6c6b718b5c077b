//! Tensor-level operations, one family per file. Each checks shapes (panicking with the op's
//! name and the shapes on a mismatch) and calls into [`crate::kernels`] or SIMD loops.

pub mod binary;
pub mod conv;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;
pub mod unary;
pub mod bandwidth;
mod par;
mod vmath;
mod broadcast;
#[cfg(test)]
mod testutil;
pub mod alloc;
mod simd;
mod reduce_kernel;
pub mod flops;
