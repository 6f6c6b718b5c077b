//! FMA throughput probe: the machine's peak f32 GFLOP/s, measured in-process.
//!
//! [`measure_peak_gflops`] runs, on each of `threads` threads, a loop of fused multiply-adds
//! with no memory traffic and enough independent dependency chains to keep every FMA pipe busy
//! (chains >= latency x pipes: 4 cycles x 2 pipes of 8 lanes on Zen 3/4 and Haswell-class
//! cores, so 12 chains of ymm or zmm vectors). Each FMA counts 2 flops per lane. It uses the
//! best instruction set the CPU has ([`cpu::detected_isa`]): on Zen 4, 512-bit FMAs are
//! double-pumped through the same two 256-bit pipes, so AVX-512 and AVX2 give the same peak,
//! 32 flops per cycle per core.
//!
//! This is the ceiling every kernel is measured against: what the cores can do *now* (at the
//! clock they run under this load, sharing the machine with whatever else runs), not the
//! data-sheet figure. The chains' results are summed and passed through [`black_box`] so the
//! compiler cannot drop the work.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::kernels::cpu::{self, Isa};

/// How long one measurement runs.
const RUN: Duration = Duration::from_millis(100);
/// Measurements taken; the best is reported.
const REPEATS: usize = 3;
/// FMA steps per chain between two looks at the clock (~10 microseconds).
const STEPS: usize = 2048;
/// Independent accumulator chains.
const CHAINS: usize = 12;

/// Aggregate peak GFLOP/s of `threads` threads (std threads, started together), each running
/// independent FMA chains for a fixed ~0.1 s; the best of 3 runs.
pub fn measure_peak_gflops(threads: usize) -> f64 {
    (0..REPEATS)
        .map(|_| probe_gflops(threads, RUN))
        .fold(0.0, f64::max)
}

/// Aggregate GFLOP/s of `threads` threads started together, each running the FMA chains for
/// `run`: one short look at what the cores deliver at this moment (a benchmark can take it
/// between its own timed runs to see whether the machine was whole, see
/// `ddpm bench unet --scaling`). The rate is the work of all threads over the slowest
/// thread's time.
pub fn probe_gflops(threads: usize, run: Duration) -> f64 {
    let threads = threads.max(1);
    let isa = cpu::detected_isa();
    let barrier = Barrier::new(threads);
    let per_thread: Vec<(f64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    burn(isa, t as f32, run)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let flops: f64 = per_thread.iter().map(|r| r.0).sum();
    let secs = per_thread.iter().map(|r| r.1).max().unwrap().as_secs_f64();
    flops / secs / 1e9
}

/// Peak GFLOP/s of one thread.
pub fn measure_peak_gflops_single() -> f64 {
    measure_peak_gflops(1)
}

/// Runs FMA chains for `run`; returns the flops done and the time taken.
fn burn(isa: Isa, seed: f32, run: Duration) -> (f64, Duration) {
    let start = Instant::now();
    let (mut flops, mut sink) = (0.0f64, 0.0f32);
    loop {
        let (lanes, out) = chains(isa, black_box(seed));
        sink += out;
        flops += (2 * lanes * CHAINS * STEPS) as f64;
        let elapsed = start.elapsed();
        if elapsed >= run {
            black_box(sink);
            return (flops, elapsed);
        }
    }
}

/// One batch of [`STEPS`] FMAs on each of [`CHAINS`] chains; returns the vector width in
/// lanes and a value that depends on every chain.
fn chains(isa: Isa, seed: f32) -> (usize, f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the instruction set `detected_isa` reported.
        Isa::Avx512 => (16, unsafe { x86::chains_avx512(seed) }),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma => (8, unsafe { x86::chains_avx2(seed) }),
        _ => (8, chains_portable(seed)),
    }
}

/// Multiplier and addend of every step: `x <- x * MUL + ADD` stays bounded (near
/// `ADD / (1 - MUL)`), so no chain overflows or turns denormal.
const MUL: f32 = 0.999_9;
const ADD: f32 = 1.0e-3;

/// Portable chains: separate multiply and add on 8-lane arrays (the compiler vectorises
/// them for the baseline target; counted as 2 flops per lane like an FMA).
fn chains_portable(seed: f32) -> f32 {
    let (mul, add) = (black_box(MUL), black_box(ADD));
    let mut acc = [[seed; 8]; CHAINS];
    for _ in 0..STEPS {
        for chain in acc.iter_mut() {
            for x in chain.iter_mut() {
                *x = *x * mul + add;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ADD, CHAINS, MUL, STEPS};
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// [`CHAINS`] zmm chains.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains_avx512(seed: f32) -> f32 {
        let mul = _mm512_set1_ps(black_box(MUL));
        let add = _mm512_set1_ps(black_box(ADD));
        let mut acc = [_mm512_set1_ps(seed); CHAINS];
        for _ in 0..STEPS {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, mul, add);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(sum)
    }

    /// [`CHAINS`] ymm chains.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn chains_avx2(seed: f32) -> f32 {
        let mul = _mm256_set1_ps(black_box(MUL));
        let add = _mm256_set1_ps(black_box(ADD));
        let mut acc = [_mm256_set1_ps(seed); CHAINS];
        for _ in 0..STEPS {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, mul, add);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_probe_reports_a_plausible_rate() {
        let one = measure_peak_gflops_single();
        // Any x86-64 or ARM core of the last decade does more than 1 GFLOP/s.
        assert!(one > 1.0 && one < 1.0e4, "single-thread peak {one} GFLOP/s");
        // A short probe on two threads sees at least one thread's worth of the same work.
        let two = probe_gflops(2, Duration::from_millis(20));
        assert!(
            two > 0.5 * one && two < 4.0 * one,
            "two threads {two} vs one {one} GFLOP/s"
        );
    }
}
