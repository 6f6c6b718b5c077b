//! Small procedurally generated data sets for the examples and tests.

use std::f32::consts::PI;

use tensor::rng::Rng;
use tensor::Tensor;

/// The "two moons" set: `n` points in 2-D, half on the upper arc `(cos a, sin a)` and half on
/// the lower arc `(1 - cos a, 0.5 - sin a)` for `a` uniform in `[0, pi]`, plus Gaussian noise of
/// standard deviation `noise`. Returns the points `[n, 2]` and their labels (0 or 1).
pub fn two_moons(n: usize, noise: f32, rng: &mut Rng) -> (Tensor, Vec<usize>) {
    let angles = rng.uniform(&[n]);
    let jitter = rng.normal(&[n, 2]);
    let mut points = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let a = angles.data()[i] * PI;
        let label = i % 2;
        let (x, y) = if label == 0 {
            (a.cos(), a.sin())
        } else {
            (1.0 - a.cos(), 0.5 - a.sin())
        };
        points.push(x + noise * jitter.data()[2 * i]);
        points.push(y + noise * jitter.data()[2 * i + 1]);
        labels.push(label);
    }
    (Tensor::from_vec(points, &[n, 2]), labels)
}

/// The fraction of rows of `logits` `[N, C]` whose largest entry is at the label.
pub fn accuracy(logits: &Tensor, labels: &[usize]) -> f32 {
    let classes = logits.shape()[1];
    let hits = logits
        .data()
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &label)| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
            best == label
        })
        .count();
    hits as f32 / labels.len() as f32
}

/// The names of the ten classes of [`shapes10`].
pub const SHAPE_CLASSES: [&str; 10] = [
    "horizontal bar",
    "vertical bar",
    "diagonal",
    "anti-diagonal",
    "square",
    "filled square",
    "plus",
    "cross",
    "ring",
    "disk",
];

/// A 10-class image set: `n` grey `size x size` images (`[n, 1, size, size]`, background -1,
/// strokes +1, plus Gaussian noise of standard deviation 0.1), each one shape from
/// [`SHAPE_CLASSES`] at a random centre and size. Labels cycle through the classes.
pub fn shapes10(n: usize, size: usize, rng: &mut Rng) -> (Tensor, Vec<usize>) {
    let s = size as f32;
    let geometry = rng.uniform(&[n, 3]);
    let noise = rng.normal(&[n, size * size]);
    let mut pixels = Vec::with_capacity(n * size * size);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = i % 10;
        let g = &geometry.data()[3 * i..3 * i + 3];
        let r = s * (0.2 + 0.12 * g[2]); // half-size
        let cx = r + 1.0 + g[0] * (s - 2.0 * r - 2.0);
        let cy = r + 1.0 + g[1] * (s - 2.0 * r - 2.0);
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let inside = dx.abs() <= r && dy.abs() <= r;
                let dist = (dx * dx + dy * dy).sqrt();
                let on = match label {
                    0 => dy.abs() < 1.0 && dx.abs() <= r,
                    1 => dx.abs() < 1.0 && dy.abs() <= r,
                    2 => (dx - dy).abs() < 1.0 && inside,
                    3 => (dx + dy).abs() < 1.0 && inside,
                    4 => inside && (r - dx.abs() < 1.0 || r - dy.abs() < 1.0),
                    5 => inside,
                    6 => inside && (dx.abs() < 1.0 || dy.abs() < 1.0),
                    7 => inside && ((dx - dy).abs() < 1.0 || (dx + dy).abs() < 1.0),
                    8 => (dist - r).abs() < 0.8,
                    _ => dist <= r,
                };
                let base = if on { 1.0 } else { -1.0 };
                pixels.push(base + 0.1 * noise.data()[i * size * size + y * size + x]);
            }
        }
        labels.push(label);
    }
    (Tensor::from_vec(pixels, &[n, 1, size, size]), labels)
}
