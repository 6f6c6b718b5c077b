//! Helpers shared by the op tests.

use tensor::Tensor;

/// Standard-normal test data from the crate's counter-based RNG, seeded per call site.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, seed, 0)
}
