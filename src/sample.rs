//! `ddpm sample`: draws images from a checkpoint of a run, or from a diffusers model folder.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use autograd::nn::{Ctx, ParamStore};
use autograd::{no_grad, Var};
use clap::Args;
use ddpm::diffusion::{Diffusion, Prediction, VarianceKind};
use ddpm::image::{save_grid_png, save_strip_png};
use ddpm::sample::sample;
use ddpm::schedule::{BetaSchedule, Schedule};
use ddpm::train::WEIGHTS;
use ddpm::unet::{UNet, UNetConfig};
use serde_json::Value;
use tensor::rng::Rng;
use tensor::Tensor;

use crate::run_config::read_run_config;
use crate::sampling_args::SamplingArgs;
use crate::train::latest_checkpoint;

/// `ddpm sample` options.
#[derive(Args)]
pub struct SampleArgs {
    /// A run folder (its latest checkpoint), a checkpoint folder, or a diffusers model folder
    /// (`config.json` + `diffusion_pytorch_model.safetensors`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    n: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file for the grid (the samples also go next to it as .safetensors).
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write a strip of the denoising trajectory of the first 8 samples (x_T to x_0).
    #[arg(long)]
    trajectory: Option<PathBuf>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

impl SampleArgs {
    /// `--threads`.
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }
}

/// A model ready to sample: its network, parameters and diffusion process.
pub struct LoadedModel {
    pub unet: UNet,
    pub diffusion: Diffusion,
    pub clip: bool,
    pub source: String,
}

impl LoadedModel {
    /// The network's output at `x` for `timesteps`, recording nothing.
    pub fn predict(&self, x: &Tensor, timesteps: &[usize]) -> Tensor {
        let t: Vec<f32> = timesteps.iter().map(|&i| i as f32).collect();
        no_grad(|| {
            self.unet
                .forward(&mut Ctx::eval(), &Var::constant(x.clone()), &t)
                .value()
                .clone()
        })
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Loads a run (latest checkpoint), a checkpoint folder, or a diffusers folder.
pub fn load_model(path: &Path, use_ema: Option<bool>) -> Result<LoadedModel, String> {
    let is_checkpoint = |p: &Path| p.join("trainer.json").is_file();
    let (run, checkpoint) = if path.join("checkpoints").is_dir() {
        let latest = latest_checkpoint(path)
            .ok_or_else(|| format!("{}: the run has no checkpoints yet", path.display()))?;
        (path.to_path_buf(), latest)
    } else if is_checkpoint(path) {
        let run = path
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| io(path, "cannot find the run folder above it"))?;
        (run.to_path_buf(), path.to_path_buf())
    } else if path.join(WEIGHTS).is_file() {
        return load_diffusers(path);
    } else {
        return Err(format!(
            "{}: expected a run folder, a checkpoint folder or a diffusers model folder",
            path.display()
        ));
    };
    let run_config = read_run_config(&run)?;
    let train = &run_config.train;
    let store = ParamStore::new();
    let unet = UNet::new(train.model.clone(), &store, &mut Rng::new(0, 0));
    let has_ema = checkpoint.join("ema").join(WEIGHTS).is_file();
    let ema = use_ema.unwrap_or(has_ema);
    if ema && !has_ema {
        return Err(format!(
            "{}: --ema asked for, but the checkpoint has no EMA weights",
            checkpoint.display()
        ));
    }
    let weights = if ema {
        checkpoint.join("ema").join(WEIGHTS)
    } else {
        checkpoint.join(WEIGHTS)
    };
    store.load(&weights).map_err(|e| e.to_string())?;
    Ok(LoadedModel {
        unet,
        diffusion: train.diffusion(),
        clip: true,
        source: format!(
            "{} ({} weights)",
            checkpoint.display(),
            if ema { "EMA" } else { "raw" }
        ),
    })
}

/// A diffusers folder: the UNet, and the scheduler's settings from `scheduler_config.json`
/// (in the folder or in `../scheduler/`) when present, else DDPM's (linear, 1000 steps).
fn load_diffusers(dir: &Path) -> Result<LoadedModel, String> {
    let (unet, _store) = UNet::load_diffusers(dir).map_err(|e| e.to_string())?;
    let candidates = [
        dir.join("scheduler_config.json"),
        dir.join("../scheduler/scheduler_config.json"),
    ];
    let scheduler: Option<Value> = match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Some(
            serde_json::from_str(&fs::read_to_string(p).map_err(|e| io(p, e))?)
                .map_err(|e| io(p, e))?,
        ),
        None => None,
    };
    let get = |key: &str| {
        scheduler
            .as_ref()
            .and_then(|s| s.get(key))
            .filter(|v| !v.is_null())
    };
    let steps = get("num_train_timesteps")
        .and_then(Value::as_u64)
        .unwrap_or(1000) as usize;
    let start = get("beta_start").and_then(Value::as_f64).unwrap_or(1e-4);
    let end = get("beta_end").and_then(Value::as_f64).unwrap_or(0.02);
    let kind = match get("beta_schedule")
        .and_then(Value::as_str)
        .unwrap_or("linear")
    {
        "linear" => BetaSchedule::Linear { start, end },
        "scaled_linear" => BetaSchedule::ScaledLinear { start, end },
        "sigmoid" => BetaSchedule::Sigmoid { start, end },
        "squaredcos_cap_v2" => BetaSchedule::COSINE,
        other => {
            return Err(format!(
                "{}: unsupported beta_schedule `{other}`",
                dir.display()
            ))
        }
    };
    let variance = match get("variance_type")
        .and_then(Value::as_str)
        .unwrap_or("fixed_small")
    {
        "fixed_small" | "fixed_small_log" => VarianceKind::FixedSmall,
        "fixed_large" | "fixed_large_log" => VarianceKind::FixedLarge,
        "learned_range" => VarianceKind::LearnedRange,
        other => {
            return Err(format!(
                "{}: unsupported variance_type `{other}`",
                dir.display()
            ))
        }
    };
    let prediction = match get("prediction_type")
        .and_then(Value::as_str)
        .unwrap_or("epsilon")
    {
        "epsilon" => Prediction::Eps,
        "sample" => Prediction::X0,
        "v_prediction" => Prediction::V,
        other => {
            return Err(format!(
                "{}: unsupported prediction_type `{other}`",
                dir.display()
            ))
        }
    };
    let clip = get("clip_sample").and_then(Value::as_bool).unwrap_or(true);
    Ok(LoadedModel {
        unet,
        diffusion: Diffusion::new(Schedule::new(kind, steps), prediction, variance),
        clip,
        source: format!("{} (diffusers)", dir.display()),
    })
}

