//! The AVX-512F micro-kernel: an `MR x 32` tile of C in `2 MR` zmm accumulators.
//!
//! Per step along K: two loads of B (32 floats), `MR` broadcasts of A, `2 MR` FMAs. On Zen 4 a
//! 512-bit FMA occupies both 256-bit FMA pipes, so the peak is the same as with AVX2, but each
//! instruction does twice the work: fewer instructions and loads per flop. With `MR = 8` the 16
//! accumulators cover the 4-cycle FMA latency four times over, and edge tiles use masked loads
//! and stores instead of a buffer.

use std::arch::x86_64::*;

const NR: usize = 32;

/// The AVX-512F 8 x 32 micro-kernel; contract in [`super::MicroKernel`].
///
/// # Safety
/// As for [`super::MicroKernel`]; the CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_avx512_8x32(
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
    // SAFETY: forwarded contract.
    unsafe { tile::<8>(kc, alpha, a, b, beta, c, ldc, m, n) }
}

/// The `MR x 32` kernel body. Generic so that the tile height is one number to change: on Zen 4,
/// 8 measured a little faster than 12 or 14 (which need fewer B loads per FMA but more L1
/// for A) and divides the common channel counts.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize>(
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
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // SAFETY: the caller guarantees `kc` groups of MR (A) and NR (B) packed values.
        unsafe {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    // Column masks of the two vectors of a row: all ones for a full tile.
    let cols = n.min(NR) as u32;
    let m0: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        (1u16 << cols) - 1
    };
    let m1: __mmask16 = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        (1u16 << (cols - 16)) - 1
    } else {
        0
    };
    for (i, row) in acc.iter().enumerate().take(m) {
        // SAFETY: masked lanes and rows below `m` stay inside the m x n tile of C.
        unsafe {
            let p = c.add(i * ldc);
            let x0 = _mm512_mul_ps(va, row[0]);
            let x1 = _mm512_mul_ps(va, row[1]);
            if m0 == 0xffff && m1 == 0xffff {
                if beta == 0.0 {
                    _mm512_storeu_ps(p, x0);
                    _mm512_storeu_ps(p.add(16), x1);
                } else {
                    _mm512_storeu_ps(p, _mm512_fmadd_ps(vb, _mm512_loadu_ps(p), x0));
                    _mm512_storeu_ps(
                        p.add(16),
                        _mm512_fmadd_ps(vb, _mm512_loadu_ps(p.add(16)), x1),
                    );
                }
            } else {
                // The second vector may lie wholly past the tile (mask 0): never dereferenced.
                let q = p.wrapping_add(16);
                if beta == 0.0 {
                    _mm512_mask_storeu_ps(p, m0, x0);
                    _mm512_mask_storeu_ps(q, m1, x1);
                } else {
                    let c0 = _mm512_maskz_loadu_ps(m0, p);
                    let c1 = _mm512_maskz_loadu_ps(m1, q);
                    _mm512_mask_storeu_ps(p, m0, _mm512_fmadd_ps(vb, c0, x0));
                    _mm512_mask_storeu_ps(q, m1, _mm512_fmadd_ps(vb, c1, x1));
                }
            }
        }
    }
}
