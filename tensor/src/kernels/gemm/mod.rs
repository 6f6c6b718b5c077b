//! GEMM: `C = alpha * op(A) * op(B) + beta * C`, with op = identity or transpose.
//!
//! The structure is GotoBLAS/BLIS, one idea per file:
//!
//! - this file: the public API, the argument checks and the micro-kernel contract
//!   (`MicroKernel`, documented in the source);
//! - `driver.rs`: the blocked loops around the micro-kernel, and the threading;
//! - `pack.rs`: copying panels of A and B (for both transpose flags) into the order the
//!   micro-kernel reads, zero-padded to full tiles;
//! - `blocking.rs`: the block sizes and the micro-kernel for each instruction set;
//! - `avx512.rs`, `avx2.rs`, `portable.rs`: the micro-kernels (`gemm_avx512_8x32`,
//!   `gemm_avx2_6x16`, `gemm_portable_4x8`).
//!
//! The instruction set is chosen at run time ([`crate::kernels::cpu::isa`]). Threads come from
//! the current rayon pool (choose their number with `ThreadPool::install`); they split the
//! blocks of C, never K, so results are bitwise identical for any number of threads.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocking;
mod driver;
mod pack;
mod portable;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

use crate::kernels::cpu::{self, Isa};
use driver::Operands;

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// op(X) = X.
    No,
    /// op(X) = X^T.
    Yes,
}

/// The micro-kernel contract: `C = alpha * A~ * B~ + beta * C` on one `MR x NR` tile.
///
/// Arguments, in order: `kc`, `alpha`, `a`, `b`, `beta`, `c`, `ldc`, `m`, `n`.
///
/// - `a` points to a packed micro-panel of A: `kc` groups of `MR` floats, group `p` holding
///   column `p` of the tile's rows of A (`a[p * MR + i] = A~[i][p]`). Rows past the edge of
///   the matrix are zeros.
/// - `b` points to a packed micro-panel of B: `kc` groups of `NR` floats
///   (`b[p * NR + j] = B~[p][j]`), zero-padded the same way.
/// - `c` points to the tile's top-left element of C, whose rows are `ldc` floats apart. The
///   kernel touches only the `m x n` corner (`1 <= m <= MR`, `1 <= n <= NR`): a full tile is
///   written with vector stores, a partial one through masked stores or a buffer, never
///   outside the corner. The same arithmetic runs for full and partial tiles.
/// - When `beta == 0` the kernel never reads C (so NaN or uninitialised values do not leak);
///   otherwise each element becomes `alpha * acc + beta * c`.
/// - The sum over `p` runs in order 0, 1, ..., `kc - 1` for every element.
///
/// # Safety
/// `a` and `b` must be valid for `kc * MR` and `kc * NR` reads, the `m x n` corner at `c`
/// valid for reads and writes, and the CPU must support the kernel's instruction set.
pub(crate) type MicroKernel = unsafe fn(
    kc: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    m: usize,
    n: usize,
);

/// `C = alpha * op(A) * op(B) + beta * C` for row-major matrices.
///
/// op(A) is `m x k`: stored `m x k` with row stride `lda` when `transa` is [`Trans::No`], or
/// stored `k x m` with row stride `lda` when it is [`Trans::Yes`]. Likewise op(B) is `k x n`.
/// C is `m x n` with row stride `ldc`. When `beta == 0` C is not read (NaNs in C do not leak).
///
/// Runs on the current rayon pool when the product is large enough; the result is bitwise the
/// same for any number of threads.
///
/// ```
/// use tensor::kernels::gemm::{sgemm, Trans};
/// // C (2 x 2) += A (2 x 3) * B^T, with B stored 2 x 3.
/// let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let b = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
/// let mut c = [10.0, 10.0, 10.0, 10.0];
/// sgemm(Trans::No, Trans::Yes, 2, 2, 3, 1.0, &a, 3, &b, 3, 1.0, &mut c, 2);
/// assert_eq!(c, [14.0, 12.0, 20.0, 15.0]);
/// ```
///
/// # Panics
/// If a leading dimension is smaller than its row width, or a slice is too short.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    transa: Trans,
    transb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    sgemm_with_isa(
        cpu::isa(),
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
    );
}

