//! A 2-128-128-2 MLP learns the two-moons set with AdamW, then reports its held-out accuracy
//! and the time per training step.
//!
//! Run with `cargo run --release -p autograd --example mlp`.

mod common;

use std::time::Instant;

use autograd::toy_data::{accuracy, two_moons};
use common::MoonsMlp;
use tensor::rng::Rng;

fn main() {
    let mut mlp = MoonsMlp::new(0);
    let steps = 1000;
    let start = Instant::now();
    for step in 0..steps {
        let loss = mlp.step(1e-2);
        if step % 200 == 0 || step == steps - 1 {
            println!("step {step:>4}  loss {loss:.4}");
        }
    }
    let per_step = start.elapsed().as_secs_f64() / steps as f64;
    let (test_points, test_labels) = two_moons(1000, 0.1, &mut Rng::new(99, 0));
    let acc = accuracy(&mlp.predict(&test_points), &test_labels);
    println!("held-out accuracy: {:.1}%", acc * 100.0);
    println!(
        "time per training step (batch 32, forward + backward + AdamW): {:.1} us",
        per_step * 1e6
    );
}
