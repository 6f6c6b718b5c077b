//! The AVX2 + FMA micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators.
//!
//! Per step along K: two loads of B (16 floats), six broadcasts of A, twelve FMAs. Twelve
//! independent accumulators cover the FMA latency (4 cycles) times the two FMA pipes of Zen 3/4
//! and Haswell-class cores, leaving 4 of the 16 ymm registers for B and the broadcasts.

use std::arch::x86_64::*;

const MR: usize = 6;
const NR: usize = 16;

/// The AVX2 + FMA 6 x 16 micro-kernel; contract in [`super::MicroKernel`]. Partial tiles are
/// computed in full (the packed panels are zero-padded) and merged into C through a small
/// buffer on the stack.
///
/// # Safety
/// As for [`super::MicroKernel`]; the CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_avx2_6x16(
    kc: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    m: usize,
    n: usize,
) {
    // Ask for the tile of C now, so that it is in L1 when the sums are done.
    for i in 0..m {
        let row = c.wrapping_add(i * ldc);
        _mm_prefetch::<_MM_HINT_T0>(row.cast());
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(n.min(NR) - 1).cast());
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // SAFETY: the caller guarantees `kc` groups of MR (A) and NR (B) packed values.
        unsafe {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    let va = _mm256_set1_ps(alpha);
    let vb = _mm256_set1_ps(beta);
    if m == MR && n == NR {
        for (i, row) in acc.iter().enumerate() {
            for (h, &x) in row.iter().enumerate() {
                // SAFETY: the full tile is inside C.
                unsafe {
                    let p = c.add(i * ldc + 8 * h);
                    let r = if beta == 0.0 {
                        _mm256_mul_ps(va, x)
                    } else {
                        _mm256_fmadd_ps(vb, _mm256_loadu_ps(p), _mm256_mul_ps(va, x))
                    };
                    _mm256_storeu_ps(p, r);
                }
            }
        }
    } else {
        let mut buf = [[0.0f32; NR]; MR];
        for (row, out) in acc.iter().zip(buf.iter_mut()) {
            // SAFETY: each buffer row holds exactly two vectors.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(va, row[0]));
                _mm256_storeu_ps(out.as_mut_ptr().add(8), _mm256_mul_ps(va, row[1]));
            }
        }
        for (i, row) in buf.iter().enumerate().take(m) {
            for (j, &x) in row.iter().enumerate().take(n) {
                // SAFETY: (i, j) is inside the m x n tile the caller owns.
                let out = unsafe { &mut *c.add(i * ldc + j) };
                *out = if beta == 0.0 {
                    x
                } else {
                    beta.mul_add(*out, x)
                };
            }
        }
    }
}
