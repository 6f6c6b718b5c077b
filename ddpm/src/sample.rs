//! Sampling: DDPM ancestral sampling and DDIM, on all steps or a subsequence
//! (ddpm-math.md, section 5).
//!
//! The network is any function `model(x_t, timesteps) -> output` that returns what the
//! [`Diffusion`] says it predicts (and the variance channels if it learns them). Noise comes
//! from one [`Rng`], so a seed fixes the samples.

use tensor::rng::Rng;
use tensor::Tensor;

use crate::diffusion::Diffusion;

/// Where a subsequence of `S` steps out of `T` puts its timesteps (diffusers' `timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// `0, r, 2r, ...` with `r = T / S` (integer division).
    Leading,
    /// `S` points evenly spaced from `0` to `T - 1`, rounded.
    Linspace,
    /// `T - 1, T - 1 - T/S, ...` counted back from the end, rounded.
    Trailing,
}

impl Spacing {
    /// Parses `leading`, `linspace` or `trailing`.
    pub fn from_name(name: &str) -> Option<Spacing> {
        match name {
            "leading" => Some(Spacing::Leading),
            "linspace" => Some(Spacing::Linspace),
            "trailing" => Some(Spacing::Trailing),
            _ => None,
        }
    }

    /// `steps` increasing step indices out of `total`. Panics unless `1 <= steps <= total`.
    pub fn timesteps(self, total: usize, steps: usize) -> Vec<usize> {
        assert!(
            steps >= 1 && steps <= total,
            "Spacing::timesteps: {steps} steps of {total}"
        );
        let mut ts: Vec<usize> = match self {
            Spacing::Leading => (0..steps).map(|k| k * (total / steps)).collect(),
            Spacing::Linspace => {
                if steps == 1 {
                    vec![0]
                } else {
                    (0..steps)
                        .map(|k| {
                            (k as f64 * (total - 1) as f64 / (steps - 1) as f64).round() as usize
                        })
                        .collect()
                }
            }
            Spacing::Trailing => {
                let ratio = total as f64 / steps as f64;
                (0..steps)
                    .rev()
                    .map(|k| (total as f64 - k as f64 * ratio).round() as usize - 1)
                    .collect()
            }
        };
        ts.dedup();
        ts
    }
}

/// Which sampler to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Ancestral sampling: `x_{t-1} = mu(x_t) + sigma_t z` (on the respaced schedule when fewer
    /// steps are asked for).
    Ddpm,
    /// DDIM (Song et al., 2021) with stochasticity `eta` (0: deterministic).
    Ddim {
        /// 0 gives the deterministic sampler, 1 the DDPM-like variance.
        eta: f64,
    },
}

/// What the callback sees after each step.
pub struct StepInfo<'a> {
    /// How many steps are done (1 after the first).
    pub done: usize,
    /// How many steps there are.
    pub total: usize,
    /// The timestep index the network saw at this step.
    pub timestep: usize,
    /// The sample after the step.
    pub x: &'a Tensor,
    /// The network's estimate of `x_0` at this step.
    pub pred_x0: &'a Tensor,
}

/// Sampling settings.
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    /// The sampler.
    pub sampler: Sampler,
    /// Steps to take (at most the schedule's T).
    pub steps: usize,
    /// Where the steps go when fewer than T.
    pub spacing: Spacing,
    /// Clip the predicted `x_0` to [-1, 1] at each step.
    pub clip: bool,
}

/// Draws samples of `shape` (`[N, C, H, W]`), calling `callback` after every step.
pub fn sample(
    diffusion: &Diffusion,
    model: &mut dyn FnMut(&Tensor, &[usize]) -> Tensor,
    shape: &[usize],
    options: SampleOptions,
    rng: &mut Rng,
    callback: &mut dyn FnMut(&StepInfo),
) -> Tensor {
    let total = diffusion.schedule.len();
    let keep = if options.steps == total {
        (0..total).collect()
    } else {
        options.spacing.timesteps(total, options.steps)
    };
    let respaced = Diffusion {
        schedule: diffusion.schedule.respace(&keep),
        ..diffusion.clone()
    };
    let n = shape[0];
    let mut x = rng.normal(shape);
    let steps = keep.len();
    for k in (0..steps).rev() {
        // The pool's workers stay awake through the step's many parallel ops (not through the
        // callback, which may wait on I/O).
        let awake = tensor::awake::keep_awake();
        let t = vec![k; n];
        let timesteps = vec![respaced.schedule.timesteps[k]; n];
        let output = model(&x, &timesteps);
        let step = respaced.p_mean_variance(&output, &x, &t, options.clip);
        x = match options.sampler {
            Sampler::Ddpm => {
                if k == 0 {
                    step.dist.mean
                } else {
                    let sigma = step.dist.log_var.mul_scalar(0.5).exp();
                    step.dist.mean.add(&rng.normal(shape).mul(&sigma))
                }
            }
            Sampler::Ddim { eta } => {
                ddim_step(&respaced, k, &step.pred_x0, &step.pred_eps, eta, rng)
            }
        };
        drop(awake);
        callback(&StepInfo {
            done: steps - k,
            total: steps,
            timestep: timesteps[0],
            x: &x,
            pred_x0: &step.pred_x0,
        });
    }
    x
}

