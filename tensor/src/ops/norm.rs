//! Group normalisation on [`Tensor`]s of shape `[N, C, ...]`, over
//! [`crate::kernels::norm`].
//!
//! ```
//! use tensor::{ops::norm::group_norm, Tensor};
//! let x = Tensor::from_vec(vec![1.0, 3.0, 5.0, 7.0], &[1, 2, 2]);
//! let (y, mean, rstd) = group_norm(&x, 1, None, None, 0.0);
//! assert_eq!(mean.data(), &[4.0]);
//! assert!((y.data()[0] + 1.3416408).abs() < 1e-6); // (1 - 4) / sqrt(5)
//! assert_eq!(rstd.shape(), &[1, 1]);
//! ```

use std::mem::MaybeUninit;

use super::alloc;
use crate::kernels::norm;
use crate::Tensor;

/// `(n, c, hw)` of an `[N, C, ...]` tensor.
fn split(op: &str, x: &Tensor, groups: usize) -> (usize, usize, usize) {
    let s = x.shape();
    assert!(s.len() >= 2, "{op}: x must be [N, C, ...], got shape {s:?}");
    assert!(
        groups > 0 && s[1] / groups * groups == s[1],
        "{op}: {groups} groups do not divide the {} channels of x {s:?}",
        s[1]
    );
    (s[0], s[1], s[2..].iter().product())
}

fn check_channel_vector(op: &str, what: &str, t: Option<&Tensor>, x: &Tensor) {
    if let Some(t) = t {
        assert_eq!(
            t.shape(),
            &[x.shape()[1]],
            "{op}: {what} shape {:?} does not match the channels of x {:?}",
            t.shape(),
            x.shape()
        );
    }
}

/// Group norm forward: `y = gamma[c] * (x - mean[n, g]) * rstd[n, g] + beta[c]` with the
/// (biased) mean and `rstd = 1 / sqrt(var + eps)` of each image's group of `C / groups`
/// channels. Returns `(y, mean, rstd)`, the last two `[N, groups]` (saved for backward).
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> (Tensor, Tensor, Tensor) {
    forward("group_norm", x, groups, gamma, beta, eps, false)
}

/// `silu(group_norm(x))` in one pass: returns `(silu(z), mean, rstd)` where `z` is
/// [`group_norm`]'s output (recomputed by [`group_norm_silu_backward`], never stored).
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> (Tensor, Tensor, Tensor) {
    forward("group_norm_silu", x, groups, gamma, beta, eps, true)
}

fn forward(
    op: &'static str,
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    silu: bool,
) -> (Tensor, Tensor, Tensor) {
    const OP: &str = "group_norm";
    let _prof = crate::profile::scope(op, || format!("{:?} groups {groups}", x.shape()));
    let (n, c, hw) = split(OP, x, groups);
    check_channel_vector(OP, "gamma", gamma, x);
    check_channel_vector(OP, "beta", beta, x);
    let mut mean = Tensor::zeros(&[n, groups]);
    let mut rstd = Tensor::zeros(&[n, groups]);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        norm::forward_impl(
            op,
            x.data(),
            (n, c, hw, groups),
            eps,
            gamma.map(|t| t.data()),
            beta.map(|t| t.data()),
            y,
            mean.data_mut(),
            rstd.data_mut(),
            silu,
        )
    };
    // SAFETY: the kernel writes every element of its output.
    let y = unsafe { alloc::filled_by(x.data().len(), fill) };
    (Tensor::from_vec(y, x.shape()), mean, rstd)
}

/// Group norm backward: with `xhat = (x - mean) * rstd` and `g = dy * gamma[c]`, per (image,
/// group), `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`, `dgamma[c] = sum dy * xhat`,
/// `dbeta[c] = sum dy`. Returns `(dx, dgamma, dbeta)`, the last two `[C]`.
pub fn group_norm_backward(
    x: &Tensor,
    grad_out: &Tensor,
    groups: usize,
    mean: &Tensor,
    rstd: &Tensor,
    gamma: Option<&Tensor>,
) -> (Tensor, Tensor, Tensor) {
    let (dx, dgamma, dbeta) = backward(
        "group_norm_backward",
        x,
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        None,
        None,
    );
    (dx.expect("a fresh input gradient"), dgamma, dbeta)
}

