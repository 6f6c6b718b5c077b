//! `ddpm bench unet --scaling`: the speed-up of a training step from one thread to N, measured
//! in one process with the two step times interleaved.
//!
//! On a shared machine the load of other tenants drifts over seconds, so two separate runs (one
//! thread, then N) compare different conditions. Here two copies of the model are built, each
//! on its own thread pool (one thread, N threads), and their steps alternate in ABBA order; the
//! speed-up is taken pair by pair, and its median reported with the range. With `--profile`
//! the same is done op by op (each op's time in a step, from the engine's profiler). The FMA
//! peak probe runs on one and N threads before and after the pairs, so a run on a machine
//! that was not whole (an N-thread probe well under N times the one-thread probe) shows it.
//!
//! A short probe ([`MACHINE_PROBE`] on one thread, then on N) also runs before every pair
//! and after the last. On this kind of shared virtual machine the host at times runs two of
//! the guest's CPUs on one core (both hyperthreads of it): for seconds at a time each of two
//! threads then does half the FMA work of one, and no code can scale. A pair counts as taken
//! on a whole machine when the probes on both sides of it saw N threads do at least
//! [`WHOLE`] times N times the work of one; the speed-up is reported over all pairs and over
//! those.
//!
//! A memory probe ([`StreamProbe`]: each thread sweeping 64 MiB of its own) runs beside each
//! FMA probe and is reported the same way: how much memory bandwidth a second thread adds is
//! part of what the step's scaling has to live with (on this shared machine often 1.2-1.4x
//! one thread's, where the caches give 2x). The speed-up is also given over the pairs with
//! both the cores and the memory whole around them (the memory probe at least [`WHOLE`] too),
//! the step's scaling when the machine's shared parts do not limit it.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use serde_json::Value;
use tensor::kernels::peak;
use tensor::kernels::stream::{StreamProbe, STREAM_BYTES};
use tensor::profile;

use super::timing::median;
use super::unet::{UnetArgs, Workload};
use super::Report;

/// Steps each side runs before the timed pairs.
const WARMUP: usize = 2;

/// One step's seconds: in all, then (when profiled) by op, with "(outside ops)" for the rest,
/// and by op and shapes.
type StepTimes = (f64, [HashMap<String, f64>; 2]);

/// How long each thread count's FMA probe between two pairs runs.
const MACHINE_PROBE: Duration = Duration::from_millis(20);

/// How long each thread count's memory streaming probe runs before and after the pairs
/// (between pairs: [`MACHINE_PROBE`]).
const STREAM_RUN: Duration = Duration::from_millis(100);

/// The fraction of N times the one-thread FMA rate that N threads must reach, in the probes
/// around a pair, for the pair to count as taken on a whole machine (a whole machine gives
/// 0.97-1.0 of it here; two threads on one core about 0.5).
const WHOLE: f64 = 0.9;

