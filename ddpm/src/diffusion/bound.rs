//! The variational bound: the prior term (LT), the Gaussian KL terms (Lt, KL), the decoder
//! (L0), and bits per dimension (BPD). Everything here is evaluation: computed in f64 from
//! f32 tensors, with no gradient.

use std::f64::consts::{LN_2, PI, SQRT_2};

use tensor::rng::Rng;
use tensor::Tensor;

use super::{Diffusion, Gaussian};

/// Eq. (KL), per dimension, written with log-variances:
/// `KL(N(m1, e^lv1) || N(m2, e^lv2)) = (lv2 - lv1)/2 + (e^lv1 + (m1 - m2)^2) / (2 e^lv2) - 1/2`,
/// which is `log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2` with the *second*
/// distribution's variance in the denominator.
pub fn normal_kl(m1: f64, lv1: f64, m2: f64, lv2: f64) -> f64 {
    0.5 * (-1.0 + lv2 - lv1 + (lv1 - lv2).exp() + (m1 - m2).powi(2) * (-lv2).exp())
}

/// The complementary error function, to about 1.2e-7 relative accuracy for every x (the
/// Chebyshev-fitted exponential form in Numerical Recipes, section 6.2).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The standard normal CDF `Phi(z)`.
fn phi(z: f64) -> f64 {
    0.5 * erfc(-z / SQRT_2)
}

/// The standard normal upper tail `1 - Phi(z)`, accurate where `Phi(z)` is close to 1.
fn phi_upper(z: f64) -> f64 {
    0.5 * erfc(z / SQRT_2)
}

/// Probabilities below this are clamped before the log, as the reference implementations do.
const MIN_PROB: f64 = 1e-12;

/// Eq. (L0): `log p(x)` for one 8-bit pixel value `x` in [-1, 1] under `N(mean, e^(2 log_scale))`
/// discretised into bins of width 2/255: `log(Phi((x + 1/255 - mean)/s) - Phi((x - 1/255 - mean)/s))`,
/// the lowest bin extended to -inf and the highest to +inf. Differences of upper tails are
/// used where both CDF values are near 1, and the probability is clamped at 1e-12.
pub fn discretized_gaussian_log_likelihood(x: f64, mean: f64, log_scale: f64) -> f64 {
    let inv_s = (-log_scale).exp();
    let lower = (x - 1.0 / 255.0 - mean) * inv_s;
    let upper = (x + 1.0 / 255.0 - mean) * inv_s;
    let p = if x < -0.999 {
        phi(upper)
    } else if x > 0.999 {
        phi_upper(lower)
    } else if lower > 0.0 {
        phi_upper(lower) - phi_upper(upper)
    } else {
        phi(upper) - phi(lower)
    };
    p.max(MIN_PROB).ln()
}

/// `log N(x; mean, e^(2 log_scale))`, the density of a continuous Gaussian decoder.
pub fn continuous_gaussian_log_likelihood(x: f64, mean: f64, log_scale: f64) -> f64 {
    let z = (x - mean) * (-log_scale).exp();
    -0.5 * z * z - log_scale - 0.5 * (2.0 * PI).ln()
}

/// How the last step `p(x_0 | x_1)` assigns likelihood to data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// 8-bit data: the discretised Gaussian of eq. (L0).
    Discretized,
    /// Continuous data: the Gaussian density.
    Continuous,
}

/// The terms of the bound for a batch, in nats per sample (summed over its dimensions).
#[derive(Clone, Debug)]
pub struct BoundTerms {
    /// Dimensions of one sample (D).
    pub dims: usize,
    /// Steps of the schedule (T).
    pub steps: usize,
    /// (LT) per sample.
    pub prior: Vec<f64>,
    /// The evaluated step indices, and for each the per-sample term: (L0) at index 0, (Lt) =
    /// `L_{t-1}` at index `t - 1 > 0`.
    pub terms: Vec<(usize, Vec<f64>)>,
    /// Per evaluated step, the per-sample mean squared error of the predicted noise.
    pub eps_mse: Vec<(usize, Vec<f64>)>,
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

impl BoundTerms {
    /// Nats to bits per dimension, eq. (BPD).
    fn bpd(&self, nats: f64) -> f64 {
        nats / (self.dims as f64 * LN_2)
    }

    /// The batch mean of (LT) in bits/dim.
    pub fn prior_bpd(&self) -> f64 {
        self.bpd(mean(&self.prior))
    }

    /// The batch mean of the decoder term (L0) in bits/dim, if step 0 was evaluated.
    pub fn decoder_bpd(&self) -> Option<f64> {
        self.terms
            .iter()
            .find(|(i, _)| *i == 0)
            .map(|(_, v)| self.bpd(mean(v)))
    }

    /// Per evaluated step: (index, batch mean of its term in bits/dim).
    pub fn per_step_bpd(&self) -> Vec<(usize, f64)> {
        self.terms
            .iter()
            .map(|(i, v)| (*i, self.bpd(mean(v))))
            .collect()
    }