/// The image size a model samples at.
pub fn sample_shape(config: &UNetConfig, n: usize) -> Vec<usize> {
    let size = config.sample_size.unwrap_or(32);
    vec![n, config.in_channels, size, size]
}

/// Runs `ddpm sample`.
pub fn run(args: SampleArgs) -> Result<(), String> {
    if args.n == 0 {
        return Err("--n must be at least 1".into());
    }
    let model = load_model(&args.checkpoint, args.sampling.use_ema())?;
    let options = args
        .sampling
        .options(model.diffusion.schedule.len(), model.clip)?;
    let steps = options.steps;
    let shape = sample_shape(&model.unet.config, args.n);
    eprintln!(
        "sampling {} images of {:?} from {} with {steps} steps",
        args.n,
        &shape[1..],
        model.source
    );
    let mut frames: Vec<Tensor> = Vec::new();
    let keep = args.n.min(8);
    let every = (steps / 10).max(1);
    let mut record = |info: &ddpm::sample::StepInfo| {
        if info.done == 1 || info.done.is_multiple_of(every) || info.done == info.total {
            frames.push(info.x.slice(0, 0, keep));
        }
        eprint!("\rstep {}/{}", info.done, info.total);
    };
    let mut f = |x: &Tensor, t: &[usize]| model.predict(x, t);
    let images = sample(
        &model.diffusion,
        &mut f,
        &shape,
        options,
        &mut Rng::new(args.seed, 0),
        &mut record,
    );
    eprintln!();
    let columns = (args.n as f64).sqrt().ceil() as usize;
    save_grid_png(&args.out, &images, columns, 2).map_err(|e| e.to_string())?;
    let tensors_path = args.out.with_extension("safetensors");
    let meta = BTreeMap::from([
        ("source".to_string(), model.source.clone()),
        ("seed".to_string(), args.seed.to_string()),
    ]);
    tensor::io::save(&tensors_path, &[("samples", &images)], &meta).map_err(|e| e.to_string())?;
    if let Some(path) = &args.trajectory {
        save_strip_png(path, &frames, 2).map_err(|e| e.to_string())?;
        eprintln!("trajectory: {}", path.display());
    }
    eprintln!(
        "wrote {} and {}",
        args.out.display(),
        tensors_path.display()
    );
    Ok(())
}
