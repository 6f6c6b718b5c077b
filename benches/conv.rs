//! conv2d and group-norm benchmarks, with 1 and 2 threads.
//!
//! `cargo bench --bench conv` prints the machine's FMA peak (1 and 2 threads), then, per pass,
//! the time and (as "elem/s") the GFLOP/s rate, counting `2 * N * C_out * C_in * kh * kw *
//! out_h * out_w` flops per conv pass; their ratio is the fraction of peak. Group norm reports
//! bytes of input per second. `CONV_TABLE=1 cargo bench --bench conv` prints instead one table
//! of the conv passes, with rates by wall time and by busy CPU time (see [`table`]).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use tensor::kernels::conv::{
    conv2d_backward_data, conv2d_backward_weight, conv2d_forward, Conv2dParams,
};
use tensor::kernels::norm::{group_norm_backward, group_norm_forward};
use tensor::kernels::peak::measure_peak_gflops;

fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// (name, params) of the benchmarked convolutions, batch 16.
fn cases() -> Vec<(&'static str, Conv2dParams)> {
    let conv = |c_in, c_out, hw, k, stride, padding| Conv2dParams {
        batch: 16,
        c_in,
        c_out,
        h: hw,
        w: hw,
        kh: k,
        kw: k,
        stride,
        padding,
    };
    vec![
        ("3x3_64-64_32x32", conv(64, 64, 32, 3, 1, 1)),
        ("3x3_128-128_16x16", conv(128, 128, 16, 3, 1, 1)),
        ("1x1_64-128_32x32", conv(64, 128, 32, 1, 1, 0)),
        ("3x3s2_64-64_32x32", conv(64, 64, 32, 3, 2, 1)),
    ]
}

fn bench_conv(c: &mut Criterion) {
    println!(
        "FMA peak: {:.1} GFLOP/s on 1 thread, {:.1} GFLOP/s on 2 threads",
        measure_peak_gflops(1),
        measure_peak_gflops(2)
    );
    for threads in [1, 2] {
        let pool = pool(threads);
        for (name, p) in cases() {
            let size = |s: [usize; 4]| s.iter().product::<usize>();
            let x = data(size(p.input_shape()), 1);
            let w = data(size(p.weight_shape()), 2);
            let b = data(p.c_out, 3);
            let dy = data(size(p.output_shape()), 4);
            let mut y = vec![0.0; dy.len()];
            let mut dx = vec![0.0; x.len()];
            let mut dw = vec![0.0; w.len()];
            let mut db = vec![0.0; p.c_out];
            let mut group = c.benchmark_group(format!("conv2d_{name}"));
            group.throughput(Throughput::Elements(p.flops() as u64));
            group.sample_size(10);
            group.warm_up_time(std::time::Duration::from_millis(500));
            group.measurement_time(std::time::Duration::from_secs(2));
            group.bench_function(BenchmarkId::new("forward", format!("{threads}t")), |bch| {
                bch.iter(|| pool.install(|| conv2d_forward(&p, &x, &w, Some(&b), &mut y)))
            });
            group.bench_function(
                BenchmarkId::new("backward_data", format!("{threads}t")),
                |bch| bch.iter(|| pool.install(|| conv2d_backward_data(&p, &dy, &w, &mut dx))),
            );
            group.bench_function(
                BenchmarkId::new("backward_weight", format!("{threads}t")),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| conv2d_backward_weight(&p, &x, &dy, &mut dw, Some(&mut db)))
                    })
                },
            );
            group.finish();
        }
    }
}

fn bench_group_norm(c: &mut Criterion) {
    let (n, ch, hw, groups) = (16, 64, 32 * 32, 32);
    let x = data(n * ch * hw, 5);
    let dy = data(n * ch * hw, 6);
    let gamma = data(ch, 7);
    let beta = data(ch, 8);
    let mut y = vec![0.0; x.len()];
    let mut dx = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (vec![0.0; n * groups], vec![0.0; n * groups]);
    let (mut dg, mut dbeta) = (vec![0.0; ch], vec![0.0; ch]);
    let mut group = c.benchmark_group("group_norm_16x64x32x32_g32");
    group.throughput(Throughput::Bytes((x.len() * 4) as u64));
    for threads in [1, 2] {
        let pool = pool(threads);
        group.bench_function(BenchmarkId::new("forward", format!("{threads}t")), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    group_norm_forward(
                        &x,
                        n,
                        ch,
                        hw,
                        groups,
                        1e-5,
                        Some(&gamma),
                        Some(&beta),
                        &mut y,
                        &mut mean,
                        &mut rstd,
                    )
                })
            })
        });
        group.bench_function(BenchmarkId::new("backward", format!("{threads}t")), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    group_norm_backward(
                        &x,
                        &dy,
                        n,
                        ch,
                        hw,
                        groups,
                        &mean,
                        &rstd,
                        Some(&gamma),
                        &mut dx,
                        Some(&mut dg),
                        Some(&mut dbeta),
                    )
                })
            })
        });
    }
    group.finish();
}

/// Busy CPU time of this process's live threads, in seconds (Linux `schedstat`, nanosecond
/// resolution), or `None` where it is not available.
fn busy_seconds() -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 * 1e-9)
}

