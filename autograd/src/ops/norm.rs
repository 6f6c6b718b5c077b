//! Group normalisation (Wu and He, 2018) with affine parameters.

use tensor::ops::norm::{
    group_norm as group_norm_forward, group_norm_backward, group_norm_backward_add,
    group_norm_silu as group_norm_silu_forward, group_norm_silu_backward,
    group_norm_silu_backward_add,
};
use tensor::Tensor;

use crate::tape::add_gradients;
use crate::{Backward, Var};

/// For one image and one group of m = (C / groups) * H * W values, with
/// `xhat = (x - mean) * rstd` and `y = gamma * xhat + beta`:
///
/// - `dbeta[c] = sum dy`, `dgamma[c] = sum dy * xhat` (over the batch and pixels);
/// - with `h = dy * gamma`, differentiating through the mean and the variance gives
///   `dx = rstd * (h - mean(h) - xhat * mean(h * xhat))`, the means taken over the group.
///
/// With `silu` (the fused `silu(group_norm(x))`), the output gradient first goes through
/// `silu'(z) = s (1 + z (1 - s))` (`s` the logistic sigmoid) at the normalised values `z`,
/// which the kernel recomputes from `x`, the saved statistics, `gamma` and `beta`; nothing of
/// the size of `x` is stored besides `x`.
struct GroupNormRule {
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    gamma: Option<Tensor>,
    beta: Option<Tensor>,
    groups: usize,
    silu: bool,
}

impl Backward for GroupNormRule {
    fn name(&self) -> &'static str {
        if self.silu {
            "group_norm_silu"
        } else {
            "group_norm"
        }
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        let (x, groups, mean, rstd) = (&self.x, self.groups, &self.mean, &self.rstd);
        let gamma = self.gamma.as_ref();
        let (dx, dgamma, dbeta) = if self.silu {
            group_norm_silu_backward(x, g, groups, mean, rstd, gamma, self.beta.as_ref())
        } else {
            group_norm_backward(x, g, groups, mean, rstd, gamma)
        };
        self.grads(Some(dx), dgamma, dbeta)
    }

    /// When `x` already has a gradient, the kernel adds `dx` into it as it writes (no
    /// separate addition pass); the parameters' gradients are added as usual.
    fn backward_accumulate(
        &self,
        g: &Tensor,
        needs: &[bool],
        mut acc: Vec<Option<Tensor>>,
    ) -> Vec<Option<Tensor>> {
        let Some(mut grad_x) = acc.first_mut().and_then(Option::take) else {
            return add_gradients(acc, self.backward(g, needs));
        };
        let (x, groups, mean, rstd) = (&self.x, self.groups, &self.mean, &self.rstd);
        let gamma = self.gamma.as_ref();
        let (dgamma, dbeta) = if self.silu {
            let beta = self.beta.as_ref();
            group_norm_silu_backward_add(x, g, groups, mean, rstd, gamma, beta, &mut grad_x)
        } else {
            group_norm_backward_add(x, g, groups, mean, rstd, gamma, &mut grad_x)
        };
        let mut grads = self.grads(None, dgamma, dbeta);
        acc[0] = Some(grad_x);
        grads[0] = None;
        add_gradients(acc, grads)
    }
}

impl GroupNormRule {
    /// The rule's gradients in input order: `dx` (if given), then `dgamma` and `dbeta` for
    /// the parameters the op had.
    fn grads(&self, dx: Option<Tensor>, dgamma: Tensor, dbeta: Tensor) -> Vec<Option<Tensor>> {
        let mut grads = vec![dx];
        if self.gamma.is_some() {
            grads.push(Some(dgamma));
        }
        if self.beta.is_some() {
            grads.push(Some(dbeta));
        }
        grads
    }
}

/// The op for [`group_norm`] (`silu` false) and [`group_norm_silu`] (`silu` true).
fn group_norm_op(
    x: &Var,
    groups: usize,
    gamma: Option<&Var>,
    beta: Option<&Var>,
    eps: f32,
    silu: bool,
) -> Var {
    let forward = if silu {
        group_norm_silu_forward
    } else {
        group_norm_forward
    };
    let (y, mean, rstd) = forward(
        x.value(),
        groups,
        gamma.map(|v| v.value()),
        beta.map(|v| v.value()),
        eps,
    );
    let rule = GroupNormRule {
        x: x.value().clone(),
        mean,
        rstd,
        gamma: gamma.map(|v| v.value().clone()),
        beta: beta.map(|v| v.value().clone()),
        groups,
        silu,
    };
    let inputs: Vec<&Var> = std::iter::once(x).chain(gamma).chain(beta).collect();
    Var::from_op(y, rule, &inputs)
}

