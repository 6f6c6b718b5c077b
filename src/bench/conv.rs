//! `ddpm bench conv`: conv2d forward, backward-data and backward-weight for one shape, as
//! GFLOP/s (2 * N * Cout * Cin * kh * kw * OH * OW flops per pass) and fraction of peak.

use clap::{Args, ValueEnum};
use tensor::kernels::conv::{
    allow_winograd, conv2d_backward_data, conv2d_backward_weight, conv2d_forward, Conv2dParams,
};
use tensor::Tensor;

use super::pairwise::Timer;
use super::report::rate_fields;
use super::timing::peak;
use super::Report;

/// Which passes to time.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pass {
    Forward,
    BackwardData,
    BackwardWeight,
    /// Both gradients side by side (`rayon::join`), as a training step computes them.
    Backward,
    /// Forward, backward-data and backward-weight, each on its own.
    All,
}

/// Which algorithm the 3x3 stride-1 convolutions use.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    /// Winograd F(4x4, 3x3) where it applies, the direct kernels elsewhere (what training uses).
    Auto,
    /// The direct kernels only.
    Direct,
}

/// The convolution's shape.
#[derive(Args, Clone)]
pub struct ConvArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Input channels.
    #[arg(long, default_value_t = 64)]
    cin: usize,
    /// Output channels.
    #[arg(long, default_value_t = 64)]
    cout: usize,
    /// Input height and width.
    #[arg(long, default_value_t = 32)]
    hw: usize,
    /// Kernel height and width.
    #[arg(long, default_value_t = 3)]
    kernel: usize,
    /// Stride (1 or 2).
    #[arg(long, default_value_t = 1)]
    stride: usize,
    /// Zero padding on each side (default: kernel / 2).
    #[arg(long)]
    padding: Option<usize>,
    /// Which passes to time.
    #[arg(long, value_enum, default_value_t = Pass::All)]
    pass: Pass,
    /// The algorithm: `auto` (Winograd where it applies) or `direct`.
    #[arg(long, value_enum, default_value_t = Algorithm::Auto)]
    algorithm: Algorithm,
    /// Start every repetition with its tensors out of cache, as in a network, where each
    /// layer's input was written long before: the repetitions cycle through copies of the
    /// tensors four times the size of a 32 MiB last-level cache.
    #[arg(long)]
    cold: bool,
    /// Also time each pass on one thread, in interleaved pairs with the N-thread runs, and
    /// report the speed-up (the median of the pairs' ratios, with their range).
    #[arg(long)]
    scaling: bool,
}

impl Default for ConvArgs {
    fn default() -> Self {
        ConvArgs {
            batch: 16,
            cin: 64,
            cout: 64,
            hw: 32,
            kernel: 3,
            stride: 1,
            padding: None,
            pass: Pass::All,
            algorithm: Algorithm::Auto,
            cold: false,
            scaling: false,
        }
    }
}

/// Bytes of tensors `--cold` cycles through: four times a 32 MiB last-level cache.
const COLD_BYTES: usize = 128 << 20;