/// How many op-and-shape entries `--profile` lists, those losing the most time first.
const SHAPE_ROWS: usize = 20;

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
    if done.send(Ok((0.0, Default::default()))).is_err() {
        return;
    }
    while go.recv().is_ok() {
        let _ = profile::take();
        let start = Instant::now();
        work.train_step();
        let seconds = start.elapsed().as_secs_f64();
        let mut by: [HashMap<String, f64>; 2] = Default::default();
        let entries = profile::take();
        for entry in &entries {
            *by[0].entry(entry.op.to_string()).or_default() += entry.seconds;
            *by[1]
                .entry(format!("{} {}", entry.op, entry.detail))
                .or_default() += entry.seconds;
        }
        if !entries.is_empty() {
            let inside: f64 = entries.iter().map(|e| e.seconds).sum();
            by[0].insert("(outside ops)".into(), (seconds - inside).max(0.0));
        }
        if done.send(Ok((seconds, by))).is_err() {
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
                // Named for profilers: `perf report --sort comm` separates the two sides.
                .thread_name(move |i| format!("pool{n}-thread{i}"))
                .build()
                .map_err(|e| format!("cannot start {n} threads: {e}"))?,
        );
    }
    let mut times: [Vec<StepTimes>; 2] = [Vec::new(), Vec::new()];
    let profiling_before = profile::enabled();
    profile::enable(args.profile);
    // The machine's FMA throughput on 1 and N threads, before and after the pairs: on a shared
    // machine an N-thread probe well under N times the one-thread probe means a CPU was taken
    // away (by the host or another tenant) around the run.
    // The same for memory: N threads streaming through buffers far larger than the caches.
    let mut stream = StreamProbe::new(threads, STREAM_BYTES);
    let probe = |stream: &mut StreamProbe| {
        (
            [1, threads].map(peak::measure_peak_gflops),
            [1, threads].map(|n| stream.gbps(n, STREAM_RUN)),
        )
    };
    let (before, stream_before) = probe(&mut stream);
    // Between pairs: N threads' FMA rate over N times one thread's, and the same for memory.
    let mut machine_probe = || {
        let [one, many] = [1, threads].map(|n| peak::probe_gflops(n, MACHINE_PROBE));
        let [one_mem, many_mem] = [1, threads].map(|n| stream.gbps(n, MACHINE_PROBE));
        (
            many / (threads as f64 * one),
            many_mem / (threads as f64 * one_mem),
        )
    };
    let mut machine: Vec<(f64, f64)> = Vec::new();
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
            machine.push(machine_probe());
            // ABBA: a drift in the machine's load weighs on both sides alike.
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                times[side].push(step(side)?);
            }
        }
        machine.push(machine_probe());
        // Dropping the senders ends the workers' loops.
        Ok(())
    });
    profile::enable(profiling_before);
    outcome?;
    let (after, stream_after) = probe(&mut stream);
    let (machine, memory): (Vec<f64>, Vec<f64>) = machine.into_iter().unzip();
    let mut ratios: Vec<f64> = times[0]
        .iter()
        .zip(&times[1])
        .map(|(a, b)| a.0 / b.0)
        .collect();
    // The pairs with the machine whole on both sides (its cores; then its memory as well).
    let cores_whole: Vec<bool> = machine
        .windows(2)
        .map(|w| w.iter().all(|&m| m >= WHOLE))
        .collect();
    let memory_whole: Vec<bool> = memory
        .windows(2)
        .map(|w| w.iter().all(|&m| m >= WHOLE))
        .collect();
    let both_whole: Vec<bool> = cores_whole
        .iter()
        .zip(&memory_whole)
        .map(|(a, b)| *a && *b)
        .collect();
    let (whole, speedup_whole) = median_where(&ratios, &cores_whole);
    let (whole_memory, speedup_whole_memory) = median_where(&ratios, &both_whole);
    let speedup = median(&mut ratios);
    let (lo, hi) = super::timing::range(&ratios);
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
            ("peak_gflops_1_thread", Value::from(vec![before[0], after[0]])),
            ("peak_gflops_n_threads", Value::from(vec![before[1], after[1]])),
            ("machine_scaling", Value::from(machine.clone())),
            ("memory_scaling", Value::from(memory.clone())),
            (
                "stream_gbps_1_thread",
                Value::from(vec![stream_before[0], stream_after[0]]),
            ),
            (
                "stream_gbps_n_threads",
                Value::from(vec![stream_before[1], stream_after[1]]),
            ),
            // Profiled steps keep every gradient in the backward sweep.
            ("gradients_deferred", (!args.profile).into()),
            ("pairs_whole", whole.into()),
            ("speedup_whole", speedup_whole.into()),
            ("pairs_whole_memory", whole_memory.into()),
            ("speedup_whole_memory", speedup_whole_memory.into()),
        ],
        &format!(
            "unet train_step preset={} batch={} 1 thread {one:.1} ms, {threads} threads {many:.1} ms (medians of {} interleaved pairs{}); speed-up {speedup:.2}x (median of pairs, range {lo:.2}-{hi:.2})",
            args.preset,
            args.batch,
            args.pairs,
            if args.profile {
                ", profiled: no gradient deferred"
            } else {
                ""
            }
        ),
    );
    let machine_text: Vec<String> = machine.iter().map(|m| format!("{m:.2}")).collect();
    report.heading(&format!(
        "{threads} threads' FMA rate over {threads} x one thread's, between the pairs: {}; pairs with the machine whole (>= {WHOLE} on both sides): {} of {}{}",
        machine_text.join(" "),
        whole,
        args.pairs,
        speedup_whole.map_or(String::new(), |s| format!(", speed-up {s:.2}x (median)"))
    ));
    report.heading(&format!(
        "FMA probe before / after: {}",
        before_after("GFLOP/s", threads, before, after)
    ));
    let memory_text: Vec<String> = memory.iter().map(|m| format!("{m:.2}")).collect();
    report.heading(&format!(
        "memory: {threads} threads' streaming rate over {threads} x one thread's, between the pairs: {}; before / after: {}; pairs with the memory whole as well (>= {WHOLE} on both sides): {} of {}{}",
        memory_text.join(" "),
        before_after("GB/s", threads, stream_before, stream_after),
        whole_memory,
        args.pairs,
        speedup_whole_memory.map_or(String::new(), |s| format!(", speed-up {s:.2}x (median)"))
    ));
    if args.profile {
        report_ops(&times, threads, report);
    }
    Ok(())
}

