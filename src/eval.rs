//! `ddpm eval`: measures a model. Bits/dim of test images under the variational bound (with
//! its breakdown and a per-timestep plot), and the quality of its samples in a classifier's
//! feature space: the Fréchet distance to as many test images (FID with our classifier in
//! place of Inception) and the Inception Score analogue.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use ddpm::classifier::Classifier;
use ddpm::data::{Dataset, Split};
use ddpm::diffusion::{BoundTerms, Decoder};
use ddpm::fid::{frechet_distance_of, inception_score, predicted_histogram};
use ddpm::image::{save_grid_png, save_line_plot_png};
use ddpm::sample::{sample, Sampler};
use ddpm::unet::UNetConfig;
use serde_json::{json, Value};
use tensor::rng::Rng;
use tensor::Tensor;

use crate::run_config::read_run_config;
use crate::sample::{load_model, sample_shape, LoadedModel};
use crate::sampling_args::SamplingArgs;
use crate::train::load_data;

/// Test images per call of the bound.
const BPD_BATCH: usize = 16;
/// Samples drawn per call of the sampler.
const SAMPLE_BATCH: usize = 64;

/// `ddpm eval` options.
#[derive(Args)]
pub struct EvalArgs {
    /// A run folder (its latest checkpoint), a checkpoint folder, or a diffusers model folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data set of the test images (default: the run's, else shapes).
    #[arg(long)]
    data: Option<String>,
    /// Directory of the Fashion-MNIST files (default: the run's, else the standard location).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Test images for bits/dim (0: skip bits/dim).
    #[arg(long, default_value_t = 64)]
    n_bpd: usize,
    /// Steps of the bound to evaluate: `all`, or K (K of the KL steps, evenly spaced with one
    /// random offset so the scaled sum is unbiased, plus the decoder term).
    #[arg(long, default_value = "all")]
    bpd_steps: String,
    /// Classifier file (default: RUN/classifier.safetensors).
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Samples for FID (against the first as many test images) and the Inception Score
    /// analogue (0: skip them).
    #[arg(long, default_value_t = 1000)]
    n_samples: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Seed of the noise (bound and samples).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for eval.json, eval-bpd.png and eval-samples.png (default: the run folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

impl EvalArgs {
    /// `--threads`.
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }
}

/// The run folder above `checkpoint`, if it is a run or one of its checkpoints.
fn run_folder(checkpoint: &Path) -> Option<PathBuf> {
    if checkpoint.join("checkpoints").is_dir() {
        return Some(checkpoint.to_path_buf());
    }
    let run = checkpoint.parent()?.parent()?;
    run.join("config.json").is_file().then(|| run.to_path_buf())
}

/// The test split padded (as training pads) to the model's sample size.
fn fit(data: Dataset, config: &UNetConfig) -> Result<Dataset, String> {
    let [c, h, w] = data.image_shape();
    if c != config.in_channels {
        return Err(format!(
            "the model takes {} channels but {} has {c}",
            config.in_channels,
            data.name()
        ));
    }
    match config.sample_size {
        Some(size) if size > h || size > w => data.pad_to(size).map_err(|e| e.to_string()),
        Some(size) if size < h || size < w => Err(format!(
            "the model samples {size}x{size} images but {} has {h}x{w}",
            data.name()
        )),
        _ => Ok(data),
    }
}

/// The step indices of the bound: all, or `k` KL steps by systematic sampling (each of the
/// `T - 1` KL steps is included with probability `k / (T - 1)`) and the decoder step 0.
fn bound_steps(spec: &str, total: usize, rng: &mut Rng) -> Result<Option<Vec<usize>>, String> {
    if spec == "all" {
        return Ok(None);
    }
    let k: usize = spec
        .parse()
        .map_err(|_| format!("--bpd-steps: expected `all` or a number, found `{spec}`"))?;
    if k == 0 || k + 1 > total {
        return Err(format!(
            "--bpd-steps: expected between 1 and {} (the model's KL steps), found {k}",
            total.saturating_sub(1)
        ));
    }
    let stride = (total - 1) as f64 / k as f64;
    let offset = rng.next_f32() as f64;
    let mut steps = vec![0];
    for j in 0..k {
        let i = 1 + (((j as f64 + offset) * stride).floor() as usize).min(total - 2);
        if steps.last() != Some(&i) {
            steps.push(i);
        }
    }
    Ok(Some(steps))
}

/// Evaluates the bound on `data` in batches and merges the terms over all images.
fn bits_per_dim(
    model: &LoadedModel,
    data: &Dataset,
    steps: Option<&[usize]>,
    rng: &mut Rng,
) -> BoundTerms {
    let mut merged: Option<BoundTerms> = None;
    let mut f = |x: &Tensor, t: &[usize]| model.predict(x, t);
    for start in (0..data.len()).step_by(BPD_BATCH) {
        let rows: Vec<usize> = (start..(start + BPD_BATCH).min(data.len())).collect();
        eprint!(
            "\rbits/dim: image {}/{}",
            rows[rows.len() - 1] + 1,
            data.len()
        );
        let mut batch_rng = rng.fork(start as u64);
        let terms = model.diffusion.bound(
            &mut f,
            &data.batch(&rows),
            &mut batch_rng,
            Decoder::Discretized,
            model.clip,
            steps,
        );
        merged = Some(match merged {
            None => terms,
            Some(mut all) => {
                all.prior.extend(terms.prior);
                for (into, from) in all.terms.iter_mut().zip(terms.terms) {
                    into.1.extend(from.1);
                }
                for (into, from) in all.eps_mse.iter_mut().zip(terms.eps_mse) {
                    into.1.extend(from.1);
                }
                all
            }
        });
    }
    eprintln!();
    merged.expect("at least one batch")
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Runs the bound, writes its plot, and returns its JSON.
fn bpd_report(
    args: &EvalArgs,
    model: &LoadedModel,
    test: &Dataset,
    out: &Path,
) -> Result<Value, String> {
    let data = test.take(args.n_bpd);
    let total = model.diffusion.schedule.len();
    let mut rng = Rng::new(args.seed, 1);
    let steps = bound_steps(&args.bpd_steps, total, &mut rng.fork(0))?;
    let terms = bits_per_dim(model, &data, steps.as_deref(), &mut rng);
    let per_step = terms.per_step_bpd();
    let points: Vec<(f64, f64)> = per_step.iter().map(|&(i, v)| (i as f64, v)).collect();
    let plot = out.join("eval-bpd.png");
    save_line_plot_png(&plot, &[("bits/dim per step", &points)], 640, 360, true)
        .map_err(|e| e.to_string())?;
    let rows: Vec<Value> = per_step
        .iter()
        .zip(&terms.eps_mse)
        .map(|(&(i, bpd), (_, mse))| json!({"index": i, "bpd": bpd, "eps_mse": mean(mse)}))
        .collect();
    Ok(json!({
        "images": data.len(),
        "steps_evaluated": per_step.len(),
        "steps_total": total,
        "total": terms.total_bpd(),
        "prior": terms.prior_bpd(),
        "kl_sum": terms.kl_bpd(),
        "decoder": terms.decoder_bpd(),
        "plot": plot.display().to_string(),
        "per_step": rows,
    }))
}

/// The classifier file: `--classifier`, or `RUN/classifier.safetensors`.
fn classifier_path(args: &EvalArgs, run: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = &args.classifier {
        return Ok(p.clone());
    }
    let how = "make one with `ddpm classifier train --data DATA --out RUN/classifier.safetensors` \
               (or pass --classifier FILE, or --n-samples 0 to skip FID)";
    match run.map(|r| r.join("classifier.safetensors")) {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(format!("no classifier at {}: {how}", p.display())),
        None => Err(format!("no --classifier given: {how}")),
    }
}

/// Draws the samples, measures them against as many test images, and returns the JSON.
fn sample_report(
    args: &EvalArgs,
    model: &LoadedModel,
    test: &Dataset,
    classifier: &Classifier,
    out: &Path,
) -> Result<Value, String> {
    let n = args.n_samples;
    if n < 2 || n > test.len() {
        return Err(format!(
            "--n-samples must be between 2 and the {} test images, got {n}",
            test.len()
        ));
    }
    let options = args
        .sampling
        .options(model.diffusion.schedule.len(), model.clip)?;
    let mut f = |x: &Tensor, t: &[usize]| model.predict(x, t);
    let mut chunks: Vec<f32> = Vec::new();
    let rng = Rng::new(args.seed, 2);
    for start in (0..n).step_by(SAMPLE_BATCH) {
        let count = SAMPLE_BATCH.min(n - start);
        let shape = sample_shape(&model.unet.config, count);
        let mut record = |info: &ddpm::sample::StepInfo| {
            eprint!(
                "\rsamples {}-{} of {n}: step {}/{}",
                start + 1,
                start + count,
                info.done,
                info.total
            );
        };
        let mut batch_rng = rng.fork(start as u64);
        let images = sample(
            &model.diffusion,
            &mut f,
            &shape,
            options,
            &mut batch_rng,
            &mut record,
        );
        chunks.extend_from_slice(images.data());
    }
    eprintln!();
    let shape = sample_shape(&model.unet.config, n);
    let samples = Tensor::from_vec(chunks, &shape);
    let grid = out.join("eval-samples.png");
    let shown = samples.slice(0, 0, n.min(64));
    let columns = (shown.shape()[0] as f64).sqrt().ceil() as usize;
    save_grid_png(&grid, &shown, columns, 2).map_err(|e| e.to_string())?;
    let real = test.take(n);
    let err = |e: tensor::Error| e.to_string();
    let fake_features = classifier.features(&samples).map_err(err)?;
    let real_features = classifier.features(real.images()).map_err(err)?;
    let d = fake_features.shape()[1];
    let fid = frechet_distance_of(fake_features.data(), real_features.data(), d);
    let fake_probs = classifier.probabilities(&samples).map_err(err)?;
    let real_probs = classifier.probabilities(real.images()).map_err(err)?;
    let k = classifier.classes();
    Ok(json!({
        "n": n,
        "sampler": if matches!(options.sampler, Sampler::Ddim { .. }) { "ddim" } else { "ddpm" },
        "steps": options.steps,
        "eta": args.sampling.eta,
        "fid": fid,
        "inception_score": inception_score(&fake_probs),
        "inception_score_test": inception_score(&real_probs),
        "class_histogram": predicted_histogram(&fake_probs, k),
        "class_histogram_test": predicted_histogram(&real_probs, k),
        "classifier_accuracy_test": classifier.accuracy(&real).map_err(err)?,
        "grid": grid.display().to_string(),
    }))
}

/// Runs `ddpm eval`.
pub fn run(args: EvalArgs) -> Result<(), String> {
    let start = Instant::now();
    if args.n_bpd == 0 && args.n_samples == 0 {
        return Err("nothing to do: --n-bpd and --n-samples are both 0".into());
    }
    let use_ema = args.sampling.use_ema();
    let run = run_folder(&args.checkpoint);
    let run_config = match &run {
        Some(r) => Some(read_run_config(r)?),
        None => None,
    };
    let data = args
        .data
        .clone()
        .or_else(|| run_config.as_ref().map(|c| c.data.clone()))
        .unwrap_or_else(|| "shapes".into());
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| run_config.as_ref().and_then(|c| c.data_dir.clone()));
    // Fail early on a missing classifier, before the long work.
    let classifier = if args.n_samples > 0 {
        let path = classifier_path(&args, run.as_deref())?;
        let c = Classifier::load(&path).map_err(|e| e.to_string())?;
        Some((path, c))
    } else {
        None
    };
    let out = args
        .out
        .clone()
        .or_else(|| run.clone())
        .unwrap_or_else(|| args.checkpoint.clone());
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let model = load_model(&args.checkpoint, use_ema)?;
    let test = fit(
        load_data(&data, data_dir.as_deref(), Split::Test)?,
        &model.unet.config,
    )?;
    if args.n_bpd > test.len() {
        return Err(format!(
            "--n-bpd must be at most the {} test images, got {}",
            test.len(),
            args.n_bpd
        ));
    }
    eprintln!(
        "evaluating {} on {} (test split)",
        model.source,
        test.name()
    );
    if let Some((path, c)) = &classifier {
        let trained_on = c.metadata.get("data").map_or("?", String::as_str);
        if trained_on != test.name() {
            eprintln!(
                "warning: the classifier {} was trained on {trained_on}, not {}",
                path.display(),
                test.name()
            );
        }
    }
    let bpd = if args.n_bpd > 0 {
        Some(bpd_report(&args, &model, &test, &out)?)
    } else {
        None
    };
    let samples = match &classifier {
        Some((_, c)) => Some(sample_report(&args, &model, &test, c, &out)?),
        None => None,
    };
    let classifier_json = classifier.as_ref().map(|(path, c)| {
        let meta: BTreeMap<&String, &String> = c.metadata.iter().collect();
        json!({"path": path.display().to_string(), "metadata": meta})
    });
    let report = json!({
        "checkpoint": model.source,
        "data": test.name(),
        "seed": args.seed,
        "bpd": bpd,
        "samples": samples,
        "classifier": classifier_json,
        "seconds": start.elapsed().as_secs_f64(),
    });
    let path = out.join("eval.json");
    let text = serde_json::to_string_pretty(&report).expect("JSON serialises");
    fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    let summary = summary(&report, &path);
    if args.json {
        eprint!("{summary}");
        println!("{report}");
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// The human-readable summary of the report.
fn summary(r: &Value, path: &Path) -> String {
    let mut s = format!("model: {}\ndata: {}\n", r["checkpoint"], r["data"]);
    let num = |v: &Value| match v.as_f64() {
        None => "-".to_string(),
        Some(x) if x != 0.0 && x.abs() < 0.01 => format!("{x:.3e}"),
        Some(x) => format!("{x:.4}"),
    };
    if let Some(b) = r["bpd"].as_object() {
        s += &format!(
            "bits/dim: {} on {} test images ({} of {} steps evaluated)\n  prior L_T {}\n  sum of \
             L_t {}\n  decoder L_0 {}\n  per-step plot: {}\n",
            num(&b["total"]),
            b["images"],
            b["steps_evaluated"],
            b["steps_total"],
            num(&b["prior"]),
            num(&b["kl_sum"]),
            num(&b["decoder"]),
            b["plot"].as_str().unwrap_or("")
        );
    }
    if let Some(q) = r["samples"].as_object() {
        let c = &r["classifier"];
        s += &format!(
            "samples: {} by {} with {} steps (grid: {})\n  FID (classifier features) {}\n  \
             Inception Score analogue {} (test images: {})\n  predicted classes {} (test \
             images: {})\n  classifier: {} {}\n  classifier accuracy on these test images {}\n",
            q["n"],
            q["sampler"].as_str().unwrap_or(""),
            q["steps"],
            q["grid"].as_str().unwrap_or(""),
            num(&q["fid"]),
            num(&q["inception_score"]),
            num(&q["inception_score_test"]),
            q["class_histogram"],
            q["class_histogram_test"],
            c["path"].as_str().unwrap_or(""),
            c["metadata"],
            num(&q["classifier_accuracy_test"]),
        );
    }
    s + &format!("wrote {}\n", path.display())
}
