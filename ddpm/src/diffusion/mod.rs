//! The diffusion process on tensors: the forward process (Q), its posterior (P1, P2), the
//! conversions between the network's possible targets, and the reverse step's mean and
//! variance (M). Equations refer to `ddpm-math.md`.
//!
//! Batches are `[N, ...]` tensors with one timestep index per sample (`t[n]` indexes the
//! [`Schedule`]: index `i` is the paper's `t = i + 1`). Coefficients are taken from the f64
//! schedule and cast to f32 only where they meet the tensors.

mod bound;
mod loss;
mod resample;

pub use bound::{
    continuous_gaussian_log_likelihood, discretized_gaussian_log_likelihood, normal_kl, BoundTerms,
    Decoder,
};
pub use loss::{hybrid_loss, l_simple, LossKind, HYBRID_LAMBDA};
pub use resample::{LossAwareSampler, TimestepSampler, UniformSampler};

use tensor::Tensor;

use crate::schedule::Schedule;

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise `eps` (DDPM).
    Eps,
    /// The clean sample `x_0`.
    X0,
    /// The velocity `v = sqrt(abar) eps - sqrt(1 - abar) x_0` (Salimans and Ho, 2022).
    V,
}

/// The variance of the reverse step `p(x_{t-1} | x_t)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarianceKind {
    /// `sigma_t^2 = beta~_t`, the posterior variance (P2) (clipped log at the first step).
    FixedSmall,
    /// `sigma_t^2 = beta_t` (diffusers' `fixed_large`).
    FixedLarge,
    /// Improved DDPM: `log sigma_t^2 = f log beta_t + (1 - f) log beta~_t` with `f = (v + 1) / 2`
    /// and `v` the second half of the network's output channels.
    LearnedRange,
}

/// A Gaussian per element: its mean and log-variance (same shape).
#[derive(Clone, Debug)]
pub struct Gaussian {
    /// The mean.
    pub mean: Tensor,
    /// The natural log of the variance.
    pub log_var: Tensor,
}

/// The reverse step's distribution and the `x_0` it implies.
#[derive(Clone, Debug)]
pub struct ReverseStep {
    /// `p(x_{t-1} | x_t)`.
    pub dist: Gaussian,
    /// The network's estimate of `x_0` (clipped to [-1, 1] if asked).
    pub pred_x0: Tensor,
    /// The network's estimate of the noise.
    pub pred_eps: Tensor,
}

/// A schedule together with the network's target and the reverse-step variance.
#[derive(Clone, Debug)]
pub struct Diffusion {
    /// The noise schedule.
    pub schedule: Schedule,
    /// What the network predicts.
    pub prediction: Prediction,
    /// How the reverse-step variance is set.
    pub variance: VarianceKind,
}

/// `values[t[n]]` for each sample, as an `[N, 1, ...]` tensor that broadcasts over a sample of
/// shape `shape[1..]`.
pub fn per_sample(values: &[f64], t: &[usize], shape: &[usize]) -> Tensor {
    assert_eq!(
        shape[0],
        t.len(),
        "per_sample: {} timesteps for a batch of shape {shape:?}",
        t.len()
    );
    let mut coef_shape = vec![1; shape.len()];
    coef_shape[0] = t.len();
    Tensor::from_vec(t.iter().map(|&i| values[i] as f32).collect(), &coef_shape)
}

impl Diffusion {
    /// A process on `schedule` for a network predicting `prediction`, with `variance`.
    pub fn new(schedule: Schedule, prediction: Prediction, variance: VarianceKind) -> Diffusion {
        Diffusion {
            schedule,
            prediction,
            variance,
        }
    }

    fn c(&self, values: &[f64], t: &[usize], x: &Tensor) -> Tensor {
        per_sample(values, t, x.shape())
    }

