//! PyTorch's default initialisation.

use tensor::rng::Rng;
use tensor::Tensor;

/// Uniform on `[-1/sqrt(fan_in), 1/sqrt(fan_in))`: PyTorch's default for the weights of
/// `Linear` and `Conv2d` (kaiming-uniform with `a = sqrt(5)`: gain `sqrt(2 / (1 + a^2)) =
/// sqrt(1/3)`, bound `gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)`) and for their biases.
pub fn uniform_fan_in(rng: &mut Rng, shape: &[usize], fan_in: usize) -> Tensor {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    rng.uniform_range(shape, -bound, bound)
}
