//! Training a UNet with `L_simple` (or the hybrid loss): one step at a time, with AdamW,
//! warm-up, clipping, an EMA of the weights, and checkpoints that resume bitwise.
//!
//! All randomness of step `k` (the batch, the flips, the timesteps, the noise) is drawn from
//! `Rng::new(seed, STEP_STREAM + k)`, and its dropout masks from `DROPOUT_STREAM + k`: the counter-based generator makes the step's draws a
//! function of `(seed, k)` alone, so a run resumed from a checkpoint at step `k` continues
//! exactly as if it had never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use autograd::nn::{Ctx, ParamStore};
use autograd::optim::{clip_grad_norm, Adam, AdamConfig, Ema, EmaConfig, LrSchedule, Optimizer};
use autograd::{no_grad, Var};
use tensor::io::{save, SafetensorsFile};
use tensor::rng::Rng;
use tensor::{Error, Result, Tensor};

use crate::data::{random_hflip, Dataset};
use crate::diffusion::{hybrid_loss, l_simple, Diffusion, LossKind, Prediction, VarianceKind};
use crate::schedule::{BetaSchedule, Schedule};
use crate::unet::{UNet, UNetConfig};

/// The weights' file name in a checkpoint folder (and its `ema/` sub-folder): diffusers' name,
/// so that each folder loads with `UNet2DModel.from_pretrained`.
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// The stream of step `k`'s randomness is `STEP_STREAM + k`.
const STEP_STREAM: u64 = 1 << 32;
/// The stream of step `k`'s dropout masks is `DROPOUT_STREAM + k`.
const DROPOUT_STREAM: u64 = 2 << 32;
/// The stream the initial weights are drawn from.
const INIT_STREAM: u64 = 1;

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The network.
    pub model: UNetConfig,
    /// Steps of the diffusion schedule (T).
    pub timesteps: usize,
    /// The beta schedule.
    pub schedule: BetaSchedule,
    /// `L_simple` or the hybrid loss (which learns the variance).
    pub loss: LossKind,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (None: no clipping).
    pub grad_clip: Option<f32>,
    /// The EMA's maximum decay (None: no EMA).
    pub ema_decay: Option<f32>,
    /// Flip each training image horizontally with probability 1/2.
    pub random_flip: bool,
    /// The seed of every random draw.
    pub seed: u64,
}

impl TrainConfig {
    /// The diffusion process this run trains for.
    pub fn diffusion(&self) -> Diffusion {
        let variance = match self.loss {
            LossKind::Simple => VarianceKind::FixedSmall,
            LossKind::Hybrid => VarianceKind::LearnedRange,
        };
        Diffusion::new(
            Schedule::new(self.schedule, self.timesteps),
            Prediction::Eps,
            variance,
        )
    }
}

/// What one step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// The step just taken (from 1).
    pub step: u64,
    /// The loss before the update.
    pub loss: f32,
    /// The learning rate used.
    pub lr: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
}

/// A training run in progress.
pub struct Trainer {
    /// The run's settings.
    pub config: TrainConfig,
    /// The network.
    pub model: UNet,
    /// Its parameters, under diffusers' names.
    pub store: ParamStore,
    /// The diffusion process.
    pub diffusion: Diffusion,
    optimizer: Adam,
    ema: Option<Ema>,
    schedule: LrSchedule,
    step: u64,
}

