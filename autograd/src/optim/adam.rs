//! Adam (Kingma and Ba, 2015) and AdamW (Loshchilov and Hutter, 2019), as PyTorch defines them.

use std::ops::{Add, Div, Mul, Sub};

use rayon::prelude::*;
use tensor::{Result, Tensor};
use wide::f32x8;

use super::{find_state, find_step, Optimizer};
use crate::param::ParamData;
use crate::Param;

/// Adam's hyper-parameters. `decoupled` selects AdamW.
#[derive(Clone, Copy, Debug)]
pub struct AdamConfig {
    /// Decay of the first-moment average (beta_1).
    pub beta1: f32,
    /// Decay of the second-moment average (beta_2).
    pub beta2: f32,
    /// Added to the denominator for stability.
    pub eps: f32,
    /// Weight decay: added to the gradient as `wd * p` (Adam), or applied to the weights
    /// directly as `p -= lr * wd * p` (AdamW).
    pub weight_decay: f32,
    /// AdamW's decoupled weight decay instead of Adam's L2 term.
    pub decoupled: bool,
}

impl AdamConfig {
    /// PyTorch's `torch.optim.Adam` defaults.
    pub fn adam() -> AdamConfig {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }
    /// PyTorch's `torch.optim.AdamW` defaults (weight decay 0.01).
    pub fn adamw() -> AdamConfig {
        AdamConfig {
            weight_decay: 1e-2,
            decoupled: true,
            ..AdamConfig::adam()
        }
    }
}

/// Adam / AdamW. With `g` the gradient and `t` the step (from 1):
///
/// ```text
/// AdamW: p <- p - lr * wd * p               Adam: g <- g + wd * p
/// m <- b1 m + (1 - b1) g                    v <- b2 v + (1 - b2) g^2
/// p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
/// ```
///
/// The bias corrections are computed in f64 and applied as PyTorch does:
/// `p -= (lr / c1) * m / (sqrt(v) / sqrt(c2) + eps)` with `c_i = 1 - b_i^t`.
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Param)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl Adam {
    /// An optimizer for these named parameters, with zeroed moments.
    pub fn new(params: Vec<(String, Param)>, config: AdamConfig) -> Adam {
        let zeros = |p: &Param| Tensor::zeros(&p.shape());
        let m = params.iter().map(|(_, p)| zeros(p)).collect();
        let v = params.iter().map(|(_, p)| zeros(p)).collect();
        Adam {
            config,
            params,
            m,
            v,
            t: 0,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, lr: f32) {
        let _prof =
            tensor::profile::scope("adam_step", || format!("{} tensors", self.params.len()));
        self.t += 1;
        let c = self.config;
        let c1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let c2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / c1) as f32;
        let c2_sqrt = c2.sqrt() as f32;
        let k = AdamStep {
            lr,
            step_size,
            c2_sqrt,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled: c.decoupled,
        };
        // Every parameter borrowed at once on this thread, then the updates in parallel over
        // tensors (each element's update is independent, so the result does not depend on
        // the thread count).
        let mut data: Vec<_> = self.params.iter().map(|(_, p)| p.borrow_data()).collect();
        let mut work = Vec::with_capacity(data.len());
        for ((d, m), v) in data.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            let ParamData { value, grad } = &mut **d;
            if let Some(g) = grad.as_ref() {
                work.push((value.data_mut(), g.data(), m.data_mut(), v.data_mut()));
            }
        }
        work.into_par_iter()
            .for_each(|(p, g, m, v)| k.apply(p, g, m, v));
    }

    fn steps(&self) -> u64 {
        self.t
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![(
            "step".to_string(),
            Tensor::from_vec(vec![self.t as f32], &[1]),
        )];
        for (((name, _), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            state.push((format!("{name}.exp_avg"), m.clone()));
            state.push((format!("{name}.exp_avg_sq"), v.clone()));
        }
        state
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let t = find_step(state)?;
        let mut m = Vec::new();
        let mut v = Vec::new();
        for (name, p) in &self.params {
            m.push(find_state(state, &format!("{name}.exp_avg"), &p.shape())?.clone());
            v.push(find_state(state, &format!("{name}.exp_avg_sq"), &p.shape())?.clone());
        }
        (self.t, self.m, self.v) = (t, m, v);
        Ok(())
    }
}

/// One step's constants, applied element by element (8 lanes at a time).
struct AdamStep {
    lr: f32,
    step_size: f32,
    c2_sqrt: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
}

impl AdamStep {
    /// The update of one element, on lanes of any width `T` (f32 or f32x8).
    #[inline(always)]
    fn lane<T>(&self, p: T, g: T, m: T, v: T) -> (T, T, T)
    where
        T: Copy
            + Add<Output = T>
            + Sub<Output = T>
            + Mul<Output = T>
            + Div<Output = T>
            + From<f32>
            + Sqrt,
    {
        let s = |x: f32| T::from(x);
        let (p, g) = if self.decoupled {
            (p - s(self.lr * self.weight_decay) * p, g)
        } else {
            (p, g + s(self.weight_decay) * p)
        };
        let m = s(self.beta1) * m + s(1.0 - self.beta1) * g;
        let v = s(self.beta2) * v + s(1.0 - self.beta2) * g * g;
        let p = p - s(self.step_size) * m / (v.sqrt_lanes() / s(self.c2_sqrt) + s(self.eps));
        (p, m, v)
    }

