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
use crate::kernels::norm::{self, Prior};
use crate::Tensor;

/// The one input gradient of a single-input backward pass with nothing to add to.
fn fresh_gradient(dx: Vec<Option<Tensor>>) -> Tensor {
    dx.into_iter()
        .next()
        .flatten()
        .expect("a fresh input gradient")
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
    forward("group_norm", &[x], groups, gamma, beta, eps, false)
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
    forward("group_norm_silu", &[x], groups, gamma, beta, eps, true)
}

/// `silu(group_norm(concat(parts, axis 1)))` without the concatenation: `parts` are
/// `[N, C_i, ...]` tensors with the same `N` and trailing dimensions, read in place (a group
/// may take its channels from two parts); `gamma` and `beta` are `[sum C_i]`. Returns `(y,
/// mean, rstd)` as [`group_norm_silu`] on the concatenation does, with the same bits (both
/// walk the rows of each group in the same order).
pub fn group_norm_silu_parts(
    parts: &[&Tensor],
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> (Tensor, Tensor, Tensor) {
    forward("group_norm_silu", parts, groups, gamma, beta, eps, true)
}

/// The shape of the concatenation of `parts` along axis 1, and its `(n, c, hw)`. Panics,
/// naming `op` and the shapes, unless the parts are `[N, C_i, ...]` with the same `N` and
/// trailing dimensions and `groups` divides `sum C_i`.
fn parts_shape(op: &str, parts: &[&Tensor], groups: usize) -> (Vec<usize>, (usize, usize, usize)) {
    let shapes: Vec<&[usize]> = parts.iter().map(|t| t.shape()).collect();
    assert!(!parts.is_empty(), "{op}: no input given");
    let first = shapes[0];
    assert!(
        first.len() >= 2
            && shapes
                .iter()
                .all(|s| s.len() == first.len() && s[0] == first[0] && s[2..] == first[2..]),
        "{op}: parts {shapes:?} are not [N, C_i, ...] with the same N and trailing dimensions"
    );
    let mut shape = first.to_vec();
    shape[1] = shapes.iter().map(|s| s[1]).sum();
    assert!(
        groups > 0 && shape[1] / groups * groups == shape[1],
        "{op}: {groups} groups do not divide the {} channels of x {shapes:?}",
        shape[1]
    );
    let hw = shape[2..].iter().product();
    let nch = (shape[0], shape[1], hw);
    (shape, nch)
}

fn check_channels(op: &str, what: &str, t: Option<&Tensor>, shape: &[usize]) {
    if let Some(t) = t {
        assert_eq!(
            t.shape(),
            &[shape[1]],
            "{op}: {what} shape {:?} does not match the channels of x {shape:?}",
            t.shape(),
        );
    }
}

/// The profiler's label of a group norm's input: its shape, or with several parts the
/// channel counts joined by `+`.
fn label(parts: &[&Tensor], groups: usize) -> String {
    let mut shape: Vec<String> = parts[0].shape().iter().map(|d| d.to_string()).collect();
    if parts.len() > 1 {
        let channels: Vec<String> = parts.iter().map(|t| t.shape()[1].to_string()).collect();
        shape[1] = channels.join("+");
    }
    format!("[{}] groups {groups}", shape.join(", "))
}

fn forward(
    op: &'static str,
    parts: &[&Tensor],
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    silu: bool,
) -> (Tensor, Tensor, Tensor) {
    const OP: &str = "group_norm";
    let (shape, (n, c, hw)) = parts_shape(OP, parts, groups);
    let _prof = crate::profile::scope(op, || label(parts, groups));
    check_channels(OP, "gamma", gamma, &shape);
    check_channels(OP, "beta", beta, &shape);
    let mut mean = Tensor::zeros(&[n, groups]);
    let mut rstd = Tensor::zeros(&[n, groups]);
    let sources: Vec<(&[f32], usize)> = parts.iter().map(|t| (t.data(), t.shape()[1])).collect();
    let rows = norm::rows_of_parts(OP, &sources, n, hw);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        norm::forward_impl(
            op,
            &rows,
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
    let y = unsafe { alloc::filled_by(n * c * hw, fill) };
    (Tensor::from_vec(y, &shape), mean, rstd)
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
        &[x],
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        None,
        vec![None],
    );
    (fresh_gradient(dx), dgamma, dbeta)
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
        &[x],
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        None,
        vec![Some(grad_x)],
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
    let (dx, dgamma, dbeta) = backward(
        "group_norm_silu_backward",
        &[x],
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        Some(beta),
        vec![None],
    );
    (fresh_gradient(dx), dgamma, dbeta)
}

/// The gradients of [`group_norm_silu_parts`] (or, with one part, of [`group_norm_silu`]) given
/// the gradient of its output: for each part, its share of `dx`, added into `acc[i]` if given (then `None` is returned in its place,
/// with the bits of adding the tensors afterwards), else a fresh tensor; then `(dgamma,
/// dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_backward_parts(
    parts: &[&Tensor],
    grad_out: &Tensor,
    groups: usize,
    mean: &Tensor,
    rstd: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    acc: Vec<Option<&mut Tensor>>,
) -> (Vec<Option<Tensor>>, Tensor, Tensor) {
    backward(
        "group_norm_silu_backward",
        parts,
        grad_out,
        groups,
        (mean, rstd),
        gamma,
        Some(beta),
        acc,
    )
}

