//! `ddpm classifier train`: trains the small CNN whose features `ddpm eval` measures samples
//! with (FID and the Inception Score analogue), and saves it as safetensors.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use ddpm::classifier::{Classifier, TrainOptions};
use ddpm::data::Split;

use crate::train::load_data;

/// `ddpm classifier` subcommands.
#[derive(Args)]
pub struct ClassifierArgs {
    #[command(subcommand)]
    command: ClassifierCommand,
}

#[derive(Subcommand)]
enum ClassifierCommand {
    /// Train a classifier on a data set's train split, print its test accuracy, save it.
    Train(TrainClassifierArgs),
}

/// `ddpm classifier train` options.
#[derive(Args)]
struct TrainClassifierArgs {
    /// Data set: `shapes`, `fashion-mnist` or `fashion-mnist:DIR`, `idx:DIR` (1-channel images up to 32x32).
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Directory of the Fashion-MNIST files (overrides the default location).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output file (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate (AdamW with cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// Seed of the initialisation and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

impl ClassifierArgs {
    /// `--threads`.
    pub fn threads(&self) -> Option<usize> {
        match &self.command {
            ClassifierCommand::Train(a) => a.threads,
        }
    }
}

/// Runs `ddpm classifier ...`.
pub fn run(args: ClassifierArgs) -> Result<(), String> {
    match args.command {
        ClassifierCommand::Train(a) => train(a),
    }
}

fn train(args: TrainClassifierArgs) -> Result<(), String> {
    if args.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(format!("--lr must be a positive number, got {}", args.lr));
    }
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(format!(
            "--out: expected a file name ending in .safetensors, found {}",
            args.out.display()
        ));
    }
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(format!(
                "--out: the folder {} does not exist",
                dir.display()
            ));
        }
    }
    let dir = args.data_dir.as_deref();
    let data = load_data(&args.data, dir, Split::Train)?;
    let test = load_data(&args.data, dir, Split::Test)?;
    eprintln!(
        "training a classifier on {} ({} train, {} test images of {:?}) for {} steps of {}",
        data.name(),
        data.len(),
        test.len(),
        data.image_shape(),
        args.steps,
        args.batch
    );
    let options = TrainOptions {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
    };
    let start = Instant::now();
    let (model, accuracy) = Classifier::train(&data, &test, options).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    model.save(&args.out).map_err(|e| e.to_string())?;
    println!(
        "test accuracy {:.2}% ({} test images) after {seconds:.1} s; wrote {}",
        accuracy * 100.0,
        test.len(),
        args.out.display()
    );
    Ok(())
}
