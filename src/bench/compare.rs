//! `ddpm bench unet --compare-in-place`, `--compare-deferred` and `--compare-awake`: the same
//! model's steps with an optimisation on and off, in one process.
//!
//! - `--compare-in-place`: the training and sampling steps with the UNet's up path reading its
//!   skip concatenations and upsampled images in place (the default) against the same steps
//!   with them formed (`Var::concat`, `upsample_nearest2x`; see [`ddpm::unet::read_in_place`]).
//! - `--compare-deferred`: the training step with the convolutions' weight gradients deferred
//!   off the backward sweep's path (the default) against the same step with every gradient
//!   computed in the sweep (see [`autograd::defer_leaf_gradients`]).
//! - `--compare-awake`: the training and sampling steps with the pool's workers kept awake
//!   through each step (the default) against the same steps without (see
//!   [`tensor::awake::keep_workers_awake`]).
//!
//! The two forms alternate step by step in ABBA order, so that the drift of a shared
//! machine's load weighs on both alike, and the ratio is taken pair by pair: the median of the
//! pairs' ratios is the figure, with their range.

use std::time::Instant;

use serde_json::Value;

use super::timing::median;
use super::unet::{UnetArgs, Workload};
use super::Report;

/// Steps of each form before the timed pairs.
const WARMUP: usize = 2;

/// What is compared: the optimisation's switch, the steps it affects, and the names of the
/// two forms in the report.
#[derive(Clone, Copy)]
pub enum Comparison {
    InPlace,
    Deferred,
    Awake,
}

/// Names in the report: the JSON `bench`, the keys of the two forms' medians and of the
/// ratio (off over on), and the two forms in words.
struct Names {
    bench: &'static str,
    on_key: &'static str,
    off_key: &'static str,
    ratio_key: &'static str,
    on: &'static str,
    off: &'static str,
}

impl Comparison {
    fn names(self) -> Names {
        match self {
            Comparison::InPlace => Names {
                bench: "unet_in_place",
                on_key: "in_place_ms",
                off_key: "formed_ms",
                ratio_key: "formed_over_in_place",
                on: "in place",
                off: "formed",
            },
            Comparison::Deferred => Names {
                bench: "unet_deferred",
                on_key: "deferred_ms",
                off_key: "in_sweep_ms",
                ratio_key: "in_sweep_over_deferred",
                on: "deferred",
                off: "in the sweep",
            },
            Comparison::Awake => Names {
                bench: "unet_awake",
                on_key: "awake_ms",
                off_key: "asleep_ms",
                ratio_key: "asleep_over_awake",
                on: "awake",
                off: "asleep",
            },
        }
    }

    /// Turns the optimisation on or off; returns the previous setting.
    fn switch(self, on: bool) -> bool {
        match self {
            Comparison::InPlace => ddpm::unet::read_in_place(on),
            Comparison::Deferred => autograd::defer_leaf_gradients(on),
            Comparison::Awake => tensor::awake::keep_workers_awake(on),
        }
    }

    /// The steps the optimisation changes.
    fn steps(self) -> &'static [&'static str] {
        match self {
            Comparison::InPlace | Comparison::Awake => &["train_step", "sample_step"],
            Comparison::Deferred => &["train_step"],
        }
    }
}

/// Times `--pairs` pairs of each affected step, and reports both forms' medians and the
/// ratio of off to on.
pub fn run(
    args: &UnetArgs,
    which: Comparison,
    threads: usize,
    report: &Report,
) -> Result<(), String> {
    if args.pairs == 0 {
        return Err("--pairs must be at least 1".into());
    }
    let names = which.names();
    let mut work = Workload::new(args)?;
    let before = which.switch(true);
    for &step in which.steps() {
        // Jobs deferred by each form's steps (all on this thread's sweeps) and keeper jobs
        // sent for them (`tensor::awake`), to show what the switch did.
        let (mut jobs, mut keepers) = ([0usize; 2], [0usize; 2]);
        let mut timed = |on: bool| {
            which.switch(on);
            let before = (autograd::deferred_jobs(), tensor::awake::keepers_sent());
            let start = Instant::now();
            if step == "train_step" {
                work.train_step();
            } else {
                work.forward();
            }
            let seconds = start.elapsed().as_secs_f64();
            jobs[usize::from(!on)] += autograd::deferred_jobs() - before.0;
            keepers[usize::from(!on)] += tensor::awake::keepers_sent() - before.1;
            seconds
        };
        for _ in 0..WARMUP {
            timed(true);
            timed(false);
        }
        let (mut ons, mut offs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..args.pairs {
            // ABBA: on first in even pairs, second in odd ones.
            let (a, b) = if pair % 2 == 0 {
                let a = timed(true);
                (a, timed(false))
            } else {
                let b = timed(false);
                (timed(true), b)
            };
            ons.push(a);
            offs.push(b);
            ratios.push(b / a);
        }
        let steps = (WARMUP + args.pairs) as f64;
        let [jobs_on, jobs_off] = jobs.map(|j| j as f64 / steps);
        let [keepers_on, keepers_off] = keepers.map(|k| k as f64 / steps);
        let (lo, hi) = super::timing::range(&ratios);
        let (on_ms, off_ms) = (median(&mut ons) * 1e3, median(&mut offs) * 1e3);
        let ratio = median(&mut ratios);
        let Names {
            bench,
            on_key,
            off_key,
            ratio_key,
            on,
            off,
        } = names;
        report.line(
            &[
                ("bench", bench.into()),
                ("step", step.into()),
                ("preset", args.preset.clone().into()),
                ("batch", args.batch.into()),
                ("threads", threads.into()),
                ("pairs", args.pairs.into()),
                (on_key, Value::from(on_ms)),
                (off_key, Value::from(off_ms)),
                (ratio_key, Value::from(ratio)),
                ("ratio_min", Value::from(lo)),
                ("ratio_max", Value::from(hi)),
                ("deferred_jobs_per_step", Value::from(vec![jobs_on, jobs_off])),
                ("keepers_per_step", Value::from(vec![keepers_on, keepers_off])),
            ],
            &format!(
                "unet {step:<11} preset={} batch={} threads={threads}  {on} {on_ms:.1} ms, {off} {off_ms:.1} ms (medians of {} interleaved pairs); {off} / {on} {ratio:.3} (median of pairs, range {lo:.3}-{hi:.3}); weight gradients deferred per step: {jobs_on:.0} {on}, {jobs_off:.0} {off}; workers kept awake per step: {keepers_on:.0} {on}, {keepers_off:.0} {off}",
                args.preset, args.batch, args.pairs,
            ),
        );
    }
    which.switch(before);
    Ok(())
}
