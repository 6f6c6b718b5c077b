//! `ddpm bench unet --scaling`: the speed-up of a training step from one thread to N, measured
//! in one process with the two step times interleaved.
//!
//! On a shared machine the load of other tenants drifts over seconds, so two separate runs (one
//! thread, then N) compare different conditions. Here two copies of the model are built, each
//! on its own thread pool (one thread, N threads), and their steps alternate in ABBA order; the
//! speed-up is taken pair by pair, and its median reported with the range. With `--profile`
//! the same is done op by op (each op's time in a step, from the engine's profiler).

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Instant;

use serde_json::Value;
use tensor::profile;

use super::timing::median;
use super::unet::{UnetArgs, Workload};
use super::Report;

/// Steps each side runs before the timed pairs.
const WARMUP: usize = 2;

/// One step's seconds, in all and by op (with "outside ops" for the rest), when profiled.
type StepTimes = (f64, HashMap<&'static str, f64>);

/// A pool's worker: builds the workload (reporting success or the error), then runs one
/// training step per message and sends back its times, until the sender is dropped.
fn serve(args: &UnetArgs, go: Receiver<()>, done: Sender<Result<StepTimes, String>>) {
    let mut work = match Workload::new(args) {
        Ok(work) => work,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    if done.send(Ok((0.0, HashMap::new()))).is_err() {
        return;
    }
    while go.recv().is_ok() {
        let _ = profile::take();
        let start = Instant::now();
        work.train_step();
        let seconds = start.elapsed().as_secs_f64();
        let mut by_op: HashMap<&'static str, f64> = HashMap::new();
        for entry in profile::take() {
            *by_op.entry(entry.op).or_default() += entry.seconds;
        }
        if !by_op.is_empty() {
            let inside: f64 = by_op.values().sum();
            by_op.insert("(outside ops)", (seconds - inside).max(0.0));
        }
        if done.send(Ok((seconds, by_op))).is_err() {
            return;
        }
    }
}

/// Waits for one side's answer.
fn answer(done: &Receiver<Result<StepTimes, String>>) -> Result<StepTimes, String> {
    done.recv()
        .map_err(|_| "a benchmark thread stopped".to_string())?
}

/// Runs `pairs` interleaved pairs of training steps on 1 and `threads` threads and reports the
/// speed-up.
pub fn run(args: &UnetArgs, threads: usize, report: &Report) -> Result<(), String> {
    if threads < 2 {
        return Err("--scaling compares one thread with --threads N for N >= 2".into());
    }
    if args.pairs == 0 {
        return Err("--pairs must be at least 1".into());
    }
    let mut pools = Vec::new();
    for n in [1, threads] {
        pools.push(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| format!("cannot start {n} threads: {e}"))?,
        );
    }
    let mut times: [Vec<StepTimes>; 2] = [Vec::new(), Vec::new()];
    let profiling_before = profile::enabled();
    profile::enable(args.profile);
    let outcome = std::thread::scope(|scope| -> Result<(), String> {
        let mut sides = Vec::new();
        for pool in &pools {
            let (go_tx, go_rx) = channel();
            let (done_tx, done_rx) = channel();
            scope.spawn(move || pool.install(|| serve(args, go_rx, done_tx)));
            sides.push((go_tx, done_rx));
        }
        // Both workloads built (or the first error).
        for (_, done) in &sides {
            answer(done)?;
        }
        let step = |side: usize| -> Result<StepTimes, String> {
            let (go, done) = &sides[side];
            go.send(())
                .map_err(|_| "a benchmark thread stopped".to_string())?;
            answer(done)
        };
        for _ in 0..WARMUP {
            step(0)?;
            step(1)?;
        }
        for pair in 0..args.pairs {
            // ABBA: a drift in the machine's load weighs on both sides alike.
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                times[side].push(step(side)?);
            }
        }
        // Dropping the senders ends the workers' loops.
        Ok(())
    });
    profile::enable(profiling_before);
    outcome?;
    let mut ratios: Vec<f64> = times[0]
        .iter()
        .zip(&times[1])
        .map(|(a, b)| a.0 / b.0)
        .collect();
    let speedup = median(&mut ratios);
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| {
        (lo.min(r), hi.max(r))
    });
    let seconds = |side: usize| -> Vec<f64> { times[side].iter().map(|t| t.0).collect() };
    let one = median(&mut seconds(0)) * 1e3;
    let many = median(&mut seconds(1)) * 1e3;
    report.line(
        &[
            ("bench", "unet_scaling".into()),
            ("preset", args.preset.clone().into()),
            ("batch", args.batch.into()),
            ("threads", threads.into()),
            ("pairs", args.pairs.into()),
            ("ms_1_thread", Value::from(one)),
            ("ms_n_threads", Value::from(many)),
            ("speedup", speedup.into()),
            ("speedup_min", lo.into()),
            ("speedup_max", hi.into()),
        ],
        &format!(
            "unet train_step preset={} batch={} 1 thread {one:.1} ms, {threads} threads {many:.1} ms (medians of {} interleaved pairs); speed-up {speedup:.2}x (median of pairs, range {lo:.2}-{hi:.2})",
            args.preset, args.batch, args.pairs
        ),
    );
    if args.profile {
        report_ops(&times, threads, report);
    }
    Ok(())
}

/// Each op's median time per step on each side and the ratio of the medians, largest first.
fn report_ops(times: &[Vec<StepTimes>; 2], threads: usize, report: &Report) {
    let mut ops: Vec<&'static str> = times[0].iter().flat_map(|t| t.1.keys().copied()).collect();
    ops.sort_unstable();
    ops.dedup();
    let side_ms = |side: usize, op: &str| {
        let mut v: Vec<f64> = times[side]
            .iter()
            .map(|t| t.1.get(op).copied().unwrap_or(0.0) * 1e3)
            .collect();
        median(&mut v)
    };
    let mut rows: Vec<(&str, f64, f64)> = ops
        .into_iter()
        .map(|op| (op, side_ms(0, op), side_ms(1, op)))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    report.line(
        &[("bench", "unet_scaling_ops".into())],
        &format!("\nby op (medians over the pairs): 1 thread ms, {threads} threads ms, speed-up"),
    );
    for (op, one, many) in rows {
        let speedup = if many > 0.0 { one / many } else { 0.0 };
        report.line(
            &[
                ("bench", "unet_scaling_op".into()),
                ("op", op.into()),
                ("threads", threads.into()),
                ("ms_1_thread", one.into()),
                ("ms_n_threads", many.into()),
                ("speedup", speedup.into()),
            ],
            &format!("  {op:<28} {one:>8.1} {many:>8.1}   {speedup:.2}x"),
        );
    }
}