/// One DDIM step from index `k` to `k - 1` of a (respaced) schedule:
/// `x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z` with
/// `sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)` (Song et al.,
/// eq. 12 and 16); `abar_prev = 1` after the last step.
fn ddim_step(
    d: &Diffusion,
    k: usize,
    x0: &Tensor,
    eps: &Tensor,
    eta: f64,
    rng: &mut Rng,
) -> Tensor {
    let s = &d.schedule;
    let (abar, abar_prev) = (s.abar[k], s.abar_prev[k]);
    let sigma = eta * ((1.0 - abar_prev) / (1.0 - abar)).sqrt() * (1.0 - abar / abar_prev).sqrt();
    let direction = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
    let mut x = x0
        .mul_scalar(abar_prev.sqrt() as f32)
        .add(&eps.mul_scalar(direction as f32));
    if sigma > 0.0 && k > 0 {
        x = x.add(&rng.normal_like(x0).mul_scalar(sigma as f32));
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{per_sample, Prediction, VarianceKind};
    use crate::schedule::{BetaSchedule, Schedule};

    #[test]
    fn spacings_follow_diffusers() {
        assert_eq!(
            Spacing::Leading.timesteps(1000, 10),
            vec![0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
        );
        assert_eq!(
            Spacing::Trailing.timesteps(1000, 10),
            vec![99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
        );
        let lin = Spacing::Linspace.timesteps(1000, 10);
        assert_eq!((lin[0], lin[1], lin[9]), (0, 111, 999));
    }

    /// For data from N(0, I) the optimal eps-predictor is sqrt(1 - abar_t) x_t; sampling with
    /// it must give samples whose mean and variance are those of N(0, I).
    fn oracle_sample(sampler: Sampler, steps: usize, variance: VarianceKind) -> Tensor {
        let d = Diffusion::new(
            Schedule::new(BetaSchedule::LINEAR, 1000),
            Prediction::Eps,
            variance,
        );
        let mut model = |x: &Tensor, t: &[usize]| {
            x.mul(&per_sample(&d.schedule.sqrt_one_minus_abar, t, x.shape()))
        };
        let options = SampleOptions {
            sampler,
            steps,
            spacing: Spacing::Leading,
            clip: false,
        };
        let mut seen = 0;
        let x = sample(
            &d,
            &mut model,
            &[4000, 2],
            options,
            &mut Rng::new(9, 0),
            &mut |s: &StepInfo| {
                seen = s.done;
            },
        );
        assert_eq!(seen, steps);
        x
    }

    fn moments(x: &Tensor) -> (f64, f64) {
        let n = x.numel() as f64;
        let mean = x.data().iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x
            .data()
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var)
    }

    /// With this oracle a deterministic DDIM step multiplies x by `cos(theta_prev - theta)`
    /// where `abar = cos^2 theta`, so S steps shrink the variance by about `(pi / 2S)^2 S`:
    /// 0.94 at 50 steps, 0.99 at 250. The test uses 250 so that the tolerance measures the
    /// sampler, not its discretisation. Ancestral sampling with `sigma^2 = beta` is exact for
    /// Gaussian data on any respaced schedule.
    #[test]
    fn samplers_reproduce_a_gaussian_data_distribution() {
        for (sampler, steps, variance, var_tol) in [
            (Sampler::Ddpm, 1000, VarianceKind::FixedLarge, 0.05),
            (Sampler::Ddpm, 1000, VarianceKind::FixedSmall, 0.05),
            (
                Sampler::Ddim { eta: 0.0 },
                250,
                VarianceKind::FixedSmall,
                0.05,
            ),
            (Sampler::Ddpm, 100, VarianceKind::FixedLarge, 0.05),
        ] {
            let (mean, var) = moments(&oracle_sample(sampler, steps, variance));
            assert!(mean.abs() < 0.05, "{sampler:?} {steps}: mean {mean}");
            assert!(
                (var - 1.0).abs() < var_tol,
                "{sampler:?} {steps} {variance:?}: variance {var}"
            );
        }
    }

    /// DDIM with eta = 1 is ancestral sampling with the posterior variance (Song et al.,
    /// section 4.1): the same noise gives the same samples.
    #[test]
    fn ddim_with_eta_one_is_ancestral_sampling() {
        let ddim = oracle_sample(Sampler::Ddim { eta: 1.0 }, 100, VarianceKind::FixedSmall);
        let ddpm = oracle_sample(Sampler::Ddpm, 100, VarianceKind::FixedSmall);
        let diff = ddim
            .data()
            .iter()
            .zip(ddpm.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn sampling_is_deterministic_for_a_seed() {
        let a = oracle_sample(Sampler::Ddim { eta: 0.5 }, 20, VarianceKind::FixedSmall);
        let b = oracle_sample(Sampler::Ddim { eta: 0.5 }, 20, VarianceKind::FixedSmall);
        assert_eq!(a.data(), b.data());
    }
}
