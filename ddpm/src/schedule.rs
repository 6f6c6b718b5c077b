//! Noise schedules and every quantity derived from them, in f64 (ddpm-math.md, sections 1 and 4).
//!
//! Timesteps are indexed from 0: index `i` is the paper's `t = i + 1`, so `betas[0]` is
//! `beta_1` and `abar[T - 1]` is `abar_T`. The network is given `timesteps[i]`, the index in
//! the schedule it was trained on (equal to `i` unless the schedule was respaced).

use std::f64::consts::PI;

/// How the `beta_t` are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BetaSchedule {
    /// `beta_t` evenly spaced from `start` to `end` (DDPM: 1e-4 to 0.02).
    Linear { start: f64, end: f64 },
    /// `sqrt(beta_t)` evenly spaced from `sqrt(start)` to `sqrt(end)` (diffusers'
    /// `scaled_linear`, used by latent diffusion: 0.00085 to 0.012).
    ScaledLinear { start: f64, end: f64 },
    /// `beta_t = start + (end - start) * sigmoid(u_t)`, `u_t` evenly spaced in [-6, 6]
    /// (diffusers' `sigmoid`).
    Sigmoid { start: f64, end: f64 },
    /// Improved DDPM: `abar_t = f(t) / f(0)`, `f(t) = cos^2((t/T + s) / (1 + s) * pi/2)`,
    /// `beta_t = min(1 - abar_t / abar_{t-1}, 0.999)`.
    Cosine { s: f64 },
}

impl BetaSchedule {
    /// DDPM's linear schedule, 1e-4 to 0.02.
    pub const LINEAR: BetaSchedule = BetaSchedule::Linear {
        start: 1e-4,
        end: 0.02,
    };
    /// Improved DDPM's cosine schedule, s = 0.008.
    pub const COSINE: BetaSchedule = BetaSchedule::Cosine { s: 0.008 };

    /// The `t` betas of this schedule.
    pub fn betas(&self, t: usize) -> Vec<f64> {
        let spaced = |a: f64, b: f64, i: usize| {
            if t == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (t - 1) as f64
            }
        };
        match *self {
            BetaSchedule::Linear { start, end } => (0..t).map(|i| spaced(start, end, i)).collect(),
            BetaSchedule::ScaledLinear { start, end } => (0..t)
                .map(|i| spaced(start.sqrt(), end.sqrt(), i).powi(2))
                .collect(),
            BetaSchedule::Sigmoid { start, end } => (0..t)
                .map(|i| start + (end - start) / (1.0 + (-spaced(-6.0, 6.0, i)).exp()))
                .collect(),
            BetaSchedule::Cosine { s } => {
                let f = |i: usize| {
                    ((i as f64 / t as f64 + s) / (1.0 + s) * PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..t).map(|i| (1.0 - f(i + 1) / f(i)).min(0.999)).collect()
            }
        }
    }

    /// Parses a name as diffusers spells it (`linear`, `scaled_linear`, `sigmoid`,
    /// `squaredcos_cap_v2` or `cosine`), with the usual endpoints.
    pub fn from_name(name: &str) -> Option<BetaSchedule> {
        match name {
            "linear" => Some(BetaSchedule::LINEAR),
            "scaled_linear" => Some(BetaSchedule::ScaledLinear {
                start: 0.00085,
                end: 0.012,
            }),
            "sigmoid" => Some(BetaSchedule::Sigmoid {
                start: 1e-4,
                end: 0.02,
            }),
            "cosine" | "squaredcos_cap_v2" => Some(BetaSchedule::COSINE),
            _ => None,
        }
    }
}

