//! A small CNN classifier for grey images, whose penultimate layer is the feature space of the
//! sample-quality metrics in [`crate::fid`] (our stand-in for Inception features).
//!
//! Architecture (`cnn-32-64-128-gap`), for `1 x 32 x 32` input (smaller images are padded to 32
//! with the background value `-1`, centred, as [`Dataset::pad_to`] does):
//!
//! | layer | output |
//! | --- | --- |
//! | conv 3x3, 32, GroupNorm(8), SiLU | 32 x 32 x 32 |
//! | conv 3x3 stride 2, 64, GroupNorm(8), SiLU | 64 x 16 x 16 |
//! | conv 3x3 stride 2, 128, GroupNorm(8), SiLU | 128 x 8 x 8 |
//! | conv 3x3 stride 2, 128, GroupNorm(8), SiLU | 128 x 4 x 4 |
//! | flatten, linear, SiLU (the **features**) | 128 |
//! | linear | classes |
//!
//! Weights are saved as safetensors with metadata (architecture, classes, data set, test
//! accuracy, training settings) so that a metric can say which classifier it used.

use std::collections::BTreeMap;
use std::path::Path;

use autograd::nn::{Conv2d, Ctx, GroupNorm, Linear, Module, ParamStore, Silu};
use autograd::ops::loss::cross_entropy;
use autograd::optim::{Adam, AdamConfig, Optimizer};
use autograd::{no_grad, Var};
use tensor::io::SafetensorsFile;
use tensor::rng::Rng;
use tensor::{Error, Result, Tensor};

use crate::data::Dataset;

/// The architecture's name, stored in the metadata and checked on load.
pub const ARCHITECTURE: &str = "cnn-32-64-128-128-fc128";
/// The side the classifier works at; smaller images are padded to it.
pub const INPUT_SIZE: usize = 32;
/// The width of [`Classifier::features`].
pub const FEATURES: usize = 128;
/// Images per forward pass when featurising many images.
const CHUNK: usize = 256;

/// The trained network and what it was trained on.
pub struct Classifier {
    store: ParamStore,
    blocks: Vec<(Conv2d, GroupNorm)>,
    fc: Linear,
    head: Linear,
    classes: usize,
    /// Metadata: `architecture`, `classes`, `data`, `test_accuracy`, and the training settings.
    pub metadata: BTreeMap<String, String>,
}

/// Training settings for [`Classifier::train`].
#[derive(Clone, Copy, Debug)]
pub struct TrainOptions {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate (AdamW, cosine decay to zero).
    pub lr: f32,
    /// Seed of the initialisation and of the batches.
    pub seed: u64,
}

impl Classifier {
    /// A freshly initialised classifier for `classes` classes.
    pub fn new(classes: usize, seed: u64) -> Classifier {
        let store = ParamStore::new();
        let mut rng = Rng::new(seed, 0);
        let plan = [(1, 32, 1), (32, 64, 2), (64, 128, 2), (128, 128, 2)];
        let blocks = plan
            .iter()
            .enumerate()
            .map(|(i, &(ci, co, s))| {
                let conv = Conv2d::new(
                    &store.sub(format!("conv{i}")),
                    &mut rng,
                    ci,
                    co,
                    3,
                    s,
                    1,
                    true,
                );
                let norm = GroupNorm::new(&store.sub(format!("norm{i}")), 8, co, 1e-5);
                (conv, norm)
            })
            .collect();
        let fc = Linear::new(&store.sub("fc"), &mut rng, 128 * 4 * 4, FEATURES, true);
        let head = Linear::new(&store.sub("head"), &mut rng, FEATURES, classes, true);
        let metadata = BTreeMap::from([
            ("architecture".to_string(), ARCHITECTURE.to_string()),
            ("classes".to_string(), classes.to_string()),
            ("input_size".to_string(), INPUT_SIZE.to_string()),
        ]);
        Classifier {
            store,
            blocks,
            fc,
            head,
            classes,
            metadata,
        }
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The features `[N, 128]` of a batch `[N, 1, 32, 32]` (a graph node).
    fn feature_var(&self, ctx: &mut Ctx, x: &Var) -> Var {
        let mut h = x.clone();
        for (conv, norm) in &self.blocks {
            h = conv.forward(ctx, &h);
            h = norm.forward(ctx, &h);
            h = Silu.forward(ctx, &h);
        }
        let n = h.shape()[0];
        let flat = h.reshape(&[n, 128 * 4 * 4]);
        let f = self.fc.forward(ctx, &flat);
        Silu.forward(ctx, &f)
    }

    /// Runs `f` on chunks of `images` (padded to 32) without recording, and stacks the rows.
    fn map_chunks(&self, images: &Tensor, f: impl Fn(&Var) -> Var) -> Result<Tensor> {
        let images = prepare(images)?;
        let n = images.shape()[0];
        let mut rows: Vec<f32> = Vec::new();
        let mut width = 0;
        for start in (0..n).step_by(CHUNK) {
            let chunk = images.slice(0, start, (start + CHUNK).min(n));
            let out = no_grad(|| f(&Var::constant(chunk)).value().clone());
            width = out.shape()[1];
            rows.extend_from_slice(out.data());
        }
        Ok(Tensor::from_vec(rows, &[n, width]))
    }

    /// The penultimate-layer features `[N, 128]` of `images` (`[N, 1, H, W]`, `H, W <= 32`, in
    /// `[-1, 1]`). Fails for other shapes.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        self.map_chunks(images, |x| self.feature_var(&mut Ctx::eval(), x))
    }

