//! Training losses: `L_simple` (LS) and the hybrid loss of improved DDPM.

use std::f32::consts::{LN_2, PI};

use autograd::ops::loss::mse_loss;
use autograd::Var;
use tensor::Tensor;

use super::{per_sample, Diffusion, VarianceKind};

/// The weight of the bound in the hybrid loss (improved DDPM, section 3.1).
pub const HYBRID_LAMBDA: f32 = 0.001;

/// Which loss a training run minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// Eq. (LS).
    Simple,
    /// `L_simple + lambda * L_vlb` with a learned variance.
    Hybrid,
}

/// Eq. (LS): the mean over all elements of `(target - output)^2`, where the target is the
/// noise (or `x_0`, or `v`) the network should predict at `x_t`.
pub fn l_simple(output: &Var, target: &Tensor) -> Var {
    mse_loss(output, &Var::constant(target.clone()))
}

/// `Phi(z) ~ (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) / 2`: the smooth approximation of the
/// normal CDF that the DDPM reference code differentiates through.
fn approx_phi(z: &Var) -> Var {
    let inner = z
        .add(&z.pow_scalar(3.0).mul_scalar(0.044_715))
        .mul_scalar((2.0 / PI).sqrt());
    inner.tanh().add_scalar(1.0).mul_scalar(0.5)
}

/// `log(max(p, 1e-12))`.
fn safe_log(p: &Var) -> Var {
    p.maximum(&Var::constant(Tensor::scalar(1e-12))).log()
}

fn constant(t: Tensor) -> Var {
    Var::constant(t)
}

/// The mean over every axis but the first: `[N, ...] -> [N]`.
fn mean_per_sample(x: &Var) -> Var {
    let axes: Vec<isize> = (1..x.shape().len() as isize).collect();
    x.mean(&axes, false)
}

/// The hybrid loss of improved DDPM: `L_simple + lambda * T * L_{t-1}`, where `L_{t-1}` (in
/// bits per dimension, averaged over dimensions) is the term of the bound at the sampled step,
/// an unbiased estimate of `L_vlb / T`. The network's output has `2C` channels: the first `C`
/// are the prediction trained by `L_simple`, the last `C` the variance interpolation `v` of
/// [`VarianceKind::LearnedRange`]. The bound term sees the reverse-step mean with the
/// gradient stopped, so it trains only the variance:
///
/// - `t > 0`: eq. (KL) between the posterior (P1, P2) and `N(mu_frozen, sigma_t^2(v))`;
/// - `t = 0`: eq. (L0) with the smooth CDF approximation (so it can be differentiated).
///
/// Returns the loss and the per-sample bound terms (for loss-aware timestep sampling).
pub fn hybrid_loss(
    diffusion: &Diffusion,
    output: &Var,
    x0: &Tensor,
    xt: &Tensor,
    t: &[usize],
    target: &Tensor,
) -> (Var, Vec<f32>) {
    assert_eq!(
        diffusion.variance,
        VarianceKind::LearnedRange,
        "hybrid_loss: needs a learned-range variance"
    );
    let c = x0.shape()[1];
    let halves = output.split(&[c, c], 1);
    let simple = l_simple(&halves[0], target);

    // The reverse-step mean from the prediction with the gradient stopped.
    let frozen = diffusion.p_mean_variance(output.value(), xt, t, false);
    let mean = frozen.dist.mean;
    let s = &diffusion.schedule;
    let log_beta: Vec<f64> = s.betas.iter().map(|b| b.ln()).collect();
    let max = per_sample(&log_beta, t, x0.shape());
    let min = per_sample(&s.posterior_log_variance_clipped, t, x0.shape());
    // log sigma^2 = f max + (1 - f) min = min + f (max - min), f = (v + 1) / 2.
    let frac = halves[1].add_scalar(1.0).mul_scalar(0.5);
    let log_var = frac.mul(&constant(max.sub(&min))).add(&constant(min));

    let q = diffusion.q_posterior(x0, xt, t);
    // (KL) = ((lv2 - lv1) - 1 + e^(lv1 - lv2) + (m1 - m2)^2 e^(-lv2)) / 2 with lv2 learned.
    let sq = q.mean.sub(&mean).square();
    let kl = log_var
        .sub(&constant(q.log_var.add_scalar(1.0)))
        .add(&constant(q.log_var.clone()).sub(&log_var).exp())
        .add(&log_var.neg().exp().mul(&constant(sq)))
        .mul_scalar(0.5);
    let mut vb = mean_per_sample(&kl).mul_scalar(1.0 / LN_2);

    if t.contains(&0) {
        // (L0) for the samples at the first step.
        let centred = constant(x0.sub(&mean));
        let inv_s = log_var.mul_scalar(-0.5).exp();
        let cdf_plus = approx_phi(&inv_s.mul(&centred.add_scalar(1.0 / 255.0)));
        let cdf_min = approx_phi(&inv_s.mul(&centred.add_scalar(-1.0 / 255.0)));
        let low = x0.map(|x| if x < -0.999 { 1.0 } else { 0.0 });
        let high = x0.map(|x| if x > 0.999 { 1.0 } else { 0.0 });
        let middle = low.add(&high).rsub_scalar(1.0);
        let log_p = safe_log(&cdf_plus)
            .mul(&constant(low))
            .add(&safe_log(&cdf_min.neg().add_scalar(1.0)).mul(&constant(high)))
            .add(&safe_log(&cdf_plus.sub(&cdf_min)).mul(&constant(middle)));
        let nll = mean_per_sample(&log_p).mul_scalar(-1.0 / LN_2);
        let first: Vec<f32> = t.iter().map(|&i| if i == 0 { 1.0 } else { 0.0 }).collect();
        let first = Tensor::from_vec(first, &[t.len()]);
        vb = vb
            .mul(&constant(first.rsub_scalar(1.0)))
            .add(&nll.mul(&constant(first)));
    }
    let terms = vb.value().data().to_vec();
    let weight = HYBRID_LAMBDA * diffusion.schedule.len() as f32;
    (simple.add(&vb.mean_all().mul_scalar(weight)), terms)
}