/// A schedule of `T` steps and all its derived quantities, in f64.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// `beta_t`.
    pub betas: Vec<f64>,
    /// `alpha_t = 1 - beta_t`.
    pub alphas: Vec<f64>,
    /// `abar_t = prod_{s <= t} alpha_s`.
    pub abar: Vec<f64>,
    /// `abar_{t-1}` (1 for the first step).
    pub abar_prev: Vec<f64>,
    /// `sqrt(abar_t)`.
    pub sqrt_abar: Vec<f64>,
    /// `sqrt(1 - abar_t)`.
    pub sqrt_one_minus_abar: Vec<f64>,
    /// `1 / sqrt(abar_t)`.
    pub sqrt_recip_abar: Vec<f64>,
    /// `sqrt(1 / abar_t - 1)`.
    pub sqrt_recipm1_abar: Vec<f64>,
    /// Posterior variance `beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t`, eq. (P2).
    pub posterior_variance: Vec<f64>,
    /// `log beta~_t` with the first entry (where beta~ is 0) replaced by the second, eq. (P2).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// Coefficient of `x_0` in the posterior mean, `sqrt(abar_{t-1}) beta_t / (1 - abar_t)`, eq. (P1).
    pub posterior_mean_coef1: Vec<f64>,
    /// Coefficient of `x_t` in the posterior mean, `sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)`, eq. (P1).
    pub posterior_mean_coef2: Vec<f64>,
    /// The timestep index the network sees at each step (the original index after respacing).
    pub timesteps: Vec<usize>,
}

impl Schedule {
    /// The schedule of `t` steps of `kind`. Panics if `t` is 0.
    pub fn new(kind: BetaSchedule, t: usize) -> Schedule {
        assert!(t > 0, "Schedule::new: needs at least one step");
        Schedule::from_betas(kind.betas(t), (0..t).collect())
    }