/// [`group_norm_backward`] adding `dx` into `grad_x` (a gradient that reached `x` by another
/// path) as it is computed: `grad_x + dx` with the bits of adding the two tensors, without
/// that pass over memory. Returns `(dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward_add(
    x: &Tensor,
    grad_out: &Tensor,
    groups: usize,
    mean: &Tensor,
    rstd: &Tensor,
    gamma: Option<&Tensor>,
    grad_x: &mut Tensor,
) -> (Tensor, Tensor) {
    let (_, dgamma, dbeta) = backward(
        "group_norm_backward",
        x,
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        None,
        Some(grad_x),
    );
    (dgamma, dbeta)
}

/// The gradients `(dx, dgamma, dbeta)` of [`group_norm_silu`] given the gradient of its
/// output: the normalised values are recomputed from `x`, the saved `mean` and `rstd`,
/// `gamma` and `beta`.
pub fn group_norm_silu_backward(
    x: &Tensor,
    grad_out: &Tensor,
    groups: usize,
    mean: &Tensor,
    rstd: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
) -> (Tensor, Tensor, Tensor) {
    check_channel_vector("group_norm_silu_backward", "beta", beta, x);
    let (dx, dgamma, dbeta) = backward(
        "group_norm_silu_backward",
        x,
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        Some(beta),
        None,
    );
    (dx.expect("a fresh input gradient"), dgamma, dbeta)
}

/// [`group_norm_silu_backward`] adding `dx` into `grad_x` (a gradient that reached `x` by
/// another path) as it is computed: `grad_x + dx` with the bits of adding the two tensors,
/// without that pass over memory. Returns `(dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_backward_add(
    x: &Tensor,
    grad_out: &Tensor,
    groups: usize,
    mean: &Tensor,
    rstd: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    grad_x: &mut Tensor,
) -> (Tensor, Tensor) {
    check_channel_vector("group_norm_silu_backward", "beta", beta, x);
    let (_, dgamma, dbeta) = backward(
        "group_norm_silu_backward",
        x,
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        Some(beta),
        Some(grad_x),
    );
    (dgamma, dbeta)
}

