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
    const OP: &str = "group_norm";
    let _prof = crate::profile::scope(OP, || format!("{:?} groups {groups}", x.shape()));
    let (n, c, hw) = split(OP, x, groups);
    check_channel_vector(OP, "gamma", gamma, x);
    check_channel_vector(OP, "beta", beta, x);
    let mut y = Tensor::zeros(x.shape());
    let mut mean = Tensor::zeros(&[n, groups]);
    let mut rstd = Tensor::zeros(&[n, groups]);
    norm::group_norm_forward(
        x.data(),
        n,
        c,
        hw,
        groups,
        eps,
        gamma.map(|t| t.data()),
        beta.map(|t| t.data()),
        y.data_mut(),
        mean.data_mut(),
        rstd.data_mut(),
    );
    (y, mean, rstd)
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
    const OP: &str = "group_norm_backward";
    let _prof = crate::profile::scope(OP, || format!("{:?} groups {groups}", x.shape()));
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
    let mut dx = Tensor::zeros(x.shape());
    let mut dgamma = Tensor::zeros(&[c]);
    let mut dbeta = Tensor::zeros(&[c]);
    norm::group_norm_backward(
        x.data(),
        grad_out.data(),
        n,
        c,
        hw,
        groups,
        mean.data(),
        rstd.data(),
        gamma.map(|t| t.data()),
        dx.data_mut(),
        Some(dgamma.data_mut()),
        Some(dbeta.data_mut()),
    );
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

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
