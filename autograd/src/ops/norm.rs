//! Group normalisation (Wu and He, 2018) with affine parameters.

use tensor::ops::norm::{
    group_norm as group_norm_forward, group_norm_backward, group_norm_backward_add,
    group_norm_silu_backward_parts, group_norm_silu_parts as group_norm_silu_forward,
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
/// the size of `x` is stored besides `x`. The fused op may take `x` as channel parts (the
/// concatenation never formed); each part gets its share of `dx`.
struct GroupNormRule {
    /// The input, or with `silu` its channel parts in order.
    x: Vec<Tensor>,
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

    fn backward(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        self.backward_accumulate(g, needs, vec![None; needs.len()])
    }

    /// When an input already has a gradient, the kernel adds its `dx` into it as it writes
    /// (no separate addition pass); the parameters' gradients are added as usual.
    fn backward_accumulate(
        &self,
        g: &Tensor,
        _needs: &[bool],
        mut acc: Vec<Option<Tensor>>,
    ) -> Vec<Option<Tensor>> {
        let (groups, mean, rstd) = (self.groups, &self.mean, &self.rstd);
        let gamma = self.gamma.as_ref();
        let parts = self.x.len();
        let (dx, dgamma, dbeta) = if self.silu {
            let x: Vec<&Tensor> = self.x.iter().collect();
            let into = acc[..parts].iter_mut().map(Option::as_mut).collect();
            let beta = self.beta.as_ref();
            group_norm_silu_backward_parts(&x, g, groups, mean, rstd, gamma, beta, into)
        } else {
            let x = &self.x[0];
            match acc[0].as_mut() {
                Some(grad_x) => {
                    let (dgamma, dbeta) =
                        group_norm_backward_add(x, g, groups, mean, rstd, gamma, grad_x);
                    (vec![None], dgamma, dbeta)
                }
                None => {
                    let (dx, dgamma, dbeta) = group_norm_backward(x, g, groups, mean, rstd, gamma);
                    (vec![Some(dx)], dgamma, dbeta)
                }
            }
        };
        // The inputs' gradients are in `acc` already where it had one; the rest are new.
        let mut grads = dx;
        if self.gamma.is_some() {
            grads.push(Some(dgamma));
        }
        if self.beta.is_some() {
            grads.push(Some(dbeta));
        }
        add_gradients(acc, grads)
    }
}

/// The op for [`group_norm`] (`silu` false, one part) and [`group_norm_silu_parts`] (`silu`
/// true).
fn group_norm_op(
    parts: &[&Var],
    groups: usize,
    gamma: Option<&Var>,
    beta: Option<&Var>,
    eps: f32,
    silu: bool,
) -> Var {
    let x: Vec<&Tensor> = parts.iter().map(|v| v.value()).collect();
    let (gamma_t, beta_t) = (gamma.map(|v| v.value()), beta.map(|v| v.value()));
    let (y, mean, rstd) = if silu {
        group_norm_silu_forward(&x, groups, gamma_t, beta_t, eps)
    } else {
        assert_eq!(parts.len(), 1, "group_norm: one input");
        group_norm_forward(x[0], groups, gamma_t, beta_t, eps)
    };
    let rule = GroupNormRule {
        x: x.into_iter().cloned().collect(),
        mean,
        rstd,
        gamma: gamma_t.cloned(),
        beta: beta_t.cloned(),
        groups,
        silu,
    };
    let inputs: Vec<&Var> = parts.iter().copied().chain(gamma).chain(beta).collect();
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
    group_norm_op(&[x], groups, gamma, beta, eps, false)
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
    group_norm_op(&[x], groups, gamma, beta, eps, true)
}

/// [`group_norm_silu`] of the concatenation of `parts` (`[N, C_i, ...]`, same `N` and trailing
/// dimensions) along the channel axis, without forming it: the kernel reads each part in
/// place, and each part's gradient is its share of `dx`. `gamma` and `beta` are `[sum C_i]`.
pub fn group_norm_silu_parts(
    parts: &[&Var],
    groups: usize,
    gamma: Option<&Var>,
    beta: Option<&Var>,
    eps: f32,
) -> Var {
    group_norm_op(parts, groups, gamma, beta, eps, true)
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

    /// On channel parts (a group straddling two of them) the fused op passes gradcheck, and
    /// equals the op on the concatenation in value and in every gradient; a part that also
    /// feeds another op gets the sum of both gradients.
    #[test]
    fn group_norm_silu_parts_passes_gradcheck_and_matches_the_concatenation() {
        let (a, b) = (randn(&[2, 5, 3, 3], 21), randn(&[2, 7, 3, 3], 22));
        let gamma = randn(&[12], 23);
        let beta = randn(&[12], 24);
        gradcheck(
            |v| group_norm_silu_parts(&[&v[0], &v[1]], 3, Some(&v[2]), Some(&v[3]), 1e-5),
            &[a.clone(), b.clone(), gamma.clone(), beta.clone()],
            Tolerance::default(),
        )
        .unwrap();
        let seed = randn(&[2, 12, 3, 3], 25);
        let run = |parts: bool| {
            let graph = crate::Graph::new();
            let (av, bv, gv, ev) = (
                graph.leaf(a.clone()),
                graph.leaf(b.clone()),
                graph.leaf(gamma.clone()),
                graph.leaf(beta.clone()),
            );
            let y = if parts {
                group_norm_silu_parts(&[&av, &bv], 3, Some(&gv), Some(&ev), 1e-5)
            } else {
                let x = Var::concat(&[&av, &bv], 1);
                group_norm_silu(&x, 3, Some(&gv), Some(&ev), 1e-5)
            };
            // `b` also feeds the output directly.
            let y = y.add(&Var::concat(&[&av.mul_scalar(0.0), &bv], 1));
            y.backward_with(seed.clone());
            [
                y.value().clone(),
                av.grad().unwrap(),
                bv.grad().unwrap(),
                gv.grad().unwrap(),
                ev.grad().unwrap(),
            ]
        };
        let (p, q) = (run(true), run(false));
        for (what, (u, w)) in ["y", "da", "db", "dgamma", "dbeta"]
            .iter()
            .zip(p.iter().zip(&q))
        {
            assert_eq!(u.shape(), w.shape(), "{what}");
            for (s, t) in u.data().iter().zip(w.data()) {
                assert!(
                    (s - t).abs() <= 1e-5 * (1.0 + t.abs()),
                    "{what}: {s} vs {t}"
                );
            }
        }
    }
}