impl Trainer {
    /// A fresh run: weights initialised from the seed, zeroed optimizer state.
    pub fn new(config: TrainConfig) -> Trainer {
        let diffusion = config.diffusion();
        let store = ParamStore::new();
        let model = UNet::new(
            config.model.clone(),
            &store,
            &mut Rng::new(config.seed, INIT_STREAM),
        );
        let optimizer = Adam::new(
            store.params(),
            AdamConfig {
                weight_decay: config.weight_decay,
                ..AdamConfig::adamw()
            },
        );
        let ema = config
            .ema_decay
            .map(|d| Ema::new(store.params(), EmaConfig::with_decay(d)));
        let schedule = LrSchedule::Constant {
            base: config.lr,
            warmup: config.warmup,
        };
        Trainer {
            config,
            model,
            store,
            diffusion,
            optimizer,
            ema,
            schedule,
            step: 0,
        }
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One optimisation step on a batch drawn from `data`.
    pub fn step(&mut self, data: &Dataset) -> StepStats {
        // The pool's workers stay awake through the step's thousands of parallel ops.
        let _awake = tensor::awake::keep_awake();
        let c = &self.config;
        let mut rng = Rng::new(c.seed, STEP_STREAM + self.step);
        let rows: Vec<usize> = rng
            .below_many(c.batch, data.len() as u64)
            .into_iter()
            .map(|r| r as usize)
            .collect();
        let mut x0 = data.batch(&rows);
        if c.random_flip {
            x0 = random_hflip(&x0, &mut rng);
        }
        let t: Vec<usize> = rng
            .below_many(c.batch, c.timesteps as u64)
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let eps = rng.normal_like(&x0);
        let xt = self.diffusion.q_sample(&x0, &t, &eps);
        let target = self.diffusion.training_target(&x0, &t, &eps);

        let mut ctx = Ctx::train(Rng::new(c.seed, DROPOUT_STREAM + self.step));
        let timesteps: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let output = self
            .model
            .forward(&mut ctx, &Var::constant(xt.clone()), &timesteps);
        let loss = match c.loss {
            LossKind::Simple => l_simple(&output, &target),
            LossKind::Hybrid => hybrid_loss(&self.diffusion, &output, &x0, &xt, &t, &target).0,
        };
        self.store.zero_grad();
        loss.backward();
        let params = self.store.params();
        let grad_norm = clip_grad_norm(&params, c.grad_clip.unwrap_or(f32::INFINITY));
        let lr = self.schedule.at(self.step);
        self.optimizer.step(lr);
        if let Some(ema) = &mut self.ema {
            ema.update();
        }
        self.step += 1;
        StepStats {
            step: self.step,
            loss: loss.value().item(),
            lr,
            grad_norm,
        }
    }

    /// The model's output for `x_t` at `timesteps`, recording nothing; with the EMA weights
    /// when `use_ema` (and the run keeps an EMA).
    pub fn predict(&self, x: &Tensor, timesteps: &[usize], use_ema: bool) -> Tensor {
        let run = || {
            let t: Vec<f32> = timesteps.iter().map(|&i| i as f32).collect();
            no_grad(|| {
                self.model
                    .forward(&mut Ctx::eval(), &Var::constant(x.clone()), &t)
                    .value()
                    .clone()
            })
        };
        match (&self.ema, use_ema) {
            (Some(ema), true) => with_weights(&self.store, &ema.shadows(), run),
            _ => run(),
        }
    }

    /// Writes a checkpoint folder `dir` atomically (built in a temporary sibling, then renamed):
    /// `diffusion_pytorch_model.safetensors` with `config.json`, and the same pair under `ema/`
    /// (diffusers' file and parameter names: each folder loads with diffusers'
    /// `UNet2DModel`), `optimizer.safetensors`, and `trainer.json` (the step and the config).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("checkpoint");
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let io = |e: std::io::Error, p: &Path| Error::Io {
            path: p.display().to_string(),
            source: e,
        };
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io(e, &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io(e, &tmp))?;
        // One metadata entry: the safetensors crate keeps metadata in a HashMap, so with several
        // entries their order in the header (and the file's bytes) would vary between runs.
        let meta = BTreeMap::from([("step".to_string(), self.step.to_string())]);
        let config = self.config.model.to_diffusers_json();
        let write_config =
            |dir: &Path| std::fs::write(dir.join("config.json"), &config).map_err(|e| io(e, dir));
        self.store.save(tmp.join(WEIGHTS), &meta)?;
        write_config(&tmp)?;
        if let Some(ema) = &self.ema {
            let shadows = ema.shadows();
            let named: Vec<(&str, &Tensor)> =
                shadows.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let ema_dir = tmp.join("ema");
            std::fs::create_dir_all(&ema_dir).map_err(|e| io(e, &ema_dir))?;
            save(ema_dir.join(WEIGHTS), &named, &meta)?;
            write_config(&ema_dir)?;
            let state = ema.state();
            let named: Vec<(&str, &Tensor)> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
            save(tmp.join("ema_state.safetensors"), &named, &meta)?;
        }
        self.optimizer
            .save_state(&tmp.join("optimizer.safetensors"))?;
        let json = format!(
            "{{\n  \"step\": {},\n  \"seed\": {}\n}}\n",
            self.step, self.config.seed
        );
        std::fs::write(tmp.join("trainer.json"), json).map_err(|e| io(e, &tmp))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(e, dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| io(e, dir))
    }