/// [`sgemm`] with an explicit instruction set, for tests and benchmarks that compare kernels
/// (`sgemm` itself uses [`cpu::isa`]).
///
/// # Panics
/// As [`sgemm`], and if the CPU does not support `isa`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with_isa(
    isa: Isa,
    transa: Trans,
    transb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        isa <= cpu::detected_isa(),
        "sgemm: this CPU has no {} kernels",
        isa.name()
    );
    let op = Operands {
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
    };
    check(&op, c, ldc);
    driver::gemm(&blocking::config(isa), &op, c, ldc, true);
}

/// A batch of independent GEMMs: for `i in 0..batch`, the matrices start at `i * stride_a`,
/// `i * stride_b` and `i * stride_c` of `a`, `b` and `c` (a stride of 0 shares one operand
/// across the batch). Otherwise as [`sgemm`].
///
/// Many small products run in parallel over the batch (when the C matrices do not overlap);
/// large ones run one after the other, each parallel inside. Either way each product is
/// computed exactly as [`sgemm`] would, so results do not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_batched(
    batch: usize,
    transa: Trans,
    transb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    stride_a: usize,
    b: &[f32],
    ldb: usize,
    stride_b: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    stride_c: usize,
) {
    sgemm_batched_threads(
        true, batch, transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c,
        ldc, stride_c,
    );
}

/// [`sgemm_batched`], using the rayon pool only if `threads` (callers that already run in
/// parallel at a coarser grain pass `false`); the results are the same bits either way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_batched_threads(
    threads: bool,
    batch: usize,
    transa: Trans,
    transb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    stride_a: usize,
    b: &[f32],
    ldb: usize,
    stride_b: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    stride_c: usize,
) {
    if batch == 0 || m == 0 || n == 0 {
        return;
    }
    let cfg = blocking::config(cpu::isa());
    let operands = |i: usize| Operands {
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        a: a.get(i * stride_a..).unwrap_or(&[]),
        lda,
        b: b.get(i * stride_b..).unwrap_or(&[]),
        ldb,
        beta,
    };
    let c_extent = (m - 1) * ldc + n;
    let pool = rayon::current_num_threads();
    let small = m.saturating_mul(n).saturating_mul(k) < driver::PARALLEL_MIN_MNK;
    let over_batch =
        threads && batch > 1 && pool > 1 && stride_c >= c_extent && (small || batch >= 2 * pool);
    if over_batch {
        assert!(
            c.len() >= (batch - 1) * stride_c + c_extent,
            "sgemm_batched: C has {} elements, need {}",
            c.len(),
            (batch - 1) * stride_c + c_extent
        );
        c.par_chunks_mut(stride_c)
            .take(batch)
            .enumerate()
            .for_each(|(i, ci)| {
                let op = operands(i);
                check(&op, ci, ldc);
                driver::gemm(&cfg, &op, ci, ldc, false);
            });
    } else {
        for i in 0..batch {
            let op = operands(i);
            let ci = c.get_mut(i * stride_c..).unwrap_or(&mut []);
            check(&op, ci, ldc);
            driver::gemm(&cfg, &op, ci, ldc, threads);
        }
    }
}

/// Panics unless every matrix the product touches lies inside its slice.
fn check(op: &Operands, c: &[f32], ldc: usize) {
    let (m, n, k) = (op.m, op.n, op.k);
    if m == 0 || n == 0 {
        return;
    }
    fit("C", c, m, n, ldc);
    if k == 0 || op.alpha == 0.0 {
        return;
    }
    match op.transa {
        Trans::No => fit("A", op.a, m, k, op.lda),
        Trans::Yes => fit("A", op.a, k, m, op.lda),
    }
    match op.transb {
        Trans::No => fit("B", op.b, k, n, op.ldb),
        Trans::Yes => fit("B", op.b, n, k, op.ldb),
    }
}

/// Panics unless a stored `rows x cols` matrix with row stride `ld` fits in `x`.
fn fit(name: &str, x: &[f32], rows: usize, cols: usize, ld: usize) {
    assert!(
        ld >= cols,
        "sgemm: {name} is stored {rows} x {cols} but its leading dimension is {ld}"
    );
    let need = (rows - 1) * ld + cols;
    assert!(
        x.len() >= need,
        "sgemm: {name} is stored {rows} x {cols} with leading dimension {ld}, which needs {need} \
         elements, but the slice has {}",
        x.len()
    );
}