/// Busy CPU time of the calling thread, in seconds (Linux `schedstat`).
fn thread_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(stat.split_whitespace().next()?.parse::<u64>().ok()? as f64 * 1e-9)
}

/// FMA peak by busy CPU time: each thread of `pool` runs 12 independent chains of 8-lane FMAs
/// (no memory traffic) for about 0.2 s; its rate is its flops over the time it was actually
/// scheduled, and the rates are summed. Unlike a wall-clock probe this does not drop when other
/// processes take turns on the cores, so it is the ceiling for the busy-time rates of [`table`].
/// `None` without AVX2+FMA or schedstat.
fn busy_peak_gflops(pool: &rayon::ThreadPool) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains(steps: usize) -> f32 {
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            let mut acc = [_mm256_set1_ps(1.0); 12];
            for _ in 0..steps {
                for r in acc.iter_mut() {
                    *r = _mm256_fmadd_ps(*r, a, b);
                }
            }
            let mut out = [0.0f32; 8];
            let sum = acc
                .iter()
                .fold(_mm256_setzero_ps(), |s, &r| _mm256_add_ps(s, r));
            _mm256_storeu_ps(out.as_mut_ptr(), sum);
            out.iter().sum()
        }
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return None;
        }
        let steps = 20_000_000;
        let rates = pool.broadcast(|_| {
            let t0 = thread_busy_seconds()?;
            // SAFETY: AVX2 and FMA were detected above.
            std::hint::black_box(unsafe { chains(steps) });
            let busy = thread_busy_seconds()? - t0;
            Some((steps * 12 * 16) as f64 / busy * 1e-9)
        });
        rates.into_iter().sum()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = pool;
        None
    }
}

/// A named conv pass, ready to run.
type Pass<'a> = (&'static str, Box<dyn FnMut() + Send + 'a>);

/// `CONV_TABLE=1 cargo bench --bench conv`: one line per (case, pass, threads) with the best
/// wall time of 10 runs, GFLOP/s by wall time (as a fraction of the crate's peak probe run with
/// as many threads) and GFLOP/s by busy CPU time (flops over the mean busy time of the pool's
/// threads, as a fraction of [`busy_peak_gflops`]): the second is what the kernels reach while
/// they run, which a machine shared with other work deflates much less, since time spent
/// descheduled is not counted.
fn table() {
    let peak = [measure_peak_gflops(1), measure_peak_gflops(2)];
    println!(
        "FMA peak probe: {:.1} GFLOP/s (1 thread), {:.1} (2 threads)",
        peak[0], peak[1]
    );
    let busy_peak = [pool(1), pool(2)].map(|p| busy_peak_gflops(&p).unwrap_or(f64::NAN));
    println!(
        "FMA peak by busy time: {:.1} GFLOP/s (1 thread), {:.1} (2 threads)",
        busy_peak[0], busy_peak[1]
    );
    println!(
        "{:<20} {:<16} {:>3} {:>9} {:>9} {:>6} {:>9} {:>6}",
        "case", "pass", "thr", "ms", "GF/s", "peak", "GF/s cpu", "peak"
    );
    for threads in [1, 2] {
        let pool = pool(threads);
        for (name, p) in cases() {
            let size = |s: [usize; 4]| s.iter().product::<usize>();
            let x = data(size(p.input_shape()), 1);
            let w = data(size(p.weight_shape()), 2);
            let b = data(p.c_out, 3);
            let dy = data(size(p.output_shape()), 4);
            let mut y = vec![0.0; dy.len()];
            let mut dx = vec![0.0; x.len()];
            let mut dw = vec![0.0; w.len()];
            let mut db = vec![0.0; p.c_out];
            let mut passes: [Pass<'_>; 3] = [
                (
                    "forward",
                    Box::new(|| conv2d_forward(&p, &x, &w, Some(&b), &mut y)),
                ),
                (
                    "backward_data",
                    Box::new(|| conv2d_backward_data(&p, &dy, &w, &mut dx)),
                ),
                (
                    "backward_weight",
                    Box::new(|| conv2d_backward_weight(&p, &x, &dy, &mut dw, Some(&mut db))),
                ),
            ];
            for (pass, run) in passes.iter_mut() {
                pool.install(&mut **run);
                let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
                for _ in 0..10 {
                    let c0 = busy_seconds();
                    let t0 = std::time::Instant::now();
                    pool.install(&mut **run);
                    wall = wall.min(t0.elapsed().as_secs_f64());
                    if let (Some(c0), Some(c1)) = (c0, busy_seconds()) {
                        cpu = cpu.min((c1 - c0) / threads as f64);
                    }
                }
                let (gf_wall, gf_cpu) = (p.flops() / wall * 1e-9, p.flops() / cpu * 1e-9);
                // Wall rates against the wall-clock probe, busy-time rates against the
                // busy-time probe, each with as many threads.
                println!(
                    "{name:<20} {pass:<16} {threads:>3} {:>9.3} {gf_wall:>9.1} {:>6.2} {gf_cpu:>9.1} {:>6.2}",
                    wall * 1e3,
                    gf_wall / peak[threads - 1],
                    gf_cpu / busy_peak[threads - 1]
                );
            }
        }
    }
}

criterion_group!(benches, bench_conv, bench_group_norm);

fn main() {
    if std::env::var_os("CONV_TABLE").is_some() {
        table();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