    /// Updates every element; large tensors in parallel chunks (element-wise, so the result
    /// does not depend on the thread count).
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        const CHUNK: usize = 1 << 15;
        if p.len() <= CHUNK {
            return self.apply_serial(p, g, m, v);
        }
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| self.apply_serial(p, g, m, v));
    }

    fn apply_serial(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let n = p.len();
        let body = n - n % 8;
        let load = |x: &[f32], i: usize| f32x8::from(<[f32; 8]>::try_from(&x[i..i + 8]).unwrap());
        for i in (0..body).step_by(8) {
            let (np, nm, nv) = self.lane(load(p, i), load(g, i), load(m, i), load(v, i));
            p[i..i + 8].copy_from_slice(&np.to_array());
            m[i..i + 8].copy_from_slice(&nm.to_array());
            v[i..i + 8].copy_from_slice(&nv.to_array());
        }
        for i in body..n {
            (p[i], m[i], v[i]) = self.lane(p[i], g[i], m[i], v[i]);
        }
    }
}

/// Square root on scalars and on lanes.
trait Sqrt {
    fn sqrt_lanes(self) -> Self;
}

impl Sqrt for f32 {
    fn sqrt_lanes(self) -> f32 {
        self.sqrt()
    }
}

impl Sqrt for f32x8 {
    fn sqrt_lanes(self) -> f32x8 {
        self.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two parameters, two steps of AdamW and Adam, against updates worked by hand in f64.
    #[test]
    fn adamw_and_adam_match_hand_computed_updates() {
        for decoupled in [true, false] {
            let (lr, b1, b2, eps, wd) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64, 0.05f64);
            let a = Param::new(Tensor::from_vec(vec![1.0], &[1]));
            let b = Param::new(Tensor::from_vec(vec![-2.0], &[1]));
            let config = AdamConfig {
                beta1: b1 as f32,
                beta2: b2 as f32,
                eps: eps as f32,
                weight_decay: wd as f32,
                decoupled,
            };
            let mut opt = Adam::new(
                vec![("a".into(), a.clone()), ("b".into(), b.clone())],
                config,
            );
            let mut expect = [1.0f64, -2.0];
            let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
            for t in 1..=2 {
                // The gradient of L = p_a^2 + 3 p_b at the current point.
                let grads = [2.0 * expect[0], 3.0];
                a.set_grad(Some(Tensor::from_vec(vec![grads[0] as f32], &[1])));
                b.set_grad(Some(Tensor::from_vec(vec![grads[1] as f32], &[1])));
                opt.step(lr as f32);
                for i in 0..2 {
                    let mut g = grads[i];
                    if decoupled {
                        expect[i] -= lr * wd * expect[i];
                    } else {
                        g += wd * expect[i];
                    }
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    let mhat = m[i] / (1.0 - b1.powi(t));
                    let vhat = v[i] / (1.0 - b2.powi(t));
                    expect[i] -= lr * mhat / (vhat.sqrt() + eps);
                }
                assert!(
                    (a.value().item() as f64 - expect[0]).abs() < 1e-6,
                    "step {t}: {} vs {}",
                    a.value().item(),
                    expect[0]
                );
                assert!(
                    (b.value().item() as f64 - expect[1]).abs() < 1e-6,
                    "step {t}: {} vs {}",
                    b.value().item(),
                    expect[1]
                );
            }
        }
    }

    #[test]
    fn state_round_trips_and_resumes_identically() {
        let make = || {
            let p = Param::new(Tensor::from_vec(vec![0.5, -1.5, 2.0], &[3]));
            let opt = Adam::new(vec![("w".into(), p.clone())], AdamConfig::adamw());
            (p, opt)
        };
        let grad = Tensor::from_vec(vec![0.3, -0.2, 0.1], &[3]);
        let (p1, mut o1) = make();
        for _ in 0..3 {
            p1.set_grad(Some(grad.clone()));
            o1.step(1e-2);
        }
        let (p2, mut o2) = make();
        p2.set_value(p1.value());
        let path =
            std::env::temp_dir().join(format!("adam-state-{}.safetensors", std::process::id()));
        o1.save_state(&path).unwrap();
        o2.load_state_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(o2.steps(), 3);
        for (p, o) in [(&p1, &mut o1), (&p2, &mut o2)] {
            p.set_grad(Some(grad.clone()));
            o.step(1e-2);
        }
        assert_eq!(p1.value().data(), p2.value().data());
        let err = o2.load_state(&o1.state()[..2]).unwrap_err().to_string();
        assert!(err.contains("no tensor named `w.exp_avg_sq`"), "{err}");
    }
}
