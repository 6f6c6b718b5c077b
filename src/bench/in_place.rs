//! `ddpm bench unet --compare-in-place`: the training and sampling steps with the UNet's up
//! path reading its skip concatenations and upsampled images in place (the default), against
//! the same steps with them formed (`Var::concat`, `upsample_nearest2x`), on the same model
//! in one process (see [`ddpm::unet::read_in_place`]).
//!
//! The two forms alternate step by step in ABBA order, so that the drift of a shared
//! machine's load weighs on both alike, and the ratio is taken pair by pair: the median of the
//! pairs' ratios is the figure, with their range.

use std::time::Instant;

use ddpm::unet::read_in_place;
use serde_json::Value;

use super::timing::median;
use super::unet::{UnetArgs, Workload};
use super::Report;

/// Steps of each form before the timed pairs.
const WARMUP: usize = 2;

/// Times `--pairs` pairs of training steps, then of sampling steps, and reports both forms'
/// medians and the ratio of formed to in place.
pub fn run(args: &UnetArgs, threads: usize, report: &Report) -> Result<(), String> {
    if args.pairs == 0 {
        return Err("--pairs must be at least 1".into());
    }
    let mut work = Workload::new(args)?;
    let before = read_in_place(true);
    for step in ["train_step", "sample_step"] {
        let mut timed = |in_place: bool| {
            read_in_place(in_place);
            let start = Instant::now();
            if step == "train_step" {
                work.train_step();
            } else {
                work.forward();
            }
            start.elapsed().as_secs_f64()
        };
        for _ in 0..WARMUP {
            timed(true);
            timed(false);
        }
        let (mut fused, mut formed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..args.pairs {
            // ABBA: in place first in even pairs, second in odd ones.
            let (a, b) = if pair % 2 == 0 {
                let a = timed(true);
                (a, timed(false))
            } else {
                let b = timed(false);
                (timed(true), b)
            };
            fused.push(a);
            formed.push(b);
            ratios.push(b / a);
        }
        let (lo, hi) = super::timing::range(&ratios);
        let (fused_ms, formed_ms) = (median(&mut fused) * 1e3, median(&mut formed) * 1e3);
        let ratio = median(&mut ratios);
        report.line(
            &[
                ("bench", "unet_in_place".into()),
                ("step", step.into()),
                ("preset", args.preset.clone().into()),
                ("batch", args.batch.into()),
                ("threads", threads.into()),
                ("pairs", args.pairs.into()),
                ("in_place_ms", Value::from(fused_ms)),
                ("formed_ms", Value::from(formed_ms)),
                ("formed_over_in_place", Value::from(ratio)),
                ("ratio_min", Value::from(lo)),
                ("ratio_max", Value::from(hi)),
            ],
            &format!(
                "unet {step:<11} preset={} batch={} threads={threads}  in place {fused_ms:.1} ms, formed {formed_ms:.1} ms (medians of {} interleaved pairs); formed / in place {ratio:.3} (median of pairs, range {lo:.3}-{hi:.3})",
                args.preset, args.batch, args.pairs,
            ),
        );
    }
    read_in_place(before);
    Ok(())
}
