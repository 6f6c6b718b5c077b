//! `ddpm train`: trains a UNet on a data set, writing everything into one run folder.
//!
//! ```text
//! RUN/config.json           the run's settings (read back by --resume, sample and eval)
//! RUN/metrics.jsonl         one JSON object per step: step, loss, lr, grad_norm, seconds
//! RUN/checkpoints/step-N/   diffusion_pytorch_model.safetensors + config.json (diffusers),
//!                           ema/ (the same for the EMA weights), optimizer state, trainer.json
//! RUN/samples/step-N.png    sample grids from the EMA weights
//! RUN/loss.png              the loss curve
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use ddpm::data::{load, DataSource, Dataset, Split};
use ddpm::diffusion::LossKind;
use ddpm::image::{save_grid_png, save_line_plot_png};
use ddpm::sample::{sample, SampleOptions, Sampler, Spacing};
use ddpm::schedule::BetaSchedule;
use ddpm::train::{checkpoint_dir, StepStats, Trainer};
use serde_json::json;
use tensor::rng::Rng;

use crate::progress::Progress;
use crate::run_config::{read_run_config, write_run_config, RunConfig};

/// `ddpm train` options.
#[derive(Args)]
pub struct TrainArgs {
    /// Data: `shapes` (built in), `fashion-mnist`, `idx:DIR` or `cifar10:DIR`.
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Directory of the Fashion-MNIST files (default /usr/share/datasets/fashion-mnist/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A preset (`shapes`, `tiny`, `small`, `bench`, `ddpm-cifar10`) or a diffusers config.json.
    #[arg(long, default_value = "shapes")]
    model: String,
    /// Optimisation steps.
    #[arg(long, default_value_t = 800)]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// EMA decay of the weights used for sampling (0: no EMA).
    #[arg(long, default_value_t = 0.995)]
    ema: f32,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// `simple` (L_simple) or `hybrid` (learns the variance too).
    #[arg(long, default_value = "simple")]
    loss: String,
    /// Beta schedule: `linear`, `cosine`, `scaled_linear` or `sigmoid`.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    timesteps: usize,
    /// Do not flip training images horizontally.
    #[arg(long)]
    no_flip: bool,
    /// The run folder (default: `runs/DATA`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Write a sample grid every this many steps (0: only at the end).
    #[arg(long, default_value_t = 400)]
    sample_every: u64,
    /// Images in each sample grid.
    #[arg(long, default_value_t = 64)]
    sample_count: usize,
    /// DDIM steps for the sample grids.
    #[arg(long, default_value_t = 50)]
    sample_steps: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 400)]
    checkpoint_every: u64,
}

impl TrainArgs {
    /// `--threads`.
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }
}

fn parse_loss(name: &str) -> Result<LossKind, String> {
    match name {
        "simple" => Ok(LossKind::Simple),
        "hybrid" => Ok(LossKind::Hybrid),
        other => Err(format!(
            "--loss: expected `simple` or `hybrid`, found `{other}`"
        )),
    }
}

/// The data set named on the command line, train or test split, padded to `size` if the
/// model wants it.
pub fn load_data(source: &str, data_dir: Option<&Path>, split: Split) -> Result<Dataset, String> {
    let mut source: DataSource = source.parse().map_err(|e| format!("--data: {e}"))?;
    if let (DataSource::FashionMnist(dir), Some(custom)) = (&mut source, data_dir) {
        *dir = custom.to_path_buf();
    }
    load(&source, split).map_err(|e| e.to_string())
}

/// The latest checkpoint folder of a run, if any.
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(run.join("checkpoints")).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .max_by_key(|e| e.file_name())
        .map(|e| e.path())
}

