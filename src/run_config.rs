//! The run folder's `config.json`: what `ddpm train` was asked to do, read back by
//! `--resume`, `ddpm sample` and `ddpm eval`.

use std::fs;
use std::path::{Path, PathBuf};

use ddpm::data::Dataset;
use ddpm::diffusion::LossKind;
use ddpm::schedule::BetaSchedule;
use ddpm::train::TrainConfig;
use ddpm::unet::UNetConfig;
use serde_json::{json, Value};

/// A training run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The data set as given to `--data`.
    pub data: String,
    /// `--data-dir`, if given.
    pub data_dir: Option<PathBuf>,
    /// Total optimisation steps.
    pub steps: u64,
    /// Steps between sample grids.
    pub sample_every: u64,
    /// Images in each sample grid.
    pub sample_count: usize,
    /// DDIM steps of the sample grids.
    pub sample_steps: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// The trainer's settings.
    pub train: TrainConfig,
}

/// The names `BetaSchedule::from_name` understands, for writing a schedule back.
fn schedule_name(schedule: BetaSchedule) -> &'static str {
    ["linear", "cosine", "scaled_linear", "sigmoid"]
        .into_iter()
        .find(|n| BetaSchedule::from_name(n) == Some(schedule))
        .unwrap_or("linear")
}

/// The model for `--model` (a preset name or a diffusers config.json), fitted to the data:
/// its channels, a learned variance for the hybrid loss, and a sample size the levels divide
/// (28x28 images are padded to 32x32 when the model halves them more than twice).
pub fn model_for(model: &str, data: &Dataset, loss: LossKind) -> Result<UNetConfig, String> {
    let mut config = if model.ends_with(".json") || Path::new(model).is_file() {
        let text = fs::read_to_string(model).map_err(|e| format!("--model {model}: {e}"))?;
        UNetConfig::from_diffusers_json(&text).map_err(|e| format!("--model {model}: {e}"))?
    } else {
        UNetConfig::preset(model).map_err(|e| format!("--model: {e}"))?
    };
    let [c, h, w] = data.image_shape();
    config.in_channels = c;
    config.out_channels = if loss == LossKind::Hybrid { 2 * c } else { c };
    let factor = 1 << (config.block_out_channels.len() - 1);
    let size = h.max(w);
    config.sample_size = Some(if size % factor == 0 && h == w {
        size
    } else {
        size.div_ceil(factor) * factor
    });
    config.validate().map_err(|e| format!("--model: {e}"))?;
    Ok(config)
}

/// Writes `RUN/config.json`.
pub fn write_run_config(run: &Path, config: &RunConfig) -> Result<(), String> {
    let t = &config.train;
    let model: Value =
        serde_json::from_str(&t.model.to_diffusers_json()).expect("the model config is JSON");
    let value = json!({
        "data": config.data,
        "data_dir": config.data_dir,
        "steps": config.steps,
        "sample_every": config.sample_every,
        "sample_count": config.sample_count,
        "sample_steps": config.sample_steps,
        "checkpoint_every": config.checkpoint_every,
        "timesteps": t.timesteps,
        "schedule": schedule_name(t.schedule),
        "loss": if t.loss == LossKind::Hybrid { "hybrid" } else { "simple" },
        "batch": t.batch,
        "lr": t.lr,
        "warmup": t.warmup,
        "weight_decay": t.weight_decay,
        "grad_clip": t.grad_clip,
        "ema": t.ema_decay,
        "random_flip": t.random_flip,
        "seed": t.seed,
        "model": model,
    });
    let path = run.join("config.json");
    let text = serde_json::to_string_pretty(&value).expect("JSON serialises");
    fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads `RUN/config.json`, with a message naming the file and the field on any problem.
pub fn read_run_config(run: &Path) -> Result<RunConfig, String> {
    let path = run.join("config.json");
    let text = fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (is this a run folder?)", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    let bad = |field: &str| {
        format!(
            "{}: field `{field}` is missing or has the wrong type",
            path.display()
        )
    };
    let u64_of = |f: &str| v[f].as_u64().ok_or_else(|| bad(f));
    let f32_of = |f: &str| v[f].as_f64().map(|x| x as f32).ok_or_else(|| bad(f));
    let str_of = |f: &str| v[f].as_str().ok_or_else(|| bad(f));
    let model = UNetConfig::from_diffusers_json(&v["model"].to_string())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let loss = match str_of("loss")? {
        "simple" => LossKind::Simple,
        "hybrid" => LossKind::Hybrid,
        _ => return Err(bad("loss")),
    };
    Ok(RunConfig {
        data: str_of("data")?.to_string(),
        data_dir: v["data_dir"].as_str().map(PathBuf::from),
        steps: u64_of("steps")?,
        sample_every: u64_of("sample_every")?,
        sample_count: u64_of("sample_count")? as usize,
        sample_steps: u64_of("sample_steps")? as usize,
        checkpoint_every: u64_of("checkpoint_every")?,
        train: TrainConfig {
            model,
            timesteps: u64_of("timesteps")? as usize,
            schedule: BetaSchedule::from_name(str_of("schedule")?)
                .ok_or_else(|| bad("schedule"))?,
            loss,
            batch: u64_of("batch")? as usize,
            lr: f32_of("lr")?,
            warmup: u64_of("warmup")?,
            weight_decay: f32_of("weight_decay")?,
            grad_clip: v["grad_clip"].as_f64().map(|x| x as f32),
            ema_decay: v["ema"].as_f64().map(|x| x as f32),
            random_flip: v["random_flip"]
                .as_bool()
                .ok_or_else(|| bad("random_flip"))?,
            seed: u64_of("seed")?,
        },
    })
}
