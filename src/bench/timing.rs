//! Timing: warm up, repeat, take the median; and the FMA peak that figures are compared with.

use std::time::{Duration, Instant};

use super::Report;

/// Repetitions at least, and the least total time, for one measurement.
const MIN_REPS: usize = 5;
const MIN_TOTAL: Duration = Duration::from_millis(600);
const MAX_REPS: usize = 200;

/// The least time of one side's turn in [`paired_seconds`].
const TURN: Duration = Duration::from_millis(40);

/// Runs `f` once to warm caches and pages, then repeatedly (at least [`MIN_REPS`] times and
/// for at least [`MIN_TOTAL`]), and returns the median seconds per run.
pub fn median_seconds(mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < MIN_REPS || (start.elapsed() < MIN_TOTAL && samples.len() < MAX_REPS) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    median(&mut samples)
}

/// Seconds per run of `f` on one thread and on the current pool, in pairs of turns taken in
/// ABBA order (so that a drift in the machine's load weighs on both sides alike), each turn the
/// median of runs over [`TURN`]: at least [`MIN_REPS`] pairs, over at least four times
/// [`MIN_TOTAL`]. Returns the two sides' times, pair by pair.
pub fn paired_seconds(one: &rayon::ThreadPool, mut f: impl FnMut() + Send) -> (Vec<f64>, Vec<f64>) {
    // A turn runs `f` for at least TURN (the first run untimed: the side's threads have slept
    // or spun down while the other side ran) and gives the median of its timed runs.
    let mut run_on = |single: bool| -> f64 {
        let mut turn = || {
            f();
            let mut samples = Vec::new();
            let start = Instant::now();
            while samples.len() < 3 || start.elapsed() < TURN {
                let t = Instant::now();
                f();
                samples.push(t.elapsed().as_secs_f64());
            }
            median(&mut samples)
        };
        if single {
            one.install(turn)
        } else {
            turn()
        }
    };
    let (mut ones, mut manys) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while ones.len() < MIN_REPS || (start.elapsed() < 4 * MIN_TOTAL && ones.len() < MAX_REPS) {
        let order = if ones.len() % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for single in order {
            let seconds = run_on(single);
            if single {
                ones.push(seconds);
            } else {
                manys.push(seconds);
            }
        }
    }
    (ones, manys)
}

/// The least and the greatest of the samples (`(inf, 0)` for none).
pub fn range(samples: &[f64]) -> (f64, f64) {
    samples
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        })
}

/// The median of the samples (the mean of the middle two for an even count).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        0.5 * (samples[n / 2 - 1] + samples[n / 2])
    }
}

/// Measures the FMA peak with `threads` threads, reports it, and returns it in GFLOP/s.
pub fn peak(threads: usize, report: &Report) -> f64 {
    let gflops = tensor::kernels::peak::measure_peak_gflops(threads);
    report.line(
        &[
            ("bench", "peak".into()),
            ("threads", threads.into()),
            ("isa", isa_name().into()),
            ("peak_gflops", gflops.into()),
        ],
        &format!(
            "FMA peak ({threads} threads, {}): {gflops:.1} GFLOP/s",
            isa_name()
        ),
    );
    gflops
}

/// The instruction set the kernels use on this CPU.
pub fn isa_name() -> &'static str {
    tensor::kernels::cpu::isa().name()
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