/// The backward pass of every op here, on the input held as `parts`: each part's share of
/// `dx` fresh, or added into its entry of `acc` (then `None` is returned in its place).
#[allow(clippy::too_many_arguments)]
fn backward(
    op: &'static str,
    parts: &[&Tensor],
    grad_out: &Tensor,
    groups: usize,
    (mean, rstd): (&Tensor, &Tensor),
    gamma: Option<&Tensor>,
    silu_beta: Option<Option<&Tensor>>,
    acc: Vec<Option<&mut Tensor>>,
) -> (Vec<Option<Tensor>>, Tensor, Tensor) {
    const OP: &str = "group_norm_backward";
    let (shape, (n, c, hw)) = parts_shape(OP, parts, groups);
    let _prof = crate::profile::scope(op, || label(parts, groups));
    assert_eq!(
        grad_out.shape(),
        &shape[..],
        "{OP}: grad_out shape {:?} differs from x {shape:?}",
        grad_out.shape(),
    );
    for (what, t) in [("mean", mean), ("rstd", rstd)] {
        assert_eq!(
            t.shape(),
            &[n, groups],
            "{OP}: {what} shape {:?} is not [N, groups] = [{n}, {groups}] for x {shape:?}",
            t.shape(),
        );
    }
    check_channels(OP, "gamma", gamma, &shape);
    if let Some(beta) = silu_beta {
        check_channels(OP, "beta", beta, &shape);
    }
    assert_eq!(
        acc.len(),
        parts.len(),
        "{OP}: {} gradients to add to for {} parts",
        acc.len(),
        parts.len()
    );
    let mut dgamma = Tensor::zeros(&[c]);
    let mut dbeta = Tensor::zeros(&[c]);
    let sources: Vec<(&[f32], usize)> = parts.iter().map(|t| (t.data(), t.shape()[1])).collect();
    let rows = norm::rows_of_parts(OP, &sources, n, hw);
    // Fresh storage for the parts with nothing to add to, and for those whose gradient to add
    // to is shared (as when a deferred weight gradient still reads it): their sum is written
    // there, rather than the shared storage copied first and added into.
    let shared: Vec<Option<Tensor>> = acc
        .iter()
        .map(|a| a.as_ref().filter(|a| a.is_shared()).map(|a| (*a).clone()))
        .collect();
    let mut fresh: Vec<Option<Vec<f32>>> = acc
        .iter()
        .zip(&shared)
        .zip(parts)
        .map(|((a, s), t)| {
            (a.is_none() || s.is_some()).then(|| alloc::with_capacity(t.data().len()))
        })
        .collect();
    let mut targets = Vec::with_capacity(parts.len());
    let mut replaced = Vec::with_capacity(parts.len());
    for (((a, f), s), t) in acc
        .into_iter()
        .zip(fresh.iter_mut())
        .zip(&shared)
        .zip(parts)
    {
        let channels = t.shape()[1];
        if let Some(a) = &a {
            assert_eq!(
                a.shape(),
                t.shape(),
                "{OP}: the gradient to add to has shape {:?}, x {:?}",
                a.shape(),
                t.shape()
            );
        }
        let len = t.data().len();
        match (a, f, s) {
            (Some(a), Some(f), Some(s)) => {
                targets.push((
                    &mut f.spare_capacity_mut()[..len],
                    channels,
                    Prior::From(s.data()),
                ));
                replaced.push(Some(a));
            }
            (Some(a), None, None) => {
                targets.push((alloc::as_uninit(a.data_mut()), channels, Prior::Held));
                replaced.push(None);
            }
            (None, Some(f), None) => {
                targets.push((&mut f.spare_capacity_mut()[..len], channels, Prior::Nothing));
                replaced.push(None);
            }
            _ => unreachable!(
                "fresh storage exactly for the parts without a gradient or with a shared one"
            ),
        }
    }
    norm::backward_impl(
        op,
        &rows,
        grad_out.data(),
        (n, c, hw, groups),
        (mean.data(), rstd.data()),
        gamma.map(|t| t.data()),
        silu_beta.map(|b| b.map(|t| t.data())),
        norm::out_rows_of_parts(OP, targets, n, hw),
        Some(dgamma.data_mut()),
        Some(dbeta.data_mut()),
    );
    let dx = fresh
        .into_iter()
        .zip(replaced)
        .zip(parts)
        .map(|((f, replaced), t)| {
            let sum = f.map(|mut v| {
                // SAFETY: the kernel wrote every element of each fresh gradient.
                unsafe { v.set_len(t.data().len()) };
                Tensor::from_vec(v, t.shape())
            });
            match replaced {
                // The sum takes the shared gradient's place.
                Some(acc) => {
                    *acc = sum.expect("fresh storage for a shared gradient");
                    None
                }
                None => sum,
            }
        })
        .collect();
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

    /// The fused op on channel parts read in place equals it on their concatenation bit for
    /// bit (groups of 4 channels, parts of 5, 2 and 5, so two groups straddle parts), both
    /// passes and with or without gradients to add to, with `H * W` a multiple of 8 or not.
    #[test]
    fn group_norm_silu_parts_equals_it_on_the_concatenation() {
        for hw in [(4, 4), (3, 3)] {
            let parts: Vec<Tensor> = [5, 2, 5]
                .iter()
                .enumerate()
                .map(|(i, &c)| Tensor::randn(&[3, c, hw.0, hw.1], 10 + i as u64, 0).add_scalar(1.5))
                .collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            let x = Tensor::concat(&refs, 1);
            let gamma = Tensor::randn(&[12], 2, 0);
            let beta = Tensor::randn(&[12], 3, 0);
            let dy = Tensor::randn(x.shape(), 4, 0);
            let close = |what: &str, a: &Tensor, b: &Tensor| {
                assert_eq!(a.shape(), b.shape(), "{what}");
                for (p, q) in a.data().iter().zip(b.data()) {
                    assert_eq!(p.to_bits(), q.to_bits(), "{what}: {p} vs {q}");
                }
            };
            let (y, mean, rstd) = group_norm_silu_parts(&refs, 3, Some(&gamma), Some(&beta), 1e-5);
            let (y0, mean0, rstd0) = group_norm_silu(&x, 3, Some(&gamma), Some(&beta), 1e-5);
            close("y", &y, &y0);
            close("mean", &mean, &mean0);
            close("rstd", &rstd, &rstd0);
            let (dx0, dgamma0, dbeta0) =
                group_norm_silu_backward(&x, &dy, 3, &mean0, &rstd0, Some(&gamma), Some(&beta));
            let want = dx0.split(&[5, 2, 5], 1);
            // Part 1 has a gradient already (ones), the others none.
            let mut earlier = Tensor::ones(parts[1].shape());
            let acc = vec![None, Some(&mut earlier), None];
            let (dx, dgamma, dbeta) = group_norm_silu_backward_parts(
                &refs,
                &dy,
                3,
                &mean,
                &rstd,
                Some(&gamma),
                Some(&beta),
                acc,
            );
            assert!(dx[1].is_none(), "the gradient added to is not returned");
            close("dx part 0", dx[0].as_ref().unwrap(), &want[0]);
            close("dx part 1", &earlier, &want[1].add_scalar(1.0));
            close("dx part 2", dx[2].as_ref().unwrap(), &want[2]);
            close("dgamma", &dgamma, &dgamma0);
            close("dbeta", &dbeta, &dbeta0);
        }
    }

    /// A gradient to add to whose storage another tensor shares (as a deferred weight gradient
    /// shares its output gradient with a residual's) gets the same bits as one held alone,
    /// written to fresh storage: the other tensor keeps its values.
    #[test]
    fn a_shared_gradient_to_add_to_is_not_written_through() {
        let x = Tensor::randn(&[2, 8, 5, 5], 20, 0);
        let dy = Tensor::randn(x.shape(), 21, 0);
        let earlier = Tensor::randn(x.shape(), 22, 0);
        let kept = earlier.data().to_vec();
        let (_, mean, rstd) = group_norm_silu(&x, 4, None, None, 1e-5);
        let mut alone = Tensor::from_vec(kept.clone(), x.shape());
        let mut shared = earlier.clone();
        assert!(shared.is_shared() && !alone.is_shared());
        for target in [&mut alone, &mut shared] {
            let (dx, _, _) = group_norm_silu_backward_parts(
                &[&x],
                &dy,
                4,
                &mean,
                &rstd,
                None,
                None,
                vec![Some(target)],
            );
            assert!(dx[0].is_none());
        }
        let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&shared), bits(&alone));
        assert_eq!(
            earlier.data(),
            &kept[..],
            "the other holder's values changed"
        );
        assert!(!shared.is_shared());
        // The plain group norm's backward pass, likewise.
        let mut alone = Tensor::from_vec(kept.clone(), x.shape());
        let mut shared = earlier.clone();
        for target in [&mut alone, &mut shared] {
            group_norm_backward_add(&x, &dy, 4, &mean, &rstd, None, target);
        }
        assert_eq!(bits(&shared), bits(&alone));
        assert_eq!(
            earlier.data(),
            &kept[..],
            "the other holder's values changed"
        );
    }

    #[test]
    #[should_panic(expected = "are not [N, C_i, ...] with the same N and trailing dimensions")]
    fn group_norm_silu_parts_panics_on_parts_of_other_sizes() {
        let (a, b) = (Tensor::zeros(&[1, 4, 2, 2]), Tensor::zeros(&[1, 4, 2, 3]));
        group_norm_silu_parts(&[&a, &b], 2, None, None, 1e-5);
    }
}