/// The backward pass of both ops; `dx` fresh, or added into `add_to` (then `None` is returned
/// in its place).
#[allow(clippy::too_many_arguments)]
fn backward(
    op: &'static str,
    x: &Tensor,
    grad_out: &Tensor,
    groups: usize,
    (mean, rstd): (&Tensor, &Tensor),
    gamma: Option<&Tensor>,
    silu_beta: Option<Option<&Tensor>>,
    add_to: Option<&mut Tensor>,
) -> (Option<Tensor>, Tensor, Tensor) {
    const OP: &str = "group_norm_backward";
    let _prof = crate::profile::scope(op, || format!("{:?} groups {groups}", x.shape()));
    let (n, c, hw) = split(OP, x, groups);
    assert_eq!(
        grad_out.shape(),
        x.shape(),
        "{OP}: grad_out shape {:?} differs from x {:?}",
        grad_out.shape(),
        x.shape()
    );
    for (what, t) in [("mean", mean), ("rstd", rstd)] {
        assert_eq!(
            t.shape(),
            &[n, groups],
            "{OP}: {what} shape {:?} is not [N, groups] = [{n}, {groups}] for x {:?}",
            t.shape(),
            x.shape()
        );
    }
    check_channel_vector(OP, "gamma", gamma, x);
    let mut dgamma = Tensor::zeros(&[c]);
    let mut dbeta = Tensor::zeros(&[c]);
    let mut fill = |dx: &mut [MaybeUninit<f32>], add: bool| {
        norm::backward_impl(
            op,
            x.data(),
            grad_out.data(),
            (n, c, hw, groups),
            (mean.data(), rstd.data()),
            gamma.map(|t| t.data()),
            silu_beta.map(|b| b.map(|t| t.data())),
            (dx, add),
            Some(dgamma.data_mut()),
            Some(dbeta.data_mut()),
        )
    };
    let dx = match add_to {
        Some(acc) => {
            assert_eq!(
                acc.shape(),
                x.shape(),
                "{OP}: the gradient to add to has shape {:?}, x {:?}",
                acc.shape(),
                x.shape()
            );
            // A copy first only if the storage is shared.
            fill(alloc::as_uninit(acc.data_mut()), true);
            None
        }
        None => {
            // SAFETY: the kernel writes every element of the input gradient.
            let dx = unsafe { alloc::filled_by(x.data().len(), |dx| fill(dx, false)) };
            Some(Tensor::from_vec(dx, x.shape()))
        }
    };
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused op equals SiLU after the group norm, and its backward pass equals the group
    /// norm's backward pass of `dy * silu'(z)`, on every instruction set the CPU has (and odd
    /// sizes, so the vector tails run).
    #[test]
    fn group_norm_silu_matches_the_composition() {
        let _guard = super::super::testutil::isa_lock();
        let x = Tensor::randn(&[3, 6, 5, 7], 1, 0)
            .mul_scalar(2.0)
            .add_scalar(0.5);
        let gamma = Tensor::randn(&[6], 2, 0);
        let beta = Tensor::randn(&[6], 3, 0);
        let dy = Tensor::randn(x.shape(), 4, 0);
        let check = || {
            let (y, mean, rstd) = group_norm_silu(&x, 3, Some(&gamma), Some(&beta), 1e-5);
            let (z, mean0, rstd0) = group_norm(&x, 3, Some(&gamma), Some(&beta), 1e-5);
            assert_eq!(mean.data(), mean0.data());
            assert_eq!(rstd.data(), rstd0.data());
            for (a, b) in y.data().iter().zip(z.silu().data()) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "forward {a} vs {b}"
                );
            }
            let s = z.sigmoid();
            let dz = dy.mul(&s.mul(&z.mul(&s.rsub_scalar(1.0)).add_scalar(1.0)));
            let want = group_norm_backward(&x, &dz, 3, &mean, &rstd, Some(&gamma));
            let got = group_norm_silu_backward(&x, &dy, 3, &mean, &rstd, Some(&gamma), Some(&beta));
            for (what, a, b) in [
                ("dx", &got.0, &want.0),
                ("dgamma", &got.1, &want.1),
                ("dbeta", &got.2, &want.2),
            ] {
                let scale = b.data().iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (p, q) in a.data().iter().zip(b.data()) {
                    assert!((p - q).abs() <= 2e-5 * scale, "{what}: {p} vs {q}");
                }
            }
        };
        check();
        crate::kernels::cpu::with_portable(check);
    }

    /// Each group of the output has mean ~0 and variance ~1 (no affine), and backward of a
    /// constant gradient gives dx ~ 0, per-group sums of dgamma ~ 0 and dbeta = the count.
    #[test]
    fn group_norm_op_normalises_each_group() {
        let data: Vec<f32> = (0..2 * 4 * 3 * 3)
            .map(|i| (i as f32 * 0.37).sin() * 5.0 + 2.0)
            .collect();
        let x = Tensor::from_vec(data, &[2, 4, 3, 3]);
        let (y, mean, rstd) = group_norm(&x, 2, None, None, 1e-6);
        assert_eq!(mean.shape(), &[2, 2]);
        for block in y.data().chunks(18) {
            let m: f64 = block.iter().map(|&v| v as f64).sum::<f64>() / 18.0;
            let v: f64 = block.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / 18.0;
            assert!(
                m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4,
                "mean {m}, var {v}"
            );
        }
        let (dx, dgamma, dbeta) =
            group_norm_backward(&x, &Tensor::ones(x.shape()), 2, &mean, &rstd, None);
        assert!(dx.data().iter().all(|v| v.abs() < 1e-4));
        // xhat sums to zero over each group, so dgamma does over each group's channels.
        let dg = dgamma.data();
        assert!((dg[0] + dg[1]).abs() < 1e-4 && (dg[2] + dg[3]).abs() < 1e-4);
        assert_eq!(dbeta.data(), &[18.0; 4]);
    }

    #[test]
    #[should_panic(expected = "group_norm: 3 groups do not divide the 4 channels")]
    fn group_norm_op_panics_on_bad_groups() {
        group_norm(&Tensor::zeros(&[1, 4, 2]), 3, None, None, 1e-5);
    }
}