    /// The batch mean of the sum of the KL terms (Lt), scaled by `(T - 1) / (evaluated KL
    /// steps)` when only a subset of steps was evaluated (an unbiased estimate for a uniform
    /// subset), in bits/dim.
    pub fn kl_bpd(&self) -> f64 {
        let kl: Vec<&(usize, Vec<f64>)> = self.terms.iter().filter(|(i, _)| *i > 0).collect();
        if kl.is_empty() {
            return 0.0;
        }
        let sum: f64 = kl.iter().map(|(_, v)| mean(v)).sum();
        self.bpd(sum * (self.steps - 1) as f64 / kl.len() as f64)
    }

    /// The whole bound `L_T + sum L_{t-1} + L_0` in bits/dim (batch mean).
    pub fn total_bpd(&self) -> f64 {
        self.prior_bpd() + self.kl_bpd() + self.decoder_bpd().unwrap_or(0.0)
    }
}

/// Sums `f(a_i, b_i, c_i, d_i)` over each sample's elements.
fn per_sample_sum(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: &Tensor,
    f: impl Fn(f64, f64, f64, f64) -> f64,
) -> Vec<f64> {
    let n = a.shape()[0];
    let per = a.numel() / n.max(1);
    (0..n)
        .map(|s| {
            let r = s * per..(s + 1) * per;
            let (a, b, c, d) = (
                &a.data()[r.clone()],
                &b.data()[r.clone()],
                &c.data()[r.clone()],
                &d.data()[r],
            );
            (0..per)
                .map(|i| f(a[i] as f64, b[i] as f64, c[i] as f64, d[i] as f64))
                .sum()
        })
        .collect()
}

impl Diffusion {
    /// Eq. (LT) per sample: `KL(q(x_T | x_0) || N(0, I))` summed over dimensions.
    pub fn prior_nats(&self, x0: &Tensor) -> Vec<f64> {
        let last = vec![self.schedule.len() - 1; x0.shape()[0]];
        let q = self.q_marginal(x0, &last);
        let zeros = Tensor::zeros(x0.shape());
        per_sample_sum(&q.mean, &q.log_var, &zeros, &zeros, normal_kl)
    }

    /// One term of the bound per sample, at step index `t[n]`: the decoder (L0) where the index
    /// is 0, else (Lt) `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`; `p` is the reverse step
    /// `model_step` the network gave at `x_t`.
    pub fn vb_term_nats(
        &self,
        model_step: &Gaussian,
        x0: &Tensor,
        xt: &Tensor,
        t: &[usize],
        decoder: Decoder,
    ) -> Vec<f64> {
        let q = self.q_posterior(x0, xt, t);
        let kl = per_sample_sum(
            &q.mean,
            &q.log_var,
            &model_step.mean,
            &model_step.log_var,
            normal_kl,
        );
        let log_scale = model_step.log_var.mul_scalar(0.5);
        let nll = per_sample_sum(
            x0,
            &model_step.mean,
            &log_scale,
            &log_scale,
            |x, m, ls, _| match decoder {
                Decoder::Discretized => -discretized_gaussian_log_likelihood(x, m, ls),
                Decoder::Continuous => -continuous_gaussian_log_likelihood(x, m, ls),
            },
        );
        t.iter()
            .enumerate()
            .map(|(n, &i)| if i == 0 { nll[n] } else { kl[n] })
            .collect()
    }

    /// Estimates every term of the bound for the batch `x0` by sampling `x_t ~ q(x_t | x_0)`
    /// at each step index in `steps` (all steps when `None`) and asking `model(x_t, timesteps)`
    /// for its output. `clip` clips the predicted `x_0` as sampling does.
    pub fn bound(
        &self,
        model: &mut dyn FnMut(&Tensor, &[usize]) -> Tensor,
        x0: &Tensor,
        rng: &mut Rng,
        decoder: Decoder,
        clip: bool,
        steps: Option<&[usize]>,
    ) -> BoundTerms {
        let n = x0.shape()[0];
        let all: Vec<usize> = (0..self.schedule.len()).collect();
        let steps = steps.unwrap_or(&all);
        let mut terms = Vec::with_capacity(steps.len());
        let mut eps_mse = Vec::with_capacity(steps.len());
        for &i in steps.iter().rev() {
            // The pool's workers stay awake through the step's many parallel ops, as in
            // sampling.
            let _awake = tensor::awake::keep_awake();
            let t = vec![i; n];
            let eps = rng.normal_like(x0);
            let xt = self.q_sample(x0, &t, &eps);
            let timesteps: Vec<usize> = t.iter().map(|&i| self.schedule.timesteps[i]).collect();
            let output = model(&xt, &timesteps);
            let step = self.p_mean_variance(&output, &xt, &t, clip);
            terms.push((i, self.vb_term_nats(&step.dist, x0, &xt, &t, decoder)));
            let zeros = Tensor::zeros(x0.shape());
            let se = per_sample_sum(&step.pred_eps, &eps, &zeros, &zeros, |a, b, _, _| {
                (a - b).powi(2)
            });
            let per = (x0.numel() / n.max(1)) as f64;
            eps_mse.push((i, se.into_iter().map(|s| s / per).collect()));
        }
        terms.reverse();
        eps_mse.reverse();
        BoundTerms {
            dims: x0.numel() / n.max(1),
            steps: self.schedule.len(),
            prior: self.prior_nats(x0),
            terms,
            eps_mse,
        }
    }
}
