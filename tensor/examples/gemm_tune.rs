//! GEMM throughput as a fraction of the measured FMA peak, for tuning and for reports.
//!
//! `cargo run --release -p tensor --example gemm_tune [-- THREADS...] [--isa avx2|avx512|portable] [--quick] [--wait-idle]`
//!
//! For each thread count and each shape and transpose combination: the median GFLOP/s of
//! several timed runs, and its fraction of the FMA peak of that many threads, measured just
//! before and just after the case (the mean of the two). `--wait-idle` first waits (up to a
//! minute per thread count) for the machine to be idle. With `GEMM_CPU_TIME=1` in the
//! environment, GEMMs are timed by process CPU time over the thread count instead of wall
//! time: on a machine shared with other jobs this shows what the code does when it has the
//! cores (the peak stays wall-clock, so read the GFLOP/s against an idle peak, not the
//! fraction column).

use std::time::Instant;

use tensor::kernels::cpu::{self, Isa};
use tensor::kernels::gemm::{sgemm_with_isa, Trans};
use tensor::kernels::peak::measure_peak_gflops;

/// CPU time of this process, in ns (Linux x86-64). With `GEMM_CPU_TIME` set, runs are timed
/// by it divided by the thread count, which hides time slices lost to other processes on a
/// shared machine (but counts threads waiting at a barrier as busy).
fn process_cpu_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid timespec for the C library to fill.
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.sec as u64 * 1_000_000_000 + t.nsec as u64
}

/// Waits (up to a minute) until the machine's CPUs have been at most 10% busy for 0.3 s, so
/// that other processes on a shared machine disturb the measurement less.
fn wait_idle() {
    let busy = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4)?;
        Some((v.iter().sum::<u64>() - idle, v.iter().sum()))
    };
    let start = Instant::now();
    while start.elapsed().as_secs() < 60 {
        let Some((b0, t0)) = busy() else { return };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let Some((b1, t1)) = busy() else { return };
        if (b1 - b0) * 10 <= (t1 - t0) {
            return;
        }
    }
    println!("(machine still busy after 60 s)");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median and best GFLOP/s of `sgemm` on an m x n x k product.
fn time(isa: Isa, ta: Trans, tb: Trans, m: usize, n: usize, k: usize) -> (f64, f64) {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let lda = if ta == Trans::No { k } else { m };
    let ldb = if tb == Trans::No { n } else { k };
    let flops = 2.0 * (m * n * k) as f64;
    // Enough repetitions for ~0.3 s, at least 5.
    let cpu_clock = std::env::var("GEMM_CPU_TIME").is_ok();
    let mut run = || {
        let (t, c0) = (Instant::now(), process_cpu_ns());
        sgemm_with_isa(isa, ta, tb, m, n, k, 1.0, &a, lda, &b, ldb, 0.0, &mut c, n);
        if cpu_clock {
            (process_cpu_ns() - c0) as f64 * 1e-9 / rayon::current_num_threads() as f64
        } else {
            t.elapsed().as_secs_f64()
        }
    };
    let first = run().max(run());
    let reps = ((0.3 / first) as usize).clamp(5, 500);
    let rates: Vec<f64> = (0..reps).map(|_| flops / run() / 1e9).collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    (median(rates), best)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if threads.is_empty() {
        threads = vec![1, 2];
    }
    let isa = match args.iter().position(|a| a == "--isa") {
        Some(i) => match args[i + 1].as_str() {
            "avx2" => Isa::Avx2Fma,
            "avx512" => Isa::Avx512,
            _ => Isa::Portable,
        },
        None => cpu::detected_isa(),
    };
    let quick = args.iter().any(|a| a == "--quick");
    let wait = args.iter().any(|a| a == "--wait-idle");
    let t = [Trans::No, Trans::Yes];
    let mut cases: Vec<(Trans, Trans, usize, usize, usize)> = Vec::new();
    for &ta in &t {
        for &tb in &t {
            cases.push((ta, tb, 1024, 1024, 1024));
        }
    }
    for (m, n, k) in [(64, 1024, 576), (576, 1024, 64), (64, 576, 1024)] {
        cases.push((Trans::No, Trans::No, m, n, k));
    }
    if !quick {
        for (m, n, k) in [
            (128, 128, 128),
            (256, 256, 256),
            (512, 512, 512),
            (128, 4096, 128),
            (1000, 1000, 1000),
            (2048, 2048, 2048),
        ] {
            cases.push((Trans::No, Trans::No, m, n, k));
        }
        for (m, n, k) in [(64, 1024, 576), (576, 1024, 64), (64, 576, 1024)] {
            cases.push((Trans::No, Trans::Yes, m, n, k));
            cases.push((Trans::Yes, Trans::No, m, n, k));
        }
    }
    println!("kernel isa: {}", isa.name());
    for &th in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(th)
            .build()
            .unwrap();
        if wait {
            wait_idle();
        }
        // The peak is measured before the first case and after every case; each case is
        // read against the mean of the measurements on either side of it.
        println!("threads {th}:  case  median GFLOP/s  peak GFLOP/s  fraction  (best GFLOP/s)");
        let mut peak_before = measure_peak_gflops(th);
        for &(ta, tb, m, n, k) in &cases {
            let (g, best) = pool.install(|| time(isa, ta, tb, m, n, k));
            let peak_after = measure_peak_gflops(th);
            let peak = 0.5 * (peak_before + peak_after);
            println!(
                "  {:28} {g:7.1}  {peak:7.1}  {:.3}  ({best:6.1})",
                format!("{m}x{n}x{k} {ta:?}{tb:?}"),
                g / peak
            );
            peak_before = peak_after;
        }
    }
}
