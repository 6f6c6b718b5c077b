//! `ddpm bench attention`: multi-head attention forward and backward for one shape, as GFLOP/s
//! of its matrix products (`2 Lq Lk (d + dv)` per head forward, twice that backward) and as a
//! fraction of the FMA peak. The default shape is the `bench` UNet's attention at 16x16.

use clap::{Args, ValueEnum};
use tensor::ops::attention::{attention_heads, attention_heads_backward, HeadLayout};
use tensor::Tensor;

use super::pairwise::Timer;
use super::report::rate_fields;
use super::timing::peak;
use super::Report;

/// The attention's shape: `q`, `k`, `v` are `[batch, tokens, channels]`, `heads` side by side.
#[derive(Args, Clone)]
pub struct AttentionArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens (pixels) per image, as queries and as keys.
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Channels of the queries, keys and values (all heads).
    #[arg(long, default_value_t = 128)]
    channels: usize,
    /// Heads (the channels split evenly).
    #[arg(long, default_value_t = 16)]
    heads: usize,
    /// Lay the tensors out `[batch, channels, tokens]` (as 1x1 convolutions of an image give
    /// them) instead of `[batch, tokens, channels]`.
    #[arg(long)]
    channels_first: bool,
    /// Time only this pass.
    #[arg(long, value_enum)]
    pass: Option<Pass>,
    /// Also time each pass on one thread, in interleaved pairs with the N-thread runs, and
    /// report the speed-up (the median of the pairs' ratios, with their range).
    #[arg(long)]
    scaling: bool,
}

/// The passes `--pass` chooses from.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pass {
    Forward,
    Backward,
}

/// Measures the peak, then the forward and backward passes.
pub fn run(args: &AttentionArgs, threads: usize, report: &Report) -> Result<(), String> {
    let (b, l, c, h) = (args.batch, args.tokens, args.channels, args.heads);
    if b == 0 || l == 0 || c == 0 || h == 0 {
        return Err("attention sizes must be positive".into());
    }
    if c % h != 0 {
        return Err(format!("{c} channels do not split into {h} heads"));
    }
    let scale = 1.0 / ((c / h) as f32).sqrt();
    let (shape, order) = if args.channels_first {
        ([b, c, l], HeadLayout::ChannelsFirst)
    } else {
        ([b, l, c], HeadLayout::TokensFirst)
    };
    let q = Tensor::rand_uniform(&shape, 2, 0);
    let k = Tensor::rand_uniform(&shape, 2, 1);
    let v = Tensor::rand_uniform(&shape, 2, 2);
    let g = Tensor::rand_uniform(&shape, 2, 3);
    let peak_gflops = peak(threads, report);
    let (o, lse) = attention_heads(&q, &k, &v, (h, order), scale);
    let want = |p: Pass| args.pass.is_none_or(|only| only == p);
    // Per head: Q K^T and P V forward (d = dv = c / h), four products of that size backward.
    let forward_flops = 2.0 * (b * h * l * l) as f64 * (2 * (c / h)) as f64;
    let timer = Timer::new(args.scaling)?;
    let mut timed = Vec::new();
    if want(Pass::Forward) {
        let seconds = timer.time(&mut || {
            std::hint::black_box(attention_heads(&q, &k, &v, (h, order), scale));
        });
        timed.push(("forward", seconds, forward_flops));
    }
    if want(Pass::Backward) {
        let seconds = timer.time(&mut || {
            std::hint::black_box(attention_heads_backward(
                &q,
                &k,
                &v,
                &o,
                &lse,
                &g,
                (h, order),
                scale,
            ));
        });
        timed.push(("backward", seconds, 2.0 * forward_flops));
    }
    for (pass, measured, flops) in timed {
        let seconds = measured.seconds;
        let gflops = flops / seconds / 1e9;
        let fraction = gflops / peak_gflops;
        let mut fields = vec![
            ("bench", "attention".into()),
            ("pass", pass.into()),
            ("batch", b.into()),
            ("tokens", l.into()),
            ("channels", c.into()),
            ("heads", h.into()),
            ("channels_first", args.channels_first.into()),
        ];
        fields.extend(rate_fields(threads, seconds, gflops, peak_gflops));
        let mut human = format!(
            "attention {pass:<8} {:?} heads={h} threads={threads}  {:>8.3} ms  \
             {gflops:>6.1} GFLOP/s  {:>5.1}% of peak",
            shape,
            seconds * 1e3,
            fraction * 100.0
        );
        measured.add_scaling(&mut fields, &mut human);
        report.line(&fields, &human);
    }
    Ok(())
}
