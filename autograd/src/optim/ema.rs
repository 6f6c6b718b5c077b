//! An exponential moving average of parameters, with the decay warm-up of diffusers' EMAModel.

use tensor::{Result, Tensor};

use super::{find_state, find_step};
use crate::Param;

/// The EMA's settings, with the meaning diffusers' `EMAModel` gives them.
#[derive(Clone, Copy, Debug)]
pub struct EmaConfig {
    /// The largest decay (e.g. 0.9999).
    pub decay: f32,
    /// The smallest decay.
    pub min_decay: f32,
    /// Updates before this step only copy the weights.
    pub update_after_step: u64,
    /// Use the warm-up `1 - (1 + k / inv_gamma)^-power` instead of `(1 + k) / (10 + k)`.
    pub use_warmup: bool,
    /// Warm-up scale.
    pub inv_gamma: f32,
    /// Warm-up exponent.
    pub power: f32,
}

impl EmaConfig {
    /// diffusers' defaults with the given maximum decay.
    pub fn with_decay(decay: f32) -> EmaConfig {
        EmaConfig {
            decay,
            min_decay: 0.0,
            update_after_step: 0,
            use_warmup: false,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
        }
    }
}

/// Shadow copies `s` of the parameters, updated after each optimizer step `n` (from 1) as
/// `s <- s - (1 - d) (s - p)` with the decay
///
/// ```text
/// k = max(0, n - update_after_step - 1)
/// d = 0                                        if k = 0 (the shadow becomes a copy)
/// d = 1 - (1 + k / inv_gamma)^(-power)         with warm-up
/// d = (1 + k) / (10 + k)                       without
/// d = clamp(d, min_decay, decay)
/// ```
/// so that early shadows follow the weights closely and later ones average over ~1/(1-d) steps.
pub struct Ema {
    config: EmaConfig,
    params: Vec<(String, Param)>,
    shadow: Vec<Tensor>,
    n: u64,
}

impl Ema {
    /// Shadows initialised to the current values of `params`.
    pub fn new(params: Vec<(String, Param)>, config: EmaConfig) -> Ema {
        let shadow = params.iter().map(|(_, p)| p.value()).collect();
        Ema {
            config,
            params,
            shadow,
            n: 0,
        }
    }

    /// The decay used by update number `n` (from 1).
    pub fn decay_at(&self, n: u64) -> f32 {
        let c = self.config;
        let k = n.saturating_sub(c.update_after_step + 1);
        if k == 0 {
            return 0.0;
        }
        let k = k as f64;
        let d = if c.use_warmup {
            1.0 - (1.0 + k / c.inv_gamma as f64).powf(-(c.power as f64))
        } else {
            (1.0 + k) / (10.0 + k)
        };
        (d as f32).min(c.decay).max(c.min_decay)
    }

    /// One update towards the parameters' current values.
    pub fn update(&mut self) {
        self.n += 1;
        let one_minus = 1.0 - self.decay_at(self.n);
        for ((_, param), shadow) in self.params.iter().zip(&mut self.shadow) {
            let value = param.value();
            for (s, &p) in shadow.data_mut().iter_mut().zip(value.data()) {
                *s -= one_minus * (*s - p);
            }
        }
    }

    /// The shadow values with the parameters' names.
    pub fn shadows(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.shadow)
            .map(|((n, _), s)| (n.clone(), s.clone()))
            .collect()
    }

    /// Copies the shadows into the parameters (for sampling with the averaged weights).
    pub fn copy_to_params(&self) {
        for ((_, param), shadow) in self.params.iter().zip(&self.shadow) {
            param.set_value(shadow.clone());
        }
    }

    /// The shadows and update count as named tensors (`{param}` and `step`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![(
            "step".to_string(),
            Tensor::from_vec(vec![self.n as f32], &[1]),
        )];
        state.extend(self.shadows());
        state
    }

    /// Restores what [`Ema::state`] gave.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let n = find_step(state)?;
        let mut shadow = Vec::new();
        for (name, p) in &self.params {
            shadow.push(find_state(state, name, &p.shape())?.clone());
        }
        (self.n, self.shadow) = (n, shadow);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_warms_up_as_diffusers_does() {
        let p = Param::new(Tensor::zeros(&[1]));
        let ema = Ema::new(vec![("p".into(), p.clone())], EmaConfig::with_decay(0.999));
        assert_eq!(ema.decay_at(1), 0.0);
        assert!((ema.decay_at(2) - 2.0 / 11.0).abs() < 1e-7);
        assert_eq!(ema.decay_at(1_000_000), 0.999);
        let warm = Ema::new(
            vec![("p".into(), p)],
            EmaConfig {
                use_warmup: true,
                ..EmaConfig::with_decay(0.9999)
            },
        );
        // k = 9: 1 - 10^(-2/3).
        assert!((warm.decay_at(10) - (1.0 - 10f32.powf(-2.0 / 3.0))).abs() < 1e-6);
    }

    #[test]
    fn shadow_follows_the_parameter() {
        let p = Param::new(Tensor::from_vec(vec![0.0], &[1]));
        let mut ema = Ema::new(vec![("p".into(), p.clone())], EmaConfig::with_decay(0.5));
        p.set_value(Tensor::from_vec(vec![4.0], &[1]));
        ema.update(); // d = 0: copy
        assert_eq!(ema.shadows()[0].1.data(), &[4.0]);
        p.set_value(Tensor::from_vec(vec![0.0], &[1]));
        ema.update(); // d = min(2/11, 0.5) = 2/11
        let expect = 4.0 - (1.0 - 2.0 / 11.0) * 4.0;
        assert!((ema.shadows()[0].1.data()[0] - expect).abs() < 1e-6);
    }
}
