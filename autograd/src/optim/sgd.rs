//! Stochastic gradient descent with momentum and weight decay, as PyTorch defines it.

use tensor::{Result, Tensor};

use super::{find_state, find_step, Optimizer};
use crate::Param;

/// SGD's hyper-parameters.
#[derive(Clone, Copy, Debug, Default)]
pub struct SgdConfig {
    /// Momentum factor mu (0 for plain SGD).
    pub momentum: f32,
    /// Dampening tau of the momentum buffer.
    pub dampening: f32,
    /// L2 weight decay, added to the gradient as `wd * p`.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// SGD. With `g` the gradient:
///
/// ```text
/// g <- g + wd * p
/// b <- g                       on the first step
/// b <- mu b + (1 - tau) g      afterwards
/// d <- g + mu b (Nesterov) or b
/// p <- p - lr d
/// ```
/// (with `mu = 0`, `d = g`).
pub struct Sgd {
    config: SgdConfig,
    params: Vec<(String, Param)>,
    momentum: Vec<Tensor>,
    t: u64,
}

impl Sgd {
    /// An optimizer for these named parameters.
    pub fn new(params: Vec<(String, Param)>, config: SgdConfig) -> Sgd {
        let momentum = params
            .iter()
            .map(|(_, p)| Tensor::zeros(&p.shape()))
            .collect();
        Sgd {
            config,
            params,
            momentum,
            t: 0,
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, lr: f32) {
        let c = self.config;
        let first = self.t == 0;
        self.t += 1;
        for ((_, param), buf) in self.params.iter().zip(&mut self.momentum) {
            param.update(|p, g| {
                let Some(g) = g else { return };
                for ((p, &g), b) in p.data_mut().iter_mut().zip(g.data()).zip(buf.data_mut()) {
                    let g = g + c.weight_decay * *p;
                    let d = if c.momentum == 0.0 {
                        g
                    } else {
                        *b = if first {
                            g
                        } else {
                            c.momentum * *b + (1.0 - c.dampening) * g
                        };
                        if c.nesterov {
                            g + c.momentum * *b
                        } else {
                            *b
                        }
                    };
                    *p -= lr * d;
                }
            });
        }
    }

    fn steps(&self) -> u64 {
        self.t
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![(
            "step".to_string(),
            Tensor::from_vec(vec![self.t as f32], &[1]),
        )];
        for ((name, _), b) in self.params.iter().zip(&self.momentum) {
            state.push((format!("{name}.momentum_buffer"), b.clone()));
        }
        state
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let t = find_step(state)?;
        let mut momentum = Vec::new();
        for (name, p) in &self.params {
            momentum
                .push(find_state(state, &format!("{name}.momentum_buffer"), &p.shape())?.clone());
        }
        (self.t, self.momentum) = (t, momentum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two parameters, three steps, against updates worked by hand in f64.
    #[test]
    fn sgd_with_momentum_and_weight_decay_matches_hand_computed_updates() {
        for nesterov in [false, true] {
            let (lr, mu, tau, wd) = (0.1f64, 0.9f64, 0.1f64, 0.01f64);
            let a = Param::new(Tensor::from_vec(vec![1.0], &[1]));
            let b = Param::new(Tensor::from_vec(vec![-2.0], &[1]));
            let config = SgdConfig {
                momentum: mu as f32,
                dampening: tau as f32,
                weight_decay: wd as f32,
                nesterov,
            };
            let mut opt = Sgd::new(
                vec![("a".into(), a.clone()), ("b".into(), b.clone())],
                config,
            );
            let mut expect = [1.0f64, -2.0];
            let mut buf = [0.0f64; 2];
            for t in 0..3 {
                // The gradient of L = p_a^2 + 3 p_b at the current point.
                let grads = [2.0 * expect[0], 3.0];
                a.set_grad(Some(Tensor::from_vec(vec![grads[0] as f32], &[1])));
                b.set_grad(Some(Tensor::from_vec(vec![grads[1] as f32], &[1])));
                opt.step(lr as f32);
                for i in 0..2 {
                    let g = grads[i] + wd * expect[i];
                    buf[i] = if t == 0 {
                        g
                    } else {
                        mu * buf[i] + (1.0 - tau) * g
                    };
                    let d = if nesterov { g + mu * buf[i] } else { buf[i] };
                    expect[i] -= lr * d;
                }
                assert!((a.value().item() as f64 - expect[0]).abs() < 1e-6);
                assert!((b.value().item() as f64 - expect[1]).abs() < 1e-6);
            }
        }
    }
}
