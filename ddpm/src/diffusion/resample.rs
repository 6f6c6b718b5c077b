//! Choosing the timestep of each training sample: uniformly, or in proportion to the recent
//! loss at each step (improved DDPM's importance sampling of `L_vlb`, section 3.3).

use tensor::rng::Rng;

/// Draws timestep indices and the weight each sample's loss gets so that the weighted loss
/// stays an unbiased estimate of the uniform average.
pub trait TimestepSampler {
    /// `n` step indices and their weights `1 / (T p_t)`.
    fn sample(&mut self, n: usize, rng: &mut Rng) -> (Vec<usize>, Vec<f32>);
    /// Records the losses observed at these steps (ignored by samplers that do not adapt).
    fn update(&mut self, _steps: &[usize], _losses: &[f32]) {}
}

/// `t ~ U{0..T-1}`, every weight 1.
pub struct UniformSampler {
    /// T.
    pub steps: usize,
}

impl TimestepSampler for UniformSampler {
    fn sample(&mut self, n: usize, rng: &mut Rng) -> (Vec<usize>, Vec<f32>) {
        let t = rng
            .below_many(n, self.steps as u64)
            .into_iter()
            .map(|t| t as usize)
            .collect();
        (t, vec![1.0; n])
    }
}

/// The history kept per step.
const HISTORY: usize = 10;
/// The uniform share mixed into the importance weights.
const UNIFORM_SHARE: f64 = 0.001;

/// Importance sampling by the second moment of the loss: once every step has
/// 10 recorded losses, `p_t` is proportional to `sqrt(mean(loss_t^2))` over them, mixed
/// with 0.001 of the uniform distribution; before that, sampling is uniform.
pub struct LossAwareSampler {
    history: Vec<Vec<f32>>,
}

impl LossAwareSampler {
    /// A sampler for `steps` timesteps with no history.
    pub fn new(steps: usize) -> LossAwareSampler {
        LossAwareSampler {
            history: vec![Vec::new(); steps],
        }
    }

    /// The current probabilities `p_t`.
    pub fn probabilities(&self) -> Vec<f64> {
        let steps = self.history.len();
        if self.history.iter().any(|h| h.len() < HISTORY) {
            return vec![1.0 / steps as f64; steps];
        }
        let w: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|&l| (l as f64).powi(2)).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let total: f64 = w.iter().sum();
        w.iter()
            .map(|x| x / total * (1.0 - UNIFORM_SHARE) + UNIFORM_SHARE / steps as f64)
            .collect()
    }
}

impl TimestepSampler for LossAwareSampler {
    fn sample(&mut self, n: usize, rng: &mut Rng) -> (Vec<usize>, Vec<f32>) {
        let p = self.probabilities();
        let steps = p.len();
        let cdf: Vec<f64> = p
            .iter()
            .scan(0.0, |acc, &x| {
                *acc += x;
                Some(*acc)
            })
            .collect();
        let mut t = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        for _ in 0..n {
            let u = rng.next_f32() as f64 * cdf[steps - 1];
            let i = cdf.partition_point(|&c| c <= u).min(steps - 1);
            t.push(i);
            weights.push((1.0 / (steps as f64 * p[i])) as f32);
        }
        (t, weights)
    }

    fn update(&mut self, steps: &[usize], losses: &[f32]) {
        for (&t, &l) in steps.iter().zip(losses) {
            let h = &mut self.history[t];
            if h.len() == HISTORY {
                h.remove(0);
            }
            h.push(l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_until_warm_then_proportional_to_the_loss() {
        let mut s = LossAwareSampler::new(4);
        assert_eq!(s.probabilities(), vec![0.25; 4]);
        for _ in 0..HISTORY {
            s.update(&[0, 1, 2, 3], &[1.0, 1.0, 2.0, 4.0]);
        }
        let p = s.probabilities();
        let expect = |w: f64| w / 8.0 * (1.0 - UNIFORM_SHARE) + UNIFORM_SHARE / 4.0;
        for (got, w) in p.iter().zip([1.0, 1.0, 2.0, 4.0]) {
            assert!((got - expect(w)).abs() < 1e-12);
        }
        let mut rng = Rng::new(0, 0);
        let (t, w) = s.sample(40_000, &mut rng);
        let share3 = t.iter().filter(|&&i| i == 3).count() as f64 / 40_000.0;
        assert!((share3 - p[3]).abs() < 0.01, "{share3} vs {}", p[3]);
        // Weighting by 1/(T p_t) keeps the estimate of a uniform mean unbiased.
        let losses = [1.0, 1.0, 2.0, 4.0];
        let estimate: f64 = t
            .iter()
            .zip(&w)
            .map(|(&i, &w)| losses[i] * w as f64)
            .sum::<f64>()
            / 40_000.0;
        assert!((estimate - 2.0).abs() < 0.03, "{estimate}");
    }
}
