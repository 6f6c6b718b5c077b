use std::time::Instant;
use tensor::ops::attention::{attention, attention_backward};
use tensor::Tensor;
fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let s = [16, 16, 256, 8];
        let (q, k, v, g) = (
            Tensor::randn(&s, 1, 0),
            Tensor::randn(&s, 2, 0),
            Tensor::randn(&s, 3, 0),
            Tensor::randn(&s, 4, 0),
        );
        let (mut f, mut b) = (f64::MAX, f64::MAX);
        for _ in 0..15 {
            let t = Instant::now();
            let (o, lse) = attention(&q, &k, &v, 0.35);
            f = f.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = attention_backward(&q, &k, &v, &o, &lse, &g, 0.35);
            b = b.min(t.elapsed().as_secs_f64());
        }
        println!("min forward {:.2} ms, backward {:.2} ms", f * 1e3, b * 1e3);
    });
}
