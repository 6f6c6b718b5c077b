//! The element-wise bandwidth benchmark cases, shared by `benches/elementwise.rs` (criterion)
//! and the program's `ddpm bench elementwise`, so both measure the same work.
//!
//! [`elementwise_cases`] builds inputs of `n` elements (use [`BENCH_ELEMENTS`], 16M, for the
//! reported figures: 64 MiB per operand, far beyond the caches) and returns one [`Case`] per
//! operation, each with the bytes it must move per run (bytes read plus bytes written, counting
//! every input and output once). Throughput is `bytes / seconds per run`. The `copy` case is
//! the baseline: `copy_from_slice` into an existing buffer, split into the same fixed chunks
//! and threads as the ops, the memory system's plain read-and-write speed; `clone` also allocates its destination, as every op that returns a new
//! tensor does (the first touch of fresh pages costs the kernel time too). Ops are judged by
//! their ratio to these.
//!
//! ```no_run
//! use std::time::Instant;
//! for mut case in tensor::ops::bandwidth::elementwise_cases(tensor::ops::bandwidth::BENCH_ELEMENTS) {
//!     (case.run)();
//!     let t = Instant::now();
//!     (case.run)();
//!     println!("{:>10} {:6.1} GB/s", case.name, case.gb_per_s(t.elapsed().as_secs_f64()));
//! }
//! ```

use std::hint::black_box;

use rayon::prelude::*;

use super::par::CHUNK;
use crate::Tensor;

/// Elements per operand in the reported benchmark (16M f32 = 64 MiB).
pub const BENCH_ELEMENTS: usize = 1 << 24;

/// One benchmark case: run `run` repeatedly and divide `bytes` by the time per run.
pub struct Case {
    /// A short name (`copy`, `add`, `exp`, ...).
    pub name: &'static str,
    /// What the run computes, in one line.
    pub what: &'static str,
    /// Bytes read plus bytes written by one run.
    pub bytes: usize,
    /// One run of the operation (its result is passed through `black_box` and dropped).
    pub run: Box<dyn FnMut()>,
}

impl Case {
    /// Throughput in GB/s (1e9 bytes) for a run that took `seconds`.
    pub fn gb_per_s(&self, seconds: f64) -> f64 {
        self.bytes as f64 / seconds / 1e9
    }
}

/// Deterministic, NaN-free inputs in about [-4, 4].
fn input(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ salt) as f32 * (8.0 / 4_294_967_296.0) - 4.0)
        .collect()
}

/// The benchmark cases on operands of `n` elements (`n` a multiple of 1024 for the softmax,
/// transpose and per-channel cases' shapes; other sizes round those down).
pub fn elementwise_cases(n: usize) -> Vec<Case> {
    let f = 4; // bytes per f32
    let a = Tensor::from_vec(input(n, 1), &[n]);
    let b = Tensor::from_vec(input(n, 2), &[n]);
    let mut cases: Vec<Case> = Vec::new();
    let mut case = |name, what, bytes, run: Box<dyn FnMut()>| {
        cases.push(Case {
            name,
            what,
            bytes,
            run,
        })
    };

    let src = a.data().to_vec();
    let mut dst = vec![0.0f32; n];
    case(
        "copy",
        "dst.copy_from_slice(src) in parallel 64K-element chunks (as the ops are split), dst allocated once",
        2 * f * n,
        Box::new(move || {
            let src = black_box(&src);
            dst.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&mut dst);
        }),
    );
    let src = a.data().to_vec();
    case(
        "clone",
        "src.clone() (a fresh allocation each run)",
        2 * f * n,
        Box::new(move || drop(black_box(black_box(&src).clone()))),
    );
    let (x, y) = (a.clone(), b.clone());
    case(
        "add",
        "a.add(&b), same shape",
        3 * f * n,
        Box::new(move || drop(black_box(x.add(&y)))),
    );
    let (x, y) = (a.clone(), b.clone());
    case(
        "mul",
        "a.mul(&b), same shape",
        3 * f * n,
        Box::new(move || drop(black_box(x.mul(&y)))),
    );
    let (mut x, y) = (a.clone(), b.clone());
    x.data_mut(); // own the storage, so no copy-on-write inside the runs
    case(
        "add_assign",
        "a += b in place",
        3 * f * n,
        Box::new(move || {
            x.add_assign(&y);
            black_box(&x);
        }),
    );
    let c = 64;
    let hw = (n / 1024).max(1) * 1024 / (16 * c);
    let x = a
        .reshape(&[n])
        .slice(0, 0, 16 * c * hw)
        .reshape(&[16, c, hw]);
    let bias = Tensor::from_vec(input(c, 3), &[1, c, 1]);
    case(
        "add_channel",
        "[16, 64, HW] + [1, 64, 1] (per-channel broadcast)",
        2 * f * x.numel(),
        Box::new(move || drop(black_box(x.add(&bias)))),
    );
    let x = a.clone();
    case(
        "exp",
        "a.exp()",
        2 * f * n,
        Box::new(move || drop(black_box(x.exp()))),
    );
    let x = a.clone();
    case(
        "silu",
        "a.silu()",
        2 * f * n,
        Box::new(move || drop(black_box(x.silu()))),
    );
    let x = a.clone();
    case(
        "sum",
        "a.sum_all()",
        f * n,
        Box::new(move || drop(black_box(x.sum_all()))),
    );
    let x = a.clone();
    case(
        "max",
        "a.max_all()",
        f * n,
        Box::new(move || drop(black_box(x.max_all()))),
    );
    let rows = (n / 1024).max(1);
    let x = a
        .slice(0, 0, rows * 1024.min(n))
        .reshape(&[rows, 1024.min(n)]);
    case(
        "softmax",
        "softmax over rows of 1024",
        2 * f * x.numel(),
        Box::new(move || drop(black_box(x.softmax()))),
    );
    let side = (n as f64).sqrt() as usize;
    let x = a.slice(0, 0, side * side).reshape(&[side, side]);
    case(
        "transpose",
        "a.transpose(0, 1) of a square matrix",
        2 * f * side * side,
        Box::new(move || drop(black_box(x.transpose(0, 1)))),
    );
    cases
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_case_runs_on_small_inputs() {
        let cases = super::elementwise_cases(4096);
        assert!(cases.iter().any(|c| c.name == "copy"));
        for mut case in cases {
            (case.run)();
            assert!(case.bytes > 0, "{}", case.name);
        }
    }
}