    /// Derives every quantity from the betas (each in (0, 1]).
    pub fn from_betas(betas: Vec<f64>, timesteps: Vec<usize>) -> Schedule {
        assert_eq!(
            betas.len(),
            timesteps.len(),
            "Schedule::from_betas: one timestep per beta"
        );
        assert!(
            betas.iter().all(|&b| b > 0.0 && b <= 1.0),
            "Schedule::from_betas: betas must lie in (0, 1]"
        );
        let n = betas.len();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let abar: Vec<f64> = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        let abar_prev: Vec<f64> = std::iter::once(1.0)
            .chain(abar[..n - 1].iter().copied())
            .collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let posterior_variance = map(&|i| betas[i] * (1.0 - abar_prev[i]) / (1.0 - abar[i]));
        let first_log = if n > 1 {
            posterior_variance[1]
        } else {
            betas[0]
        };
        let posterior_log_variance_clipped = map(&|i| {
            if i == 0 {
                first_log.ln()
            } else {
                posterior_variance[i].ln()
            }
        });
        Schedule {
            sqrt_abar: map(&|i| abar[i].sqrt()),
            sqrt_one_minus_abar: map(&|i| (1.0 - abar[i]).sqrt()),
            sqrt_recip_abar: map(&|i| 1.0 / abar[i].sqrt()),
            sqrt_recipm1_abar: map(&|i| (1.0 / abar[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * abar_prev[i].sqrt() / (1.0 - abar[i])),
            posterior_mean_coef2: map(&|i| {
                (1.0 - abar_prev[i]) * alphas[i].sqrt() / (1.0 - abar[i])
            }),
            posterior_variance,
            posterior_log_variance_clipped,
            betas,
            alphas,
            abar,
            abar_prev,
            timesteps,
        }
    }

    /// The number of steps `T`.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// True for a schedule of no steps (never: [`Schedule::new`] refuses them).
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The schedule restricted to the steps `keep` (increasing indices into this schedule),
    /// with new betas from the ratios of the kept `abar`: `beta'_k = 1 - abar_{keep[k]} /
    /// abar_{keep[k-1]}` (and `1 - abar_{keep[0]}` first), so that `abar'` at each kept step
    /// equals the original `abar` there. The network keeps seeing the original timesteps.
    pub fn respace(&self, keep: &[usize]) -> Schedule {
        assert!(
            !keep.is_empty(),
            "Schedule::respace: keep at least one step"
        );
        assert!(
            keep.windows(2).all(|w| w[0] < w[1]) && *keep.last().unwrap() < self.len(),
            "Schedule::respace: steps must increase and lie below {}, got {keep:?}",
            self.len()
        );
        let mut previous = 1.0;
        let betas = keep
            .iter()
            .map(|&i| {
                let beta = 1.0 - self.abar[i] / previous;
                previous = self.abar[i];
                beta
            })
            .collect();
        Schedule::from_betas(betas, keep.iter().map(|&i| self.timesteps[i]).collect())
    }

    /// `count` steps spread evenly over this schedule, always including the last
    /// (improved DDPM's respacing of one section, e.g. `ddim50`).
    pub fn evenly_spaced(&self, count: usize) -> Vec<usize> {
        assert!(
            count >= 1 && count <= self.len(),
            "evenly_spaced: {count} steps of {}",
            self.len()
        );
        if count == 1 {
            return vec![self.len() - 1];
        }
        let stride = (self.len() - 1) as f64 / (count - 1) as f64;
        (0..count)
            .map(|k| (k as f64 * stride).round() as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn pinned_constants_of_the_linear_and_cosine_schedules() {
        let linear = Schedule::new(BetaSchedule::LINEAR, 1000);
        assert!(
            close(linear.abar[999], 4.0358e-5, 5e-5),
            "linear abar_1000 = {:e}",
            linear.abar[999]
        );
        assert!(close(linear.betas[0], 1e-4, 1e-12) && close(linear.betas[999], 0.02, 1e-12));
        let cosine = Schedule::new(BetaSchedule::COSINE, 1000);
        assert!(
            close(cosine.betas[0], 4.1284e-5, 5e-5),
            "cosine beta_1 = {:e}",
            cosine.betas[0]
        );
        assert_eq!(cosine.betas[999], 0.999);
        assert!(
            close(cosine.abar[999], 2.4288e-9, 5e-5),
            "cosine abar_T = {:e}",
            cosine.abar[999]
        );
    }

    #[test]
    fn derived_quantities_agree_with_their_definitions() {
        let s = Schedule::new(BetaSchedule::LINEAR, 1000);
        for i in [0, 1, 500, 999] {
            assert!(close(s.alphas[i] * s.abar_prev[i], s.abar[i], 1e-14));
            assert!(close(
                s.sqrt_abar[i].powi(2) + s.sqrt_one_minus_abar[i].powi(2),
                1.0,
                1e-14
            ));
            assert!(close(s.sqrt_recip_abar[i] * s.sqrt_abar[i], 1.0, 1e-14));
            assert!(close(
                s.sqrt_recipm1_abar[i].powi(2),
                1.0 / s.abar[i] - 1.0,
                1e-12
            ));
        }
        assert_eq!(s.posterior_variance[0], 0.0);
        assert_eq!(
            s.posterior_log_variance_clipped[0],
            s.posterior_variance[1].ln()
        );
        // Posterior-mean coefficients: for x_t = sqrt(abar) x0 (no noise) the posterior mean is
        // sqrt(abar_prev) x0, the noiseless x_{t-1}.
        for i in 1..1000 {
            let mean = s.posterior_mean_coef1[i] + s.posterior_mean_coef2[i] * s.sqrt_abar[i];
            assert!(close(mean, s.abar_prev[i].sqrt(), 1e-12), "step {i}");
        }
    }

    #[test]
    fn other_schedules_have_their_endpoints() {
        let scaled = BetaSchedule::from_name("scaled_linear")
            .unwrap()
            .betas(1000);
        assert!(close(scaled[0], 0.00085, 1e-12) && close(scaled[999], 0.012, 1e-12));
        let sigmoid = BetaSchedule::from_name("sigmoid").unwrap().betas(1000);
        let expit = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert!(close(sigmoid[0], 1e-4 + (0.02 - 1e-4) * expit(-6.0), 1e-12));
        assert!(sigmoid.windows(2).all(|w| w[0] < w[1]));
        assert!(BetaSchedule::from_name("quadratic").is_none());
    }

    #[test]
    fn respacing_keeps_abar_at_the_kept_steps() {
        let full = Schedule::new(BetaSchedule::COSINE, 1000);
        let keep = full.evenly_spaced(50);
        assert_eq!((keep[0], keep[49], keep.len()), (0, 999, 50));
        let short = full.respace(&keep);
        for (k, &i) in keep.iter().enumerate() {
            assert!(
                close(short.abar[k], full.abar[i], 1e-9),
                "step {i}: {} vs {}",
                short.abar[k],
                full.abar[i]
            );
        }
        assert_eq!(short.timesteps, keep);
        let twice = short.respace(&[0, 10, 49]);
        assert_eq!(twice.timesteps, vec![0, keep[10], 999]);
        assert!(close(twice.abar[1], full.abar[keep[10]], 1e-12));
    }
}
