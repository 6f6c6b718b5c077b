//! `softmax` and `log_softmax` over the last axis.

use tensor::Tensor;

use crate::{Backward, Var};

/// With `y` the output and sums over the last axis:
///
/// - softmax: `dy_i/dx_j = y_i (delta_ij - y_j)`, so `dx = y * (g - sum(g * y))`;
/// - log_softmax: `dy_i/dx_j = delta_ij - softmax(x)_j`, so `dx = g - e^y * sum(g)`.
struct SoftmaxRule {
    y: Tensor,
    log: bool,
}

impl Backward for SoftmaxRule {
    fn name(&self) -> &'static str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        let y = &self.y;
        let dx = if self.log {
            g.sub(&y.exp().mul(&g.sum(&[-1], true)))
        } else {
            y.mul(&g.sub(&g.mul(y).sum(&[-1], true)))
        };
        vec![Some(dx)]
    }
}

impl Var {
    /// Softmax over the last axis: `e^x_i / sum_j e^x_j`.
    pub fn softmax(&self) -> Var {
        let y = self.value().softmax();
        Var::from_op(y.clone(), SoftmaxRule { y, log: false }, &[self])
    }

    /// Log-softmax over the last axis: `x_i - ln sum_j e^x_j`, computed stably.
    pub fn log_softmax(&self) -> Var {
        let y = self.value().log_softmax();
        Var::from_op(y.clone(), SoftmaxRule { y, log: true }, &[self])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    /// Smooth, with outputs of order 1: the default tolerances apply.
    #[test]
    fn softmax_and_log_softmax_pass_gradcheck() {
        let x = randn(&[3, 2, 7], 1);
        gradcheck(
            |v| v[0].softmax(),
            std::slice::from_ref(&x),
            Tolerance::default(),
        )
        .unwrap();
        gradcheck(|v| v[0].log_softmax(), &[x], Tolerance::default()).unwrap();
    }
}
