//! `ddpm bench`: kernel benchmarks that report medians and their ratio to the FMA peak
//! measured in the same process (or, for memory-bound kernels, to a plain copy).

mod attention;
mod compare;
mod conv;
mod elementwise;
mod gemm;
mod pairwise;
mod profile;
mod report;
mod scaling;
mod timing;
mod unet;

use clap::{Args, Subcommand};

pub use report::Report;

/// Options shared by every benchmark.
#[derive(Args, Clone, Copy)]
pub struct Common {
    /// Worker threads (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Print one JSON object per line instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// `ddpm bench [SUBCOMMAND] [--threads N] [--json]`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Option<Which>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Which {
    /// The machine's FMA throughput in GFLOP/s, measured in-process.
    Peak,
    /// GEMM `C = op(A) * op(B)`: GFLOP/s and fraction of peak.
    Gemm(gemm::GemmArgs),
    /// Multi-head attention forward and backward: GFLOP/s of its products and fraction of peak.
    Attention(attention::AttentionArgs),
    /// conv2d forward, backward-data and backward-weight: GFLOP/s and fraction of peak.
    Conv(conv::ConvArgs),
    /// Element-wise ops and reductions on 16M elements: GB/s and fraction of a plain copy.
    Elementwise,
    /// A UNet training step and sampling step: ms, effective GFLOP/s, peak memory.
    Unet(unet::UnetArgs),
}

/// Runs the chosen benchmark (or the standard suite) on a pool of the requested size.
pub fn run(args: BenchArgs) -> Result<(), String> {
    let threads = args.common.threads.unwrap_or_else(default_threads);
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
    let report = Report::new(args.common.json);
    pool.install(|| match args.which {
        Some(Which::Peak) => {
            timing::peak(threads, &report);
            Ok(())
        }
        Some(Which::Gemm(g)) => gemm::run(&g, threads, &report),
        Some(Which::Attention(a)) => attention::run(&a, threads, &report),
        Some(Which::Conv(c)) => conv::run(&c, threads, &report),
        Some(Which::Elementwise) => elementwise::run(threads, &report),
        Some(Which::Unet(u)) => unet::run(&u, threads, &report),
        None => {
            gemm::run(&gemm::GemmArgs::default(), threads, &report)?;
            conv::run(&conv::ConvArgs::default(), threads, &report)?;
            elementwise::run(threads, &report)
        }
    })
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