    /// Eq. (Q): `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], eps: &Tensor) -> Tensor {
        let s = &self.schedule;
        x0.mul(&self.c(&s.sqrt_abar, t, x0))
            .add(&eps.mul(&self.c(&s.sqrt_one_minus_abar, t, x0)))
    }

    /// `q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`.
    pub fn q_marginal(&self, x0: &Tensor, t: &[usize]) -> Gaussian {
        let s = &self.schedule;
        let log_var: Vec<f64> = s.abar.iter().map(|a| (1.0 - a).ln()).collect();
        Gaussian {
            mean: x0.mul(&self.c(&s.sqrt_abar, t, x0)),
            log_var: self.c(&log_var, t, x0).broadcast_to(x0.shape()),
        }
    }

    /// Eqs. (P1) and (P2): `q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)` with
    /// `mu~_t = coef1 x_0 + coef2 x_t`; the log-variance is the clipped one.
    pub fn q_posterior(&self, x0: &Tensor, xt: &Tensor, t: &[usize]) -> Gaussian {
        let s = &self.schedule;
        let mean = x0
            .mul(&self.c(&s.posterior_mean_coef1, t, x0))
            .add(&xt.mul(&self.c(&s.posterior_mean_coef2, t, xt)));
        let log_var = self
            .c(&s.posterior_log_variance_clipped, t, x0)
            .broadcast_to(x0.shape());
        Gaussian { mean, log_var }
    }

    /// `x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps`, from (Q).
    pub fn x0_from_eps(&self, xt: &Tensor, t: &[usize], eps: &Tensor) -> Tensor {
        let s = &self.schedule;
        xt.mul(&self.c(&s.sqrt_recip_abar, t, xt))
            .sub(&eps.mul(&self.c(&s.sqrt_recipm1_abar, t, xt)))
    }

    /// `eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1)`, from (Q).
    pub fn eps_from_x0(&self, xt: &Tensor, t: &[usize], x0: &Tensor) -> Tensor {
        let s = &self.schedule;
        xt.mul(&self.c(&s.sqrt_recip_abar, t, xt))
            .sub(x0)
            .div(&self.c(&s.sqrt_recipm1_abar, t, xt))
    }

    /// The velocity target `v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`.
    pub fn v_target(&self, x0: &Tensor, t: &[usize], eps: &Tensor) -> Tensor {
        let s = &self.schedule;
        eps.mul(&self.c(&s.sqrt_abar, t, eps))
            .sub(&x0.mul(&self.c(&s.sqrt_one_minus_abar, t, x0)))
    }

    /// `x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`.
    pub fn x0_from_v(&self, xt: &Tensor, t: &[usize], v: &Tensor) -> Tensor {
        let s = &self.schedule;
        xt.mul(&self.c(&s.sqrt_abar, t, xt))
            .sub(&v.mul(&self.c(&s.sqrt_one_minus_abar, t, v)))
    }

    /// `eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v`.
    pub fn eps_from_v(&self, xt: &Tensor, t: &[usize], v: &Tensor) -> Tensor {
        let s = &self.schedule;
        xt.mul(&self.c(&s.sqrt_one_minus_abar, t, xt))
            .add(&v.mul(&self.c(&s.sqrt_abar, t, v)))
    }

    /// What the network should output for `x_0` noised with `eps` at `t`: `eps`, `x_0` or `v`.
    pub fn training_target(&self, x0: &Tensor, t: &[usize], eps: &Tensor) -> Tensor {
        match self.prediction {
            Prediction::Eps => eps.clone(),
            Prediction::X0 => x0.clone(),
            Prediction::V => self.v_target(x0, t, eps),
        }
    }

    /// The number of output channels the network needs for `c` data channels.
    pub fn output_channels(&self, c: usize) -> usize {
        if self.variance == VarianceKind::LearnedRange {
            2 * c
        } else {
            c
        }
    }

    /// The reverse step from the network's output at `x_t`: the estimate of `x_0` (clipped to
    /// [-1, 1] when `clip`), the mean `mu~_t(x0_hat, x_t)` by (P1) (which equals (M) for an
    /// eps-prediction when nothing is clipped), and the variance of [`VarianceKind`].
    pub fn p_mean_variance(
        &self,
        output: &Tensor,
        xt: &Tensor,
        t: &[usize],
        clip: bool,
    ) -> ReverseStep {
        let s = &self.schedule;
        let c = xt.shape()[1];
        let (prediction, v) = if self.variance == VarianceKind::LearnedRange {
            assert_eq!(
                output.shape()[1],
                2 * c,
                "p_mean_variance: a learned variance needs {} output channels, got shape {:?}",
                2 * c,
                output.shape()
            );
            let mut halves = output.split(&[c, c], 1);
            let v = halves.pop().unwrap();
            (halves.pop().unwrap(), Some(v))
        } else {
            assert_eq!(
                output.shape(),
                xt.shape(),
                "p_mean_variance: output {:?} for x_t {:?}",
                output.shape(),
                xt.shape()
            );
            (output.clone(), None)
        };
        let log_var = match self.variance {
            VarianceKind::FixedSmall => self
                .c(&s.posterior_log_variance_clipped, t, xt)
                .broadcast_to(xt.shape()),
            VarianceKind::FixedLarge => {
                let log_beta: Vec<f64> = s.betas.iter().map(|b| b.ln()).collect();
                self.c(&log_beta, t, xt).broadcast_to(xt.shape())
            }
            VarianceKind::LearnedRange => {
                let log_beta: Vec<f64> = s.betas.iter().map(|b| b.ln()).collect();
                let max = self.c(&log_beta, t, xt);
                let min = self.c(&s.posterior_log_variance_clipped, t, xt);
                let frac = v.unwrap().add_scalar(1.0).mul_scalar(0.5);
                frac.mul(&max).add(&frac.rsub_scalar(1.0).mul(&min))
            }
        };
        let mut pred_x0 = match self.prediction {
            Prediction::Eps => self.x0_from_eps(xt, t, &prediction),
            Prediction::X0 => prediction.clone(),
            Prediction::V => self.x0_from_v(xt, t, &prediction),
        };
        if clip {
            pred_x0 = pred_x0.clamp(-1.0, 1.0);
        }
        let pred_eps = match self.prediction {
            Prediction::Eps if !clip => prediction,
            _ => self.eps_from_x0(xt, t, &pred_x0),
        };
        let mean = self.q_posterior(&pred_x0, xt, t).mean;
        ReverseStep {
            dist: Gaussian { mean, log_var },
            pred_x0,
            pred_eps,
        }
    }
}

#[cfg(test)]
mod tests;