/// Group normalisation of `x` `[N, C, ...]` over `groups` groups of channels, with optional
/// per-channel scale `gamma` and shift `beta` (`[C]`).
pub fn group_norm(
    x: &Var,
    groups: usize,
    gamma: Option<&Var>,
    beta: Option<&Var>,
    eps: f32,
) -> Var {
    group_norm_op(x, groups, gamma, beta, eps, false)
}

/// SiLU of the group normalisation of `x` (`silu(group_norm(x, ..))`, the pattern of every
/// ResNet block), computed in one pass with one op on the tape.
pub fn group_norm_silu(
    x: &Var,
    groups: usize,
    gamma: Option<&Var>,
    beta: Option<&Var>,
    eps: f32,
) -> Var {
    group_norm_op(x, groups, gamma, beta, eps, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    /// When `x` also feeds a residual (its gradient from there arrives first), the rule adds
    /// its `dx` into that gradient as the kernel writes it: the same bits as computing `dx`
    /// and adding the two, for group norm with and without SiLU; the parameters' gradients
    /// are unchanged.
    #[test]
    fn input_gradient_added_in_the_kernel_has_the_bits_of_a_separate_addition() {
        let x = randn(&[2, 6, 3, 3], 11);
        let gamma = randn(&[6], 12);
        let beta = randn(&[6], 13);
        let seed = randn(x.shape(), 14);
        for silu in [false, true] {
            let graph = crate::Graph::new();
            let (xv, gv, bv) = (
                graph.leaf(x.clone()),
                graph.leaf(gamma.clone()),
                graph.leaf(beta.clone()),
            );
            let norm = if silu { group_norm_silu } else { group_norm };
            let y = norm(&xv, 3, Some(&gv), Some(&bv), 1e-5).add(&xv);
            y.backward_with(seed.clone());
            // By hand: the residual's gradient is the seed; the norm's dx is added to it.
            let graph = crate::Graph::new();
            let (xs, gs, bs) = (
                graph.leaf(x.clone()),
                graph.leaf(gamma.clone()),
                graph.leaf(beta.clone()),
            );
            norm(&xs, 3, Some(&gs), Some(&bs), 1e-5).backward_with(seed.clone());
            let want = seed.add(&xs.grad().unwrap());
            let got = xv.grad().unwrap();
            let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "silu {silu}: input gradient");
            assert_eq!(bits(&gv.grad().unwrap()), bits(&gs.grad().unwrap()));
            assert_eq!(bits(&bv.grad().unwrap()), bits(&bs.grad().unwrap()));
        }
    }

    /// Normalisation divides by the group's standard deviation (about 1 for these inputs), so
    /// the function is smooth at this scale: the default tolerances apply.
    #[test]
    fn group_norm_passes_gradcheck() {
        let x = randn(&[2, 6, 3, 3], 1);
        let gamma = randn(&[6], 2);
        let beta = randn(&[6], 3);
        let tol = Tolerance::default();
        gradcheck(
            |v| group_norm(&v[0], 3, Some(&v[1]), Some(&v[2]), 1e-5),
            &[x.clone(), gamma, beta],
            tol,
        )
        .unwrap();
        gradcheck(|v| group_norm(&v[0], 2, None, None, 1e-5), &[x], tol).unwrap();
    }

    /// The fused op passes gradcheck and matches the composition in value and gradients.
    #[test]
    fn group_norm_silu_passes_gradcheck_and_matches_the_composition() {
        let x = randn(&[2, 6, 3, 3], 4);
        let gamma = randn(&[6], 5);
        let beta = randn(&[6], 6);
        let tol = Tolerance::default();
        gradcheck(
            |v| group_norm_silu(&v[0], 3, Some(&v[1]), Some(&v[2]), 1e-5),
            &[x.clone(), gamma.clone(), beta.clone()],
            tol,
        )
        .unwrap();
        gradcheck(
            |v| group_norm_silu(&v[0], 2, None, None, 1e-5),
            std::slice::from_ref(&x),
            tol,
        )
        .unwrap();
        let run = |fused: bool| {
            let graph = crate::Graph::new();
            let (xv, gv, bv) = (
                graph.leaf(x.clone()),
                graph.leaf(gamma.clone()),
                graph.leaf(beta.clone()),
            );
            let y = if fused {
                group_norm_silu(&xv, 3, Some(&gv), Some(&bv), 1e-5)
            } else {
                group_norm(&xv, 3, Some(&gv), Some(&bv), 1e-5).silu()
            };
            y.backward_with(randn(x.shape(), 7));
            [
                y.value().clone(),
                xv.grad().unwrap(),
                gv.grad().unwrap(),
                bv.grad().unwrap(),
            ]
        };
        let (a, b) = (run(true), run(false));
        for (what, (p, q)) in ["y", "dx", "dgamma", "dbeta"].iter().zip(a.iter().zip(&b)) {
            for (u, w) in p.data().iter().zip(q.data()) {
                assert!(
                    (u - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{what}: {u} vs {w}"
                );
            }
        }
    }
}