    /// Restores a run of `config` from a checkpoint folder written by
    /// [`Trainer::save_checkpoint`]; training then continues exactly where it stopped.
    pub fn resume(config: TrainConfig, dir: &Path) -> Result<Trainer> {
        let mut trainer = Trainer::new(config);
        trainer.store.load(dir.join(WEIGHTS))?;
        trainer
            .optimizer
            .load_state_file(&dir.join("optimizer.safetensors"))?;
        if let Some(ema) = &mut trainer.ema {
            ema.load_state(&tensor::io::load_all(dir.join("ema_state.safetensors"))?)?;
        }
        let file = SafetensorsFile::open(dir.join(WEIGHTS))?;
        let step = file
            .metadata()
            .get("step")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Error::Format {
                path: file.path().to_string(),
                message: "the checkpoint's metadata has no step count".into(),
            })?;
        if step != trainer.optimizer.steps() {
            return Err(Error::Format {
                path: dir.display().to_string(),
                message: format!(
                    "model is at step {step} but the optimizer state at step {}",
                    trainer.optimizer.steps()
                ),
            });
        }
        trainer.step = step;
        Ok(trainer)
    }
}

/// Runs `f` with the store's parameters temporarily set to `weights`, then restores them.
fn with_weights<R>(store: &ParamStore, weights: &[(String, Tensor)], f: impl FnOnce() -> R) -> R {
    let params = store.params();
    let saved: Vec<Tensor> = params.iter().map(|(_, p)| p.value()).collect();
    for ((_, p), (_, w)) in params.iter().zip(weights) {
        p.set_value(w.clone());
    }
    let result = f();
    for ((_, p), v) in params.iter().zip(saved) {
        p.set_value(v);
    }
    result
}

/// The checkpoint folder for step `step` under a run folder.
pub fn checkpoint_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:07}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrainConfig {
        TrainConfig {
            model: UNetConfig::tiny(),
            timesteps: 100,
            schedule: BetaSchedule::LINEAR,
            loss: LossKind::Simple,
            batch: 4,
            lr: 1e-3,
            warmup: 2,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            ema_decay: Some(0.99),
            random_flip: true,
            seed: 3,
        }
    }

    fn images() -> Dataset {
        let images = Rng::new(1, 0).uniform_range(&[16, 1, 16, 16], -1.0, 1.0);
        Dataset::new("noise", images, vec![0; 16], 1).unwrap()
    }

    fn weights(t: &Trainer) -> Vec<Vec<u32>> {
        t.store
            .params()
            .iter()
            .map(|(_, p)| p.value().data().iter().map(|v| v.to_bits()).collect())
            .collect()
    }

    #[test]
    fn resuming_continues_bitwise_identically() {
        let data = images();
        let mut straight = Trainer::new(config());
        for k in 0..4 {
            straight.step(&data);
            if k == 1 {
                // Sampling with the EMA weights in between must not disturb training.
                straight.predict(&Tensor::zeros(&[2, 1, 16, 16]), &[3, 50], true);
            }
        }
        let mut first = Trainer::new(config());
        for _ in 0..2 {
            first.step(&data);
        }
        let dir = std::env::temp_dir().join(format!("ddpm-resume-{}", std::process::id()));
        first.save_checkpoint(&dir).unwrap();
        let mut resumed = Trainer::resume(config(), &dir).unwrap();
        assert_eq!(resumed.step_count(), 2);
        for _ in 0..2 {
            resumed.step(&data);
        }
        assert_eq!(weights(&straight), weights(&resumed));
        let ema = |t: &Trainer| {
            let shadows = t.ema.as_ref().unwrap().shadows();
            shadows
                .iter()
                .map(|(n, s)| {
                    (
                        n.clone(),
                        s.data().iter().map(|v| v.to_bits()).collect::<Vec<u32>>(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ema(&straight), ema(&resumed));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
