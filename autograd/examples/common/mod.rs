//! The two-moons MLP shared by the `mlp` example and the memory test.

use autograd::nn::{Ctx, Linear, Module, ParamStore, Relu, Sequential};
use autograd::ops::loss::cross_entropy;
use autograd::optim::{Adam, AdamConfig, Optimizer};
use autograd::toy_data::two_moons;
use autograd::Var;
use tensor::rng::Rng;
use tensor::Tensor;

/// A 2-128-128-2 MLP with ReLU, its parameters, an AdamW optimizer and a training set.
pub struct MoonsMlp {
    pub store: ParamStore,
    pub model: Sequential,
    pub optimizer: Adam,
    pub points: Tensor,
    pub labels: Vec<usize>,
    pub rng: Rng,
}

impl MoonsMlp {
    pub fn new(seed: u64) -> MoonsMlp {
        let mut rng = Rng::new(seed, 0);
        let store = ParamStore::new();
        let model = Sequential::new()
            .push(Linear::new(&store.sub(0), &mut rng, 2, 128, true))
            .push(Relu)
            .push(Linear::new(&store.sub(2), &mut rng, 128, 128, true))
            .push(Relu)
            .push(Linear::new(&store.sub(4), &mut rng, 128, 2, true));
        let optimizer = Adam::new(store.params(), AdamConfig::adamw());
        let (points, labels) = two_moons(2048, 0.1, &mut rng.fork(1));
        MoonsMlp {
            store,
            model,
            optimizer,
            points,
            labels,
            rng: rng.fork(2),
        }
    }

    /// One AdamW step on a random batch of 32; returns the loss.
    pub fn step(&mut self, lr: f32) -> f32 {
        let rows: Vec<usize> = (0..32)
            .map(|_| self.rng.below(self.labels.len() as u64) as usize)
            .collect();
        let mut batch = Vec::with_capacity(64);
        for &r in &rows {
            batch.extend_from_slice(&self.points.data()[2 * r..2 * r + 2]);
        }
        let labels: Vec<usize> = rows.iter().map(|&r| self.labels[r]).collect();
        let mut ctx = Ctx::train(self.rng.fork(3));
        let x = Var::constant(Tensor::from_vec(batch, &[32, 2]));
        let loss = cross_entropy(&self.model.forward(&mut ctx, &x), &labels);
        self.store.zero_grad();
        loss.backward();
        self.optimizer.step(lr);
        loss.value().item()
    }

    /// The model's logits for `points`, recording nothing.
    pub fn predict(&self, points: &Tensor) -> Tensor {
        autograd::no_grad(|| {
            self.model
                .forward(&mut Ctx::eval(), &Var::constant(points.clone()))
                .value()
                .clone()
        })
    }
}