/// Runs `ddpm train`.
pub fn run(args: TrainArgs) -> Result<(), String> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(args.data.replace([':', '/'], "_")));
    let (run_config, mut trainer) = if args.resume {
        let run_config = read_run_config(&out)?;
        let checkpoint = latest_checkpoint(&out).ok_or_else(|| {
            format!(
                "--resume: {} has no checkpoints to resume from",
                out.display()
            )
        })?;
        let trainer =
            Trainer::resume(run_config.train.clone(), &checkpoint).map_err(|e| e.to_string())?;
        eprintln!(
            "resuming {} from {} (step {})",
            out.display(),
            checkpoint.display(),
            trainer.step_count()
        );
        (run_config, trainer)
    } else {
        if out.join("config.json").exists() {
            return Err(format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                out.display()
            ));
        }
        let run_config = RunConfig::from_train_args(&args)?;
        fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        write_run_config(&out, &run_config)?;
        (run_config.clone(), Trainer::new(run_config.train))
    };
    let data = load_data(
        &run_config.data,
        run_config.data_dir.as_deref(),
        Split::Train,
    )?;
    let data = fit_to_model(data, &run_config)?;
    eprintln!(
        "training {} parameters on {} ({} images {:?}) for {} steps into {}",
        trainer.store.num_elements(),
        data.name(),
        data.len(),
        data.image_shape(),
        run_config.steps,
        out.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot catch Ctrl-C: {e}"))?;
    }
    let metrics_path = out.join("metrics.jsonl");
    truncate_metrics(&metrics_path, trainer.step_count())?;
    let mut metrics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| format!("{}: {e}", metrics_path.display()))?;
    let mut progress = Progress::new(run_config.steps, trainer.step_count());
    let start = Instant::now();
    while trainer.step_count() < run_config.steps {
        let stats = trainer.step(&data);
        log_step(&mut metrics, &stats, start.elapsed().as_secs_f64())?;
        progress.update(stats.step, stats.loss);
        let step = stats.step;
        if run_config.checkpoint_every > 0
            && step % run_config.checkpoint_every == 0
            && step < run_config.steps
        {
            checkpoint(&trainer, &out)?;
        }
        if run_config.sample_every > 0
            && step % run_config.sample_every == 0
            && step < run_config.steps
        {
            progress.suspend(|| write_samples(&trainer, &run_config, &data, &out, step))?;
        }
        if stop.load(Ordering::SeqCst) {
            progress.finish();
            checkpoint(&trainer, &out)?;
            eprintln!(
                "interrupted: checkpoint written at step {step}; continue with --resume --out {}",
                out.display()
            );
            return Ok(());
        }
    }
    progress.finish();
    checkpoint(&trainer, &out)?;
    write_samples(&trainer, &run_config, &data, &out, trainer.step_count())?;
    plot_loss(&out)?;
    eprintln!(
        "done: {} steps in {:.1} s; run folder {}",
        run_config.steps,
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Pads 28x28 data to the 32x32 a 32-pixel model wants.
pub fn fit_to_model(data: Dataset, run: &RunConfig) -> Result<Dataset, String> {
    let want = run.train.model.sample_size;
    let [c, h, _] = data.image_shape();
    if c != run.train.model.in_channels {
        return Err(format!(
            "the model takes {} channels but {} has {c}",
            run.train.model.in_channels,
            data.name()
        ));
    }
    match want {
        Some(size) if size > h => data.pad_to(size).map_err(|e| e.to_string()),
        _ => Ok(data),
    }
}

fn checkpoint(trainer: &Trainer, out: &Path) -> Result<(), String> {
    let dir = checkpoint_dir(out, trainer.step_count());
    trainer.save_checkpoint(&dir).map_err(|e| e.to_string())
}

/// Keeps the metrics of steps up to `step` (the checkpoint resumed from).
fn truncate_metrics(path: &Path, step: u64) -> Result<(), String> {
    let Ok(file) = File::open(path) else {
        return Ok(());
    };
    let kept: Vec<String> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn log_step(metrics: &mut File, stats: &StepStats, seconds: f64) -> Result<(), String> {
    let line = json!({
        "step": stats.step,
        "loss": stats.loss,
        "lr": stats.lr,
        "grad_norm": stats.grad_norm,
        "seconds": seconds,
    });
    writeln!(metrics, "{line}").map_err(|e| format!("metrics.jsonl: {e}"))
}

/// Draws `--sample-count` samples with DDIM (`--sample-steps` steps) from the EMA weights
/// and writes them as a square grid.
fn write_samples(
    trainer: &Trainer,
    run: &RunConfig,
    data: &Dataset,
    out: &Path,
    step: u64,
) -> Result<(), String> {
    let [c, h, w] = data.image_shape();
    let steps = run.sample_steps.clamp(1, trainer.config.timesteps);
    let options = SampleOptions {
        sampler: Sampler::Ddim { eta: 0.0 },
        steps,
        spacing: Spacing::Leading,
        clip: true,
    };
    let mut model = |x: &tensor::Tensor, t: &[usize]| trainer.predict(x, t, true);
    let n = run.sample_count.max(1);
    let mut rng = Rng::new(trainer.config.seed, 7);
    let images = sample(
        &trainer.diffusion,
        &mut model,
        &[n, c, h, w],
        options,
        &mut rng,
        &mut |_| {},
    );
    let dir = out.join("samples");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("step-{step:07}.png"));
    let columns = (n as f64).sqrt().ceil() as usize;
    save_grid_png(&path, &images, columns, 2).map_err(|e| e.to_string())
}

/// Plots metrics.jsonl's loss (raw and smoothed) into loss.png.
fn plot_loss(out: &Path) -> Result<(), String> {
    let path = out.join("metrics.jsonl");
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let points: Vec<(f64, f64)> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|v| Some((v["step"].as_f64()?, v["loss"].as_f64()?)))
        .collect();
    let mut smooth = Vec::with_capacity(points.len());
    let mut avg = None;
    for &(x, y) in &points {
        let a = avg.map_or(y, |a: f64| 0.95 * a + 0.05 * y);
        avg = Some(a);
        smooth.push((x, a));
    }
    save_line_plot_png(
        out.join("loss.png"),
        &[("loss", &points), ("smoothed", &smooth)],
        640,
        400,
        true,
    )
    .map_err(|e| e.to_string())
}

