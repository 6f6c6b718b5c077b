//! Learning works end to end on a 2-D data set: an MLP eps-predictor trained with L_simple on
//! two moons produces DDPM samples whose energy distance to the data is below 0.02 and at
//! least 10x below that of the same model untrained.

use autograd::nn::{Ctx, Linear, Module, ParamStore, Silu};
use autograd::optim::{Adam, AdamConfig, Optimizer};
use autograd::toy_data::two_moons;
use autograd::{no_grad, Var};
use ddpm::diffusion::{l_simple, Diffusion, Prediction, VarianceKind};
use ddpm::sample::{sample, SampleOptions, Sampler, Spacing};
use ddpm::schedule::{BetaSchedule, Schedule};
use tensor::rng::Rng;
use tensor::Tensor;

const STEPS: usize = 100;
const FREQS: usize = 8;

/// `[sin(t w_k), cos(t w_k)]` for `w_k = 10000^(-k / FREQS)`: the timestep as 16 features.
fn embed(t: &[usize]) -> Tensor {
    let mut out = Vec::with_capacity(t.len() * 2 * FREQS);
    for &t in t {
        for k in 0..FREQS {
            let w = (-(k as f32) / FREQS as f32 * 10000f32.ln()).exp();
            out.push((t as f32 * w).sin());
        }
        for k in 0..FREQS {
            let w = (-(k as f32) / FREQS as f32 * 10000f32.ln()).exp();
            out.push((t as f32 * w).cos());
        }
    }
    Tensor::from_vec(out, &[t.len(), 2 * FREQS])
}

struct Denoiser {
    layers: Vec<Linear>,
}

impl Denoiser {
    fn new(store: &ParamStore, rng: &mut Rng) -> Denoiser {
        let dims = [2 + 2 * FREQS, 128, 128, 128, 2];
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| Linear::new(&store.sub(i), rng, d[0], d[1], true))
            .collect();
        Denoiser { layers }
    }

    fn forward(&self, ctx: &mut Ctx, x: &Var, t: &[usize]) -> Var {
        let mut h = Var::concat(&[x, &Var::constant(embed(t))], 1);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(ctx, &h);
            if i + 1 < self.layers.len() {
                h = Silu.forward(ctx, &h);
            }
        }
        h
    }

    fn predict(&self, x: &Tensor, t: &[usize]) -> Tensor {
        no_grad(|| {
            self.forward(&mut Ctx::eval(), &Var::constant(x.clone()), t)
                .value()
                .clone()
        })
    }
}

/// The data: two moons, centred and scaled to about unit spread.
fn data(n: usize, rng: &mut Rng) -> Tensor {
    let (points, _) = two_moons(n, 0.05, rng);
    let centre = Tensor::from_vec(vec![0.5, 0.25], &[2]);
    points.sub(&centre).mul_scalar(1.0 / 0.9)
}

/// The energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` between two point sets.
fn energy_distance(a: &Tensor, b: &Tensor) -> f64 {
    let mean_dist = |p: &Tensor, q: &Tensor| {
        let (p, q) = (p.data(), q.data());
        let mut total = 0.0f64;
        for i in (0..p.len()).step_by(2) {
            for j in (0..q.len()).step_by(2) {
                total += (((p[i] - q[j]) as f64).powi(2) + ((p[i + 1] - q[j + 1]) as f64).powi(2))
                    .sqrt();
            }
        }
        total / ((p.len() / 2) * (q.len() / 2)) as f64
    };
    2.0 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)
}

fn draw(model: &Denoiser, diffusion: &Diffusion, n: usize, seed: u64) -> Tensor {
    let options = SampleOptions {
        sampler: Sampler::Ddpm,
        steps: STEPS,
        spacing: Spacing::Leading,
        clip: false,
    };
    let mut f = |x: &Tensor, t: &[usize]| model.predict(x, t);
    sample(
        diffusion,
        &mut f,
        &[n, 2],
        options,
        &mut Rng::new(seed, 0),
        &mut |_| {},
    )
}

#[test]
fn mlp_denoiser_learns_two_moons() {
    let diffusion = Diffusion::new(
        Schedule::new(BetaSchedule::COSINE, STEPS),
        Prediction::Eps,
        VarianceKind::FixedSmall,
    );
    let mut rng = Rng::new(11, 0);
    let store = ParamStore::new();
    let model = Denoiser::new(&store, &mut rng);
    let reference = data(1000, &mut rng.fork(1));
    let untrained = energy_distance(&draw(&model, &diffusion, 1000, 3), &reference);

    let train = data(8192, &mut rng.fork(2));
    let mut optimizer = Adam::new(
        store.params(),
        AdamConfig {
            weight_decay: 0.0,
            ..AdamConfig::adamw()
        },
    );
    let mut batches = rng.fork(3);
    let batch = 256;
    for step in 0..3000 {
        let rows = batches.below_many(batch, 8192);
        let mut x0 = Vec::with_capacity(2 * batch);
        for &r in &rows {
            x0.extend_from_slice(&train.data()[2 * r as usize..2 * r as usize + 2]);
        }
        let x0 = Tensor::from_vec(x0, &[batch, 2]);
        let t: Vec<usize> = batches
            .below_many(batch, STEPS as u64)
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let eps = batches.normal(&[batch, 2]);
        let xt = diffusion.q_sample(&x0, &t, &eps);
        let mut ctx = Ctx::train(batches.fork(4));
        let loss = l_simple(&model.forward(&mut ctx, &Var::constant(xt), &t), &eps);
        store.zero_grad();
        loss.backward();
        let lr = if step < 2000 { 2e-3 } else { 5e-4 };
        optimizer.step(lr);
    }
    let trained = energy_distance(&draw(&model, &diffusion, 1000, 3), &reference);
    println!("energy distance to the data: untrained {untrained:.4}, trained {trained:.4}");
    assert!(trained < 0.02, "trained energy distance {trained}");
    assert!(
        trained * 10.0 < untrained,
        "trained {trained} is not 10x below untrained {untrained}"
    );
}
