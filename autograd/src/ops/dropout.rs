//! Dropout (Srivastava et al., 2014), deterministic given its RNG key.

use tensor::rng::Rng;
use tensor::Tensor;

use crate::{Backward, Var};

/// `y = x * m` with `m_i = 1 / (1 - p)` where element i is kept and 0 where dropped, so
/// `dx = g * m`.
struct DropoutRule {
    mask: Tensor,
}

impl Backward for DropoutRule {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        vec![Some(g.mul(&self.mask))]
    }
}

impl Var {
    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)` (inverted
    /// dropout, as PyTorch in training mode). Element i is kept when the i-th uniform draw of
    /// `rng` is at least `p`, so the mask depends only on the RNG's state, never on threads.
    /// `p = 0` returns the input unchanged.
    pub fn dropout(&self, p: f32, rng: &mut Rng) -> Var {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout: probability must be in [0, 1), got {p}"
        );
        if p == 0.0 {
            return self.clone();
        }
        let scale = 1.0 / (1.0 - p);
        let mask = rng
            .uniform(self.shape())
            .map(|u| if u >= p { scale } else { 0.0 });
        let y = self.value().mul(&mask);
        Var::from_op(y, DropoutRule { mask }, &[self])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    #[test]
    fn dropout_is_deterministic_unbiased_and_passes_gradcheck() {
        let x = Tensor::ones(&[100_000]);
        let a = Var::constant(x.clone()).dropout(0.3, &mut Rng::new(7, 0));
        let b = Var::constant(x).dropout(0.3, &mut Rng::new(7, 0));
        assert_eq!(a.value().data(), b.value().data());
        let kept = a.value().data().iter().filter(|&&v| v != 0.0).count() as f64 / 1e5;
        assert!((kept - 0.7).abs() < 0.01, "kept fraction {kept}");
        let mean = a.value().mean_all().item();
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        // The same key on every call inside gradcheck: the mask is fixed, the op linear.
        let input = randn(&[4, 6], 1);
        gradcheck(
            |v| v[0].dropout(0.5, &mut Rng::new(3, 1)),
            &[input],
            Tolerance::default(),
        )
        .unwrap();
    }
}
