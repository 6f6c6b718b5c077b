//! Times the fused attention kernels on the `bench` UNet's attention shape (batch 16, 16 heads,
//! 256 positions, 8 channels per head) on one thread: the median and the minimum of 15 runs of
//! the forward and of the backward pass.
//!
//! ```text
//! cargo run --release -p tensor --example attention_timing
//! ```

use std::time::Instant;

use tensor::ops::attention::{attention, attention_backward};
use tensor::Tensor;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one worker thread");
    pool.install(|| {
        let shape = [16, 16, 256, 8];
        let q = Tensor::randn(&shape, 1, 0);
        let k = Tensor::randn(&shape, 2, 0);
        let v = Tensor::randn(&shape, 3, 0);
        let g = Tensor::randn(&shape, 4, 0);
        let scale = 1.0 / 8f32.sqrt();
        let (mut forward, mut backward) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let t = Instant::now();
            let (o, lse) = attention(&q, &k, &v, scale);
            forward.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let _ = attention_backward(&q, &k, &v, &o, &lse, &g, scale);
            backward.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (fmin, bmin) = (min(&forward), min(&backward));
        println!(
            "attention {shape:?}, 1 thread: forward median {:.2} ms (min {fmin:.2}), backward median {:.2} ms (min {bmin:.2})",
            median(&mut forward),
            median(&mut backward)
        );
    });
}
