//! `ddpm`: the command-line program. Argument parsing and reporting only; the maths lives in
//! the `tensor`, `autograd` and `ddpm` crates.

mod bench;

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
    /// Measure the engine: the machine's FMA peak, GEMM, conv2d and element-wise kernels.
    /// Without a subcommand, runs the standard suite.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
    };
    if let Err(message) = result {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