/// Measures the peak, then the requested passes.
pub fn run(args: &ConvArgs, threads: usize, report: &Report) -> Result<(), String> {
    let padding = args.padding.unwrap_or(args.kernel / 2);
    if args.batch == 0 || args.cin == 0 || args.cout == 0 || args.hw == 0 || args.kernel == 0 {
        return Err("conv sizes must be positive".into());
    }
    if args.stride == 0 {
        return Err("--stride must be at least 1".into());
    }
    if args.hw + 2 * padding < args.kernel {
        return Err(format!(
            "a {k}x{k} kernel does not fit a {hw}x{hw} input with padding {padding}",
            k = args.kernel,
            hw = args.hw
        ));
    }
    let p = Conv2dParams {
        batch: args.batch,
        c_in: args.cin,
        c_out: args.cout,
        h: args.hw,
        w: args.hw,
        kh: args.kernel,
        kw: args.kernel,
        stride: args.stride,
        padding,
    };
    let (oh, ow) = (p.out_h(), p.out_w());
    let x = Tensor::rand_uniform(&[p.batch, p.c_in, p.h, p.w], 2, 0);
    let w = Tensor::rand_uniform(&[p.c_out, p.c_in, p.kh, p.kw], 2, 1);
    let bias = Tensor::rand_uniform(&[p.c_out], 2, 2);
    let dy = Tensor::rand_uniform(&[p.batch, p.c_out, oh, ow], 2, 3);
    let flops = 2.0 * (p.batch * p.c_out * p.c_in * p.kh * p.kw * oh * ow) as f64;
    let peak_gflops = peak(threads, report);

    // One set of tensors per repetition in turn (one set unless `--cold`).
    let set_floats = 2 * (x.numel() + dy.numel()) + w.numel();
    let sets = if args.cold {
        (COLD_BYTES / 4).div_ceil(set_floats).max(2)
    } else {
        1
    };
    let xs = vec![x.data().to_vec(); sets];
    let ws = vec![w.data().to_vec(); sets];
    let dys = vec![dy.data().to_vec(); sets];
    let mut ys = vec![vec![0.0f32; dy.numel()]; sets];
    let mut dxs = vec![vec![0.0f32; x.numel()]; sets];
    let mut dw = vec![0.0f32; w.numel()];
    let mut db = vec![0.0f32; p.c_out];
    let want = |pass: Pass| args.pass == pass || (args.pass == Pass::All && pass != Pass::Backward);
    let direct = args.algorithm == Algorithm::Direct;
    let winograd_before = allow_winograd(!direct);
    let timer = Timer::new(args.scaling)?;
    let measure = |f: &mut (dyn FnMut() + Send)| timer.time(f);
    let mut timed = Vec::new();
    let mut turn = 0;
    let mut next = || {
        turn = (turn + 1) % sets;
        turn
    };
    if want(Pass::Forward) {
        timed.push((
            "forward",
            measure(&mut || {
                let i = next();
                conv2d_forward(&p, &xs[i], &ws[i], Some(bias.data()), &mut ys[i])
            }),
        ));
    }
    if want(Pass::BackwardData) {
        timed.push((
            "backward_data",
            measure(&mut || {
                let i = next();
                conv2d_backward_data(&p, &dys[i], &ws[i], &mut dxs[i])
            }),
        ));
    }
    if want(Pass::BackwardWeight) {
        timed.push((
            "backward_weight",
            measure(&mut || {
                let i = next();
                conv2d_backward_weight(&p, &xs[i], &dys[i], &mut dw, Some(&mut db))
            }),
        ));
    }
    if want(Pass::Backward) {
        timed.push((
            "backward",
            measure(&mut || {
                let i = next();
                let (dx, dy, x) = (&mut dxs[i], &dys[i], &xs[i]);
                rayon::join(
                    || conv2d_backward_data(&p, dy, &ws[i], dx),
                    || conv2d_backward_weight(&p, x, dy, &mut dw, Some(&mut db)),
                );
            }),
        ));
    }
    allow_winograd(winograd_before);
    let algorithm = if direct { "direct" } else { "auto" };
    let label = if args.cold { " cold" } else { "" };
    for (pass, measured) in timed {
        let seconds = measured.seconds;
        // The joined backward does both gradients' work.
        let work = if pass == "backward" {
            2.0 * flops
        } else {
            flops
        };
        let gflops = work / seconds / 1e9;
        let fraction = gflops / peak_gflops;
        let mut fields = vec![
            ("bench", "conv".into()),
            ("pass", pass.into()),
            ("batch", p.batch.into()),
            ("cin", p.c_in.into()),
            ("cout", p.c_out.into()),
            ("hw", p.h.into()),
            ("kernel", p.kh.into()),
            ("stride", p.stride.into()),
            ("padding", p.padding.into()),
            ("algorithm", algorithm.into()),
            ("cold", args.cold.into()),
        ];
        fields.extend(rate_fields(threads, seconds, gflops, peak_gflops));
        let mut human = format!(
            "conv {pass:<15} N={} {}->{} {}x{} k={} s={} p={} {algorithm:<6}{label} threads={threads}  {:>9.3} ms  {gflops:>7.1} GFLOP/s  {:>5.1}% of peak",
            p.batch,
            p.c_in,
            p.c_out,
            p.h,
            p.w,
            p.kh,
            p.stride,
            p.padding,
            seconds * 1e3,
            fraction * 100.0
        );
        measured.add_scaling(&mut fields, &mut human);
        report.line(&fields, &human);
    }
    Ok(())
}
