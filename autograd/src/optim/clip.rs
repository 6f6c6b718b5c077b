//! Clipping gradients by their global norm (Pascanu et al., 2013).

use crate::Param;

/// Scales every gradient by `min(1, max_norm / (norm + 1e-6))`, where `norm` is the Euclidean
/// norm of all gradients together (as PyTorch's `clip_grad_norm_`). Returns `norm` (before
/// clipping). The sum of squares is taken in f64 in a fixed order, so it does not depend on
/// the thread count.
pub fn clip_grad_norm(params: &[(String, Param)], max_norm: f32) -> f32 {
    let mut sum_sq = 0.0f64;
    for (_, p) in params {
        if let Some(g) = p.grad_ref().as_ref() {
            sum_sq += g.data().iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        }
    }
    let norm = sum_sq.sqrt() as f32;
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for (_, p) in params {
            if let Some(g) = p.grad() {
                p.set_grad(Some(g.mul_scalar(scale)));
            }
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::Tensor;

    #[test]
    fn clips_to_the_global_norm() {
        let a = Param::new(Tensor::zeros(&[2]));
        let b = Param::new(Tensor::zeros(&[1]));
        a.set_grad(Some(Tensor::from_vec(vec![3.0, 0.0], &[2])));
        b.set_grad(Some(Tensor::from_vec(vec![4.0], &[1])));
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        assert_eq!(clip_grad_norm(&params, 10.0), 5.0);
        assert_eq!(
            b.grad().unwrap().data(),
            &[4.0],
            "below the limit nothing changes"
        );
        assert_eq!(clip_grad_norm(&params, 1.0), 5.0);
        let scale = 1.0 / (5.0 + 1e-6);
        assert!((a.grad().unwrap().data()[0] - 3.0 * scale).abs() < 1e-6);
        assert!((b.grad().unwrap().data()[0] - 4.0 * scale).abs() < 1e-6);
    }
}
