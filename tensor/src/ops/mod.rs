//! Tensor-level operations, one family per file. Each checks shapes (panicking with the op's
//! name and the shapes on a mismatch) and calls into [`crate::kernels`] or SIMD loops.

pub mod alloc;
pub mod attention;
pub mod bandwidth;
pub mod binary;
mod broadcast;
pub mod conv;
pub mod conv_parts;
pub mod flops;
pub mod layout;
pub mod matmul;
pub mod norm;
pub(crate) mod par;
pub mod reduce;
mod reduce_kernel;
pub(crate) mod simd;
pub mod softmax;
#[cfg(test)]
mod testutil;
pub(crate) mod transpose;
pub mod unary;
mod vmath;
