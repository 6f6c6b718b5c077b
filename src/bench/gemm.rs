//! `ddpm bench gemm`: `C = op(A) * op(B)` for one shape, as GFLOP/s and fraction of peak.

use clap::Args;
use tensor::kernels::gemm::{sgemm, Trans};
use tensor::Tensor;

use super::report::rate_fields;
use super::timing::{median_seconds, peak};
use super::Report;

/// The GEMM shape and transposes.
#[derive(Args, Clone)]
pub struct GemmArgs {
    /// Rows of op(A) and C.
    #[arg(long, default_value_t = 1024)]
    m: usize,
    /// Columns of op(B) and C.
    #[arg(long, default_value_t = 1024)]
    n: usize,
    /// The shared dimension.
    #[arg(long, default_value_t = 1024)]
    k: usize,
    /// Use A transposed (A is stored k x m).
    #[arg(long)]
    transa: bool,
    /// Use B transposed (B is stored n x k).
    #[arg(long)]
    transb: bool,
    /// Also run the shapes the project's targets name (1024^3 in all four transpose
    /// combinations and the conv-shaped products), instead of the one given.
    #[arg(long)]
    suite: bool,
}

impl Default for GemmArgs {
    fn default() -> Self {
        GemmArgs {
            m: 1024,
            n: 1024,
            k: 1024,
            transa: false,
            transb: false,
            suite: false,
        }
    }
}

/// The shapes the targets name: (m, n, k, transa, transb).
const SUITE: &[(usize, usize, usize, bool, bool)] = &[
    (1024, 1024, 1024, false, false),
    (1024, 1024, 1024, false, true),
    (1024, 1024, 1024, true, false),
    (1024, 1024, 1024, true, true),
    (64, 1024, 576, false, false),
    (576, 1024, 64, false, false),
    (64, 576, 1024, false, false),
    (128, 128, 128, false, false),
    (256, 256, 256, false, false),
    (512, 512, 512, false, false),
];

/// Measures the peak, then each requested shape.
pub fn run(args: &GemmArgs, threads: usize, report: &Report) -> Result<(), String> {
    if args.m == 0 || args.n == 0 || args.k == 0 {
        return Err(format!(
            "gemm sizes must be positive, got m={} n={} k={}",
            args.m, args.n, args.k
        ));
    }
    let peak_gflops = peak(threads, report);
    let shapes: Vec<_> = if args.suite {
        SUITE.to_vec()
    } else {
        vec![(args.m, args.n, args.k, args.transa, args.transb)]
    };
    for (m, n, k, ta, tb) in shapes {
        one(m, n, k, ta, tb, threads, peak_gflops, report);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn one(
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    threads: usize,
    peak_gflops: f64,
    report: &Report,
) {
    let a = Tensor::rand_uniform(&[m * k], 1, 0);
    let b = Tensor::rand_uniform(&[k * n], 1, 1);
    let mut c = vec![0.0f32; m * n];
    let (lda, transa) = if ta { (m, Trans::Yes) } else { (k, Trans::No) };
    let (ldb, transb) = if tb { (k, Trans::Yes) } else { (n, Trans::No) };
    let seconds = median_seconds(|| {
        sgemm(
            transa,
            transb,
            m,
            n,
            k,
            1.0,
            a.data(),
            lda,
            b.data(),
            ldb,
            0.0,
            &mut c,
            n,
        );
    });
    let gflops = 2.0 * (m * n * k) as f64 / seconds / 1e9;
    let fraction = gflops / peak_gflops;
    let flags = format!(
        "{}{}",
        if ta { "T" } else { "N" },
        if tb { "T" } else { "N" }
    );
    let mut fields = vec![
        ("bench", "gemm".into()),
        ("m", m.into()),
        ("n", n.into()),
        ("k", k.into()),
        ("transa", ta.into()),
        ("transb", tb.into()),
    ];
    fields.extend(rate_fields(threads, seconds, gflops, peak_gflops));
    report.line(
        &fields,
        &format!(
            "gemm {flags} m={m:<5} n={n:<5} k={k:<5} threads={threads}  {:>9.3} ms  {gflops:>7.1} GFLOP/s  {:>5.1}% of peak",
            seconds * 1e3,
            fraction * 100.0
        ),
    );
}
