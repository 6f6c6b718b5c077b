//! `ddpm bench unet --scaling`: the speed-up of a training step from one thread to N, measured
//! in one process with the two step times interleaved.
//!
//! On a shared machine the load of other tenants drifts over seconds, so two separate runs (one
//! thread, then N) compare different conditions. Here two copies of the model are built, each
//! on its own thread pool (one thread, N threads), and their steps alternate in ABBA order; the
//! speed-up is taken pair by pair, and its median reported with the range.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Instant;

use serde_json::Value;

use super::timing::median;
use super::unet::{UnetArgs, Workload};
use super::Report;

/// Steps each side runs before the timed pairs.
const WARMUP: usize = 2;

/// A pool's worker: builds the workload (reporting success or the error), then runs one
/// training step per message and sends back its seconds, until the sender is dropped.
fn serve(args: &UnetArgs, go: Receiver<()>, done: Sender<Result<f64, String>>) {
    let mut work = match Workload::new(args) {
        Ok(work) => work,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    if done.send(Ok(0.0)).is_err() {
        return;
    }
    while go.recv().is_ok() {
        let start = Instant::now();
        work.train_step();
        if done.send(Ok(start.elapsed().as_secs_f64())).is_err() {
            return;
        }
    }
}

/// Waits for one side's answer.
fn answer(done: &Receiver<Result<f64, String>>) -> Result<f64, String> {
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
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    std::thread::scope(|scope| -> Result<(), String> {
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
        let step = |side: usize| -> Result<f64, String> {
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
    })?;
    let mut ratios: Vec<f64> = times[0].iter().zip(&times[1]).map(|(a, b)| a / b).collect();
    let speedup = median(&mut ratios);
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| {
        (lo.min(r), hi.max(r))
    });
    let one = median(&mut times[0]) * 1e3;
    let many = median(&mut times[1]) * 1e3;
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
    Ok(())
}
