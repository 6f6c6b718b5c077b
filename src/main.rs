//! `ddpm`: the command-line program. Argument parsing, progress and files only; the maths
//! lives in the `tensor`, `autograd` and `ddpm` crates.

mod bench;
mod classifier;
mod eval;
mod progress;
mod run_config;
mod sample;
mod sampling_args;
mod train;

use clap::{Parser, Subcommand};

/// A from-scratch CPU diffusion-model trainer and its deep-learning engine.
#[derive(Parser)]
#[command(name = "ddpm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a UNet on a data set (default: the built-in shapes).
    Train(Box<train::TrainArgs>),
    /// Draw images from a trained run or a diffusers model folder.
    Sample(Box<sample::SampleArgs>),
    /// Measure the engine: the machine's FMA peak, GEMM, conv2d and element-wise kernels.
    /// Without a subcommand, runs the standard suite.
    Bench(bench::BenchArgs),
    /// Measure a model: bits/dim on the test split, and FID / Inception Score analogue of its
    /// samples in a classifier's feature space.
    Eval(Box<eval::EvalArgs>),
    /// Train the classifier whose features `ddpm eval` uses.
    Classifier(classifier::ClassifierArgs),
}

/// Runs `f` on a pool of `threads` workers (every core when `None`).
fn with_threads<R: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<R, String> + Send,
) -> Result<R, String> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        builder = builder.num_threads(n);
    }
    let pool = builder
        .build()
        .map_err(|e| format!("cannot start the worker threads: {e}"))?;
    pool.install(f)
}

fn main() {
    let cli = Cli::parse();
    // Reuse freed memory instead of returning it to the kernel: every op allocates its output,
    // and fresh pages from the kernel cost a page fault each (see tensor::ops::alloc).
    tensor::ops::alloc::retain_freed_memory();
    let result = match cli.command {
        Command::Train(args) => with_threads(args.threads(), || train::run(*args)),
        Command::Sample(args) => with_threads(args.threads(), || sample::run(*args)),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => with_threads(args.threads(), || eval::run(*args)),
        Command::Classifier(args) => with_threads(args.threads(), || classifier::run(args)),
    };
    if let Err(message) = result {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