    /// The logits `[N, classes]` of `images` (see [`Classifier::features`]).
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        self.map_chunks(images, |x| {
            let mut ctx = Ctx::eval();
            let f = self.feature_var(&mut ctx, x);
            self.head.forward(&mut ctx, &f)
        })
    }

    /// The class probabilities `[N, classes]` (softmax of the logits, computed in f64).
    pub fn probabilities(&self, images: &Tensor) -> Result<Vec<Vec<f64>>> {
        let logits = self.logits(images)?;
        Ok(logits.data().chunks(self.classes).map(softmax).collect())
    }

    /// The fraction of `data` classified correctly.
    pub fn accuracy(&self, data: &Dataset) -> Result<f64> {
        if data.is_empty() {
            return Err(Error::Invalid(format!(
                "accuracy: data set `{}` is empty",
                data.name()
            )));
        }
        let logits = self.logits(data.images())?;
        let correct = logits
            .data()
            .chunks(self.classes)
            .zip(data.labels())
            .filter(|(row, &label)| argmax(row) == usize::from(label))
            .count();
        Ok(correct as f64 / data.len() as f64)
    }

    /// Trains a classifier on `data` with AdamW (cosine learning-rate decay), and returns it
    /// with its accuracy on `test`, which is also recorded in its metadata. The same options
    /// give the same weights.
    pub fn train(
        data: &Dataset,
        test: &Dataset,
        options: TrainOptions,
    ) -> Result<(Classifier, f64)> {
        check_data(data)?;
        check_data(test)?;
        if options.steps == 0 || options.batch == 0 || options.lr.is_nan() || options.lr <= 0.0 {
            return Err(Error::Invalid(format!(
                "classifier training: expected steps, batch and lr above zero, found {}, {}, {}",
                options.steps, options.batch, options.lr
            )));
        }
        let classes = data.num_classes().max(test.num_classes());
        let model = Classifier::new(classes, options.seed);
        let train = data.pad_to(INPUT_SIZE)?;
        let mut optimizer = Adam::new(model.store.params(), AdamConfig::adamw());
        let mut batches = Rng::new(options.seed, 1);
        for step in 0..options.steps {
            let rows: Vec<usize> = batches
                .below_many(options.batch, train.len() as u64)
                .into_iter()
                .map(|r| r as usize)
                .collect();
            let x = Var::constant(train.batch(&rows));
            let targets: Vec<usize> = rows
                .iter()
                .map(|&r| usize::from(train.labels()[r]))
                .collect();
            let mut ctx = Ctx::train(Rng::new(options.seed, 2 + step as u64));
            let f = model.feature_var(&mut ctx, &x);
            let loss = cross_entropy(&model.head.forward(&mut ctx, &f), &targets);
            model.store.zero_grad();
            loss.backward();
            let progress = step as f32 / options.steps as f32;
            optimizer.step(options.lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()));
        }
        let accuracy = model.accuracy(test)?;
        let mut model = model;
        let meta = [
            ("data", data.name().to_string()),
            ("test_accuracy", format!("{accuracy:.4}")),
            ("test_images", test.len().to_string()),
            ("steps", options.steps.to_string()),
            ("batch", options.batch.to_string()),
            ("lr", options.lr.to_string()),
            ("seed", options.seed.to_string()),
        ];
        for (k, v) in meta {
            model.metadata.insert(k.to_string(), v);
        }
        Ok((model, accuracy))
    }

    /// Writes the weights and [`Classifier::metadata`] to a safetensors file (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.store.save(path, &self.metadata)
    }

    /// Reads a classifier written by [`Classifier::save`]. Fails if the file is not one.
    pub fn load(path: impl AsRef<Path>) -> Result<Classifier> {
        let file = SafetensorsFile::open(path.as_ref())?;
        let meta = file.metadata().clone();
        let shown = path.as_ref().display().to_string();
        let bad = |message: String| Error::Format {
            path: shown.clone(),
            message,
        };
        match meta.get("architecture") {
            Some(a) if a == ARCHITECTURE => {}
            other => {
                return Err(bad(format!(
                    "expected a classifier of architecture `{ARCHITECTURE}` (made by `ddpm \
                     classifier train`), found architecture {other:?}"
                )))
            }
        }
        let classes: usize = meta
            .get("classes")
            .and_then(|c| c.parse().ok())
            .filter(|&c| c > 0)
            .ok_or_else(|| bad("expected a positive `classes` in the metadata".into()))?;
        let mut model = Classifier::new(classes, 0);
        model.store.load_from(&file)?;
        model.metadata = meta;
        Ok(model)
    }
}

fn check_data(data: &Dataset) -> Result<()> {
    let [c, h, w] = data.image_shape();
    if data.is_empty() || c != 1 || h > INPUT_SIZE || w > INPUT_SIZE {
        return Err(Error::Invalid(format!(
            "classifier: expected a non-empty data set of 1-channel images at most \
             {INPUT_SIZE}x{INPUT_SIZE}, found `{}` with {} images of {c}x{h}x{w}",
            data.name(),
            data.len()
        )));
    }
    Ok(())
}

/// `images` padded to [`INPUT_SIZE`] (centred, background `-1`); fails unless they are
/// `[N, 1, H, W]` with `H, W <= 32`.
fn prepare(images: &Tensor) -> Result<Tensor> {
    let s = images.shape();
    if s.len() != 4 || s[1] != 1 || s[2] > INPUT_SIZE || s[3] > INPUT_SIZE {
        return Err(Error::Invalid(format!(
            "classifier: expected images [N, 1, H, W] with H, W at most {INPUT_SIZE}, found \
             shape {s:?}"
        )));
    }
    let labels = vec![0u8; s[0]];
    let data = Dataset::new("images", images.clone(), labels, 1)?;
    Ok(data.pad_to(INPUT_SIZE)?.images().clone())
}

/// The index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// The softmax of `logits`, in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}