/// How many of the pairs' speed-ups `ratios` are marked in `keep`, and their median (none if
/// no pair is).
fn median_where(ratios: &[f64], keep: &[bool]) -> (usize, Option<f64>) {
    let mut kept: Vec<f64> = ratios
        .iter()
        .zip(keep)
        .filter(|(_, &k)| k)
        .map(|(&r, _)| r)
        .collect();
    let n = kept.len();
    (n, (n > 0).then(|| median(&mut kept)))
}

/// `1 thread a / b UNIT, N threads c / d UNIT (c/a x / d/b x one thread)` for a probe's
/// `[one thread, N threads]` rates before and after the pairs.
fn before_after(unit: &str, threads: usize, before: [f64; 2], after: [f64; 2]) -> String {
    format!(
        "1 thread {:.1} / {:.1} {unit}, {threads} threads {:.1} / {:.1} {unit} ({:.2}x / {:.2}x one thread)",
        before[0],
        after[0],
        before[1],
        after[1],
        before[1] / before[0],
        after[1] / after[0]
    )
}

/// Each op's median time per step on each side and the ratio of the medians, largest first;
/// then the op-and-shape entries that lose the most time on N threads against a perfect
/// speed-up (N-thread time minus one-thread time over N).
fn report_ops(times: &[Vec<StepTimes>; 2], threads: usize, report: &Report) {
    let rows = |by: usize| -> Vec<(String, f64, f64)> {
        let mut keys: Vec<&String> = times[0].iter().flat_map(|t| t.1[by].keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        let side_ms = |side: usize, key: &String| {
            let mut v: Vec<f64> = times[side]
                .iter()
                .map(|t| t.1[by].get(key).copied().unwrap_or(0.0) * 1e3)
                .collect();
            median(&mut v)
        };
        keys.into_iter()
            .map(|k| (k.clone(), side_ms(0, k), side_ms(1, k)))
            .collect()
    };
    let mut by_op = rows(0);
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    report.line(
        &[("bench", "unet_scaling_ops".into())],
        &format!(
            "\nby op (medians over the pairs; profiled steps compute every gradient in the backward sweep, none deferred): 1 thread ms, {threads} threads ms, speed-up, ms lost"
        ),
    );
    for row in &by_op {
        report_row("unet_scaling_op", row, threads, report);
    }
    let lost = |r: &(String, f64, f64)| r.2 - r.1 / threads as f64;
    let mut by_shape = rows(1);
    by_shape.sort_by(|a, b| lost(b).total_cmp(&lost(a)));
    report.line(
        &[("bench", "unet_scaling_shapes".into())],
        &format!(
            "\nby op and shapes, the {SHAPE_ROWS} losing the most against a perfect speed-up: 1 thread ms, {threads} threads ms, speed-up, ms lost"
        ),
    );
    for row in by_shape.iter().take(SHAPE_ROWS) {
        report_row("unet_scaling_shape", row, threads, report);
    }
}

/// One line of [`report_ops`]: `(op, one-thread ms, N-thread ms)`, with the time lost on N
/// threads against a perfect speed-up.
fn report_row(bench: &str, (op, one, many): &(String, f64, f64), threads: usize, report: &Report) {
    let speedup = if *many > 0.0 { one / many } else { 0.0 };
    let lost = many - one / threads as f64;
    report.line(
        &[
            ("bench", bench.into()),
            ("op", op.as_str().into()),
            ("threads", threads.into()),
            ("ms_1_thread", (*one).into()),
            ("ms_n_threads", (*many).into()),
            ("speedup", speedup.into()),
            ("ms_lost", lost.into()),
        ],
        &format!("  {op:<28} {one:>8.1} {many:>8.1}   {speedup:.2}x {lost:>6.1}"),
    );
}
