//! GEMM benchmarks: `cargo bench --bench gemm`.
//!
//! Throughput is reported in elements per second where one element is one flop, so criterion's
//! "Kelem/s" read as kFLOP/s. The FMA peak of the same thread count is printed before each
//! group, so every figure can be read as a fraction of it. Each case runs on a rayon pool of 1
//! and of 2 threads.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tensor::kernels::gemm::{sgemm, Trans};
use tensor::kernels::peak::measure_peak_gflops;

/// (label, transa, transb, m, n, k)
fn cases() -> Vec<(String, Trans, Trans, usize, usize, usize)> {
    let mut v = Vec::new();
    for (ta, tb) in [
        (Trans::No, Trans::No),
        (Trans::No, Trans::Yes),
        (Trans::Yes, Trans::No),
        (Trans::Yes, Trans::Yes),
    ] {
        v.push((format!("1024^3 {ta:?}{tb:?}"), ta, tb, 1024, 1024, 1024));
    }
    // Shapes of convolution layers through im2col: (out channels, pixels, in channels x 9) and
    // the two backward products.
    for (m, n, k) in [(64, 1024, 576), (576, 1024, 64), (64, 576, 1024)] {
        v.push((format!("{m}x{n}x{k}"), Trans::No, Trans::No, m, n, k));
    }
    for s in [128, 256, 512] {
        v.push((format!("{s}^3"), Trans::No, Trans::No, s, s, s));
    }
    v
}

fn bench_gemm(c: &mut Criterion) {
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        println!(
            "FMA peak, {threads} thread(s): {:.1} GFLOP/s",
            measure_peak_gflops(threads)
        );
        let mut group = c.benchmark_group(format!("sgemm/{threads}t"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (label, ta, tb, m, n, k) in cases() {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
            let mut out = vec![0.0f32; m * n];
            let lda = if ta == Trans::No { k } else { m };
            let ldb = if tb == Trans::No { n } else { k };
            group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            group.bench_function(BenchmarkId::from_parameter(label), |bench| {
                bench.iter(|| {
                    pool.install(|| {
                        sgemm(ta, tb, m, n, k, 1.0, &a, lda, &b, ldb, 0.0, &mut out, n)
                    });
                    black_box(&out);
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
