//! GEMM: `C = alpha * op(A) * op(B) + beta * C`, with op = identity or transpose.
//!
//! PLACEHOLDER: a naive implementation with the final API, to be replaced by the packed,
//! blocked driver and micro-kernels.

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// op(X) = X.
    No,
    /// op(X) = X^T.
    Yes,
}

/// `C = alpha * op(A) * op(B) + beta * C` for row-major matrices.
///
/// op(A) is `m x k`: stored `m x k` with row stride `lda` when `transa` is [`Trans::No`], or
/// stored `k x m` with row stride `lda` when it is [`Trans::Yes`]. Likewise op(B) is `k x n`.
/// C is `m x n` with row stride `ldc`. When `beta == 0` C is not read (NaNs in C do not leak).
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
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                let av = match transa {
                    Trans::No => a[i * lda + p],
                    Trans::Yes => a[p * lda + i],
                };
                let bv = match transb {
                    Trans::No => b[p * ldb + j],
                    Trans::Yes => b[j * ldb + p],
                };
                acc += av * bv;
            }
            let out = &mut c[i * ldc + j];
            *out = if beta == 0.0 {
                alpha * acc
            } else {
                alpha * acc + beta * *out
            };
        }
    }
}

/// A batch of independent GEMMs: for `i in 0..batch`, the matrices start at `i * stride_a`,
/// `i * stride_b` and `i * stride_c` of `a`, `b` and `c` (a stride of 0 shares one operand
/// across the batch). Otherwise as [`sgemm`].
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
    for i in 0..batch {
        sgemm(
            transa,
            transb,
            m,
            n,
            k,
            alpha,
            &a[i * stride_a..],
            lda,
            &b[i * stride_b..],
            ldb,
            beta,
            &mut c[i * stride_c..],
            ldc,
        );
    }
}