impl RunConfig {
    fn from_train_args(args: &TrainArgs) -> Result<RunConfig, String> {
        let loss = parse_loss(&args.loss)?;
        let schedule = BetaSchedule::from_name(&args.schedule)
            .ok_or_else(|| format!("--schedule: unknown schedule `{}`", args.schedule))?;
        if args.batch == 0 || args.steps == 0 || args.timesteps < 2 {
            return Err("--batch and --steps must be positive and --timesteps at least 2".into());
        }
        let lr_ok = args.lr.is_finite() && args.lr > 0.0;
        if !lr_ok || !(0.0..1.0).contains(&args.ema) || args.grad_clip < 0.0 {
            return Err(
                "--lr must be positive, --ema in [0, 1) and --grad-clip not negative".into(),
            );
        }
        let data = load_data(&args.data, args.data_dir.as_deref(), Split::Train)?;
        let model = crate::run_config::model_for(&args.model, &data, loss)?;
        Ok(RunConfig {
            data: args.data.clone(),
            data_dir: args.data_dir.clone(),
            steps: args.steps,
            sample_every: args.sample_every,
            sample_count: args.sample_count,
            sample_steps: args.sample_steps,
            checkpoint_every: args.checkpoint_every,
            train: ddpm::train::TrainConfig {
                model,
                timesteps: args.timesteps,
                schedule,
                loss,
                batch: args.batch,
                lr: args.lr,
                warmup: args.warmup,
                weight_decay: args.weight_decay,
                grad_clip: (args.grad_clip > 0.0).then_some(args.grad_clip),
                ema_decay: (args.ema > 0.0).then_some(args.ema),
                random_flip: !args.no_flip,
                seed: args.seed,
            },
        })
    }
}
