//! A process-wide count of the multiply-add work done by convolutions and matrix products,
//! for benchmarks that report effective GFLOP/s: each conv2d forward adds
//! `2 N C_out C_in kh kw OH OW` and each matrix product `2 m n k` per batch entry.
//! Counting is one relaxed atomic add per op.

use std::sync::atomic::{AtomicU64, Ordering};

static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Adds `flops` to the count.
pub(crate) fn add(flops: u64) {
    FLOPS.fetch_add(flops, Ordering::Relaxed);
}

/// The count so far.
pub fn count() -> u64 {
    FLOPS.load(Ordering::Relaxed)
}

/// Sets the count to zero.
pub fn reset() {
    FLOPS.store(0, Ordering::Relaxed);
}
