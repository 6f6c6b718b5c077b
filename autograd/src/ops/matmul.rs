//! Matrix products (2-D and batched, with transpose flags).

use tensor::Tensor;

use super::unbroadcast;
use crate::{Backward, Var};

/// `C = op(A) op(B)` with `op(X) = X` or `X^T` (on the last two axes). From
/// `dL = <G, dC> = <G op(B)^T, d op(A)> + <op(A)^T G, d op(B)>`:
///
/// - `d op(A) = G op(B)^T`, so `dA = G op(B)^T`, or its transpose `op(B) G^T` when A was used
///   transposed;
/// - `d op(B) = op(A)^T G`, so `dB = op(A)^T G`, or `G^T op(A)` when B was used transposed;
///
/// each computed with flags instead of materialised transposes, then summed over the batch axes
/// an operand was broadcast along.
struct MatmulRule {
    a: Tensor,
    b: Tensor,
    transa: bool,
    transb: bool,
}

impl Backward for MatmulRule {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn backward(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        let (a, b, ta, tb) = (&self.a, &self.b, self.transa, self.transb);
        // The two gradients are independent: computed side by side (see the conv2d rule).
        let da = || {
            needs[0].then(|| {
                let d = if ta {
                    b.matmul_t(g, tb, true)
                } else {
                    g.matmul_t(b, false, !tb)
                };
                unbroadcast(d, a.shape())
            })
        };
        let db = || {
            needs[1].then(|| {
                if let Some(d) = shared_right_gradient(a, b, g, ta, tb) {
                    return d;
                }
                let d = if tb {
                    g.matmul_t(a, true, ta)
                } else {
                    a.matmul_t(g, !ta, false)
                };
                unbroadcast(d, b.shape())
            })
        };
        let _prof = tensor::profile::scope("matmul_backward", || {
            let t = |f: bool| if f { "^T" } else { "" };
            format!("{:?}{} @ {:?}{}", a.shape(), t(ta), b.shape(), t(tb))
        });
        let (da, db) = rayon::join(
            || tensor::profile::untimed(da),
            || tensor::profile::untimed(db),
        );
        vec![da, db]
    }
}

/// The gradient of a 2-D right operand shared by a batch of left operands (a linear layer on
/// `[.., L, K]` inputs): the batch axes are folded into the rows, so `dB` is one matrix product
/// with a long reduction, `A'^T G'` (or `G'^T A'` when B was used transposed) with
/// `A' = A [rows, K]` and `G' = G [rows, N]`, instead of a product per batch entry followed by
/// a sum over the batch. `None` when the shapes are not of that kind.
fn shared_right_gradient(a: &Tensor, b: &Tensor, g: &Tensor, ta: bool, tb: bool) -> Option<Tensor> {
    if ta || b.ndim() != 2 || a.ndim() <= 2 || g.ndim() != a.ndim() {
        return None;
    }
    let k = a.shape()[a.ndim() - 1];
    let n = g.shape()[g.ndim() - 1];
    let a2 = a.reshape(&[a.numel() / k.max(1), k]);
    let g2 = g.reshape(&[g.numel() / n.max(1), n]);
    Some(if tb {
        g2.matmul_t(&a2, true, false)
    } else {
        a2.matmul_t(&g2, true, false)
    })
}

impl Var {
    /// The matrix product `self @ other` (batched over leading axes, which broadcast).
    pub fn matmul(&self, other: &Var) -> Var {
        self.matmul_t(other, false, false)
    }

    /// `op(self) @ op(other)`, `op` transposing the last two axes where its flag is set.
    pub fn matmul_t(&self, other: &Var, transa: bool, transb: bool) -> Var {
        let y = self.value().matmul_t(other.value(), transa, transb);
        let rule = MatmulRule {
            a: self.value().clone(),
            b: other.value().clone(),
            transa,
            transb,
        };
        Var::from_op(y, rule, &[self, other])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    /// Products are bilinear: central differences are exact up to f32 rounding of k-term
    /// sums, well inside the default tolerances.
    #[test]
    fn matmul_passes_gradcheck_for_every_transpose_and_broadcast() {
        let tol = Tolerance::default();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (m, k, n) = (3, 4, 5);
            let a_shape = if ta { [k, m] } else { [m, k] };
            let b_shape = if tb { [n, k] } else { [k, n] };
            let a = randn(&a_shape, 1);
            let b = randn(&b_shape, 2);
            gradcheck(|v| v[0].matmul_t(&v[1], ta, tb), &[a, b], tol)
                .unwrap_or_else(|e| panic!("transa={ta} transb={tb}: {e}"));
            // Batched left operand, shared right operand (a linear layer), and both batched.
            let a3 = randn(&[2, a_shape[0], a_shape[1]], 3);
            let b3 = randn(&[2, b_shape[0], b_shape[1]], 4);
            let b2 = randn(&b_shape, 5);
            gradcheck(|v| v[0].matmul_t(&v[1], ta, tb), &[a3.clone(), b2], tol).unwrap();
            gradcheck(|v| v[0].matmul_t(&v[1], ta, tb), &[a3, b3], tol).unwrap();
        }
    }
}
