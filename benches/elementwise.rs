//! Element-wise ops and reductions on 16M f32 elements against a plain copy.
//!
//! The cases come from `tensor::ops::bandwidth::elementwise_cases`, shared with
//! `ddpm bench elementwise`. Criterion reports each case's throughput (bytes read + written);
//! afterwards a summary prints GB/s (1e9 bytes) from the median of 15 runs per case and the
//! ratio to the `copy` and `clone` baselines measured in the same process, first with the
//! default allocator, then again after `tensor::ops::alloc::retain_freed_memory()` (which lets
//! each run reuse the pages the previous run freed, as a program that calls it at start-up does).
//!
//! Run: `cargo bench --bench elementwise` (add `-- --quick` or a filter such as `-- exp`).

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tensor::ops::bandwidth::{elementwise_cases, BENCH_ELEMENTS};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise_16M");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(2));
    group.warm_up_time(std::time::Duration::from_millis(500));
    for mut case in elementwise_cases(BENCH_ELEMENTS) {
        group.throughput(Throughput::Bytes(case.bytes as u64));
        group.bench_function(case.name, |b| b.iter(&mut case.run));
    }
    group.finish();
}

/// Median seconds per run of each case, then GB/s and ratios to the baselines.
fn summary(label: &str) {
    let mut rows = Vec::new();
    for mut case in elementwise_cases(BENCH_ELEMENTS) {
        (case.run)();
        let mut times: Vec<f64> = (0..15)
            .map(|_| {
                let t = Instant::now();
                (case.run)();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rows.push((case.name, case.what, case.gb_per_s(times[times.len() / 2])));
    }
    let base = |name: &str| rows.iter().find(|r| r.0 == name).map_or(f64::NAN, |r| r.2);
    let (copy, clone) = (base("copy"), base("clone"));
    println!(
        "\nelementwise, {BENCH_ELEMENTS} elements, {} threads, {label}",
        rayon::current_num_threads()
    );
    println!(
        "{:<12} {:>8} {:>8} {:>8}  what",
        "case", "GB/s", "/copy", "/clone"
    );
    for (name, what, gbps) in rows {
        println!(
            "{name:<12} {gbps:>8.2} {:>8.2} {:>8.2}  {what}",
            gbps / copy,
            gbps / clone
        );
    }
}

fn summary_bench(_: &mut Criterion) {
    summary("default allocator");
    let applied = tensor::ops::alloc::retain_freed_memory();
    summary(if applied {
        "after retain_freed_memory()"
    } else {
        "retain_freed_memory() not available"
    });
}

criterion_group!(benches, bench, summary_bench);
criterion_main!(benches);
