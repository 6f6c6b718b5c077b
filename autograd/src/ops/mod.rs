//! Differentiable ops, one family per file. Each op is a forward function next to the struct
//! holding its backward rule, with the rule derived in the doc comment, and gradient checks in
//! the same file.

pub mod arith;
pub mod attention;
pub mod conv;
mod conv_parts;
mod conv_stacked;
pub mod dropout;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;
pub mod unary;

use tensor::Tensor;

/// The gradient of an operand that was broadcast to `g`'s shape: `g` summed over the broadcast
/// axes (`Tensor::sum_to`), or `g` itself when nothing was broadcast.
pub(crate) fn unbroadcast(g: Tensor, shape: &[usize]) -> Tensor {
    if g.shape() == shape {
        g
    } else {
        g.sum_to(shape)
    }
}
