//! The AVX-512F micro-kernel of the direct-packed convolution ([`super::direct`]).
//!
//! It computes one `8 x 32` tile of `C = A * B` over a reduction of length `k`, from an A
//! micro-panel packed `[k][8]` (8 rows of A side by side) and a B micro-panel packed `[k][32]`
//! (32 columns of B side by side): 16 zmm accumulators; per reduction step two loads of B,
//! eight broadcasts of A and sixteen FMAs. On Zen 4 a 512-bit FMA occupies both 256-bit pipes,
//! so one FMA per cycle is the peak and sixteen independent accumulators hide the latency.
//!
//! The tile starts at `bias[r]` in row `r` (or zero), optionally adds the `C` already in memory
//! (`accumulate`), and is stored for the first `rows` rows and `cols` columns only (masked
//! loads and stores, so edge tiles need no buffer and nothing outside them is touched).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the tile.
pub(crate) const MR: usize = 8;
/// Columns of the tile.
pub(crate) const NR: usize = 32;

/// `C[r, j] (+)= bias[r] + sum_{p < k} A[p][r] * B[p][j]` for `r < rows`, `j < cols`.
///
/// # Safety
/// The CPU must support AVX-512F; `a` must hold `k * MR` floats and `b` `k * NR`; `c` must be
/// valid for reads (when `accumulate`) and writes of `rows` rows of `cols` floats with row
/// stride `ldc`; `rows <= MR`, `cols <= NR`; `bias`, if any, must hold `rows` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv_avx512_8x32(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if let Some(bias) = bias {
        for (row, &v) in acc.iter_mut().zip(&bias[..rows]) {
            let v = _mm512_set1_ps(v);
            *row = [v, v];
        }
    }
    let (mut a, mut b) = (a, b);
    for _ in 0..k {
        // SAFETY: the caller guarantees k steps of MR values of A and NR values of B.
        unsafe {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (r, row) in acc.iter_mut().enumerate() {
                let ar = _mm512_set1_ps(*a.add(r));
                row[0] = _mm512_fmadd_ps(ar, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ar, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    let mask = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    for (r, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: row r < rows of C; the masks limit the columns to cols.
        unsafe {
            let p = c.add(r * ldc);
            let (mut v0, mut v1) = (row[0], row[1]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p.add(16)));
            }
            _mm512_mask_storeu_ps(p, m0, v0);
            _mm512_mask_storeu_ps(p.add(16), m1, v1);
        }
    }
}

/// `dst.copy_from_slice(src)` for at most 32 floats, as two masked vector moves.
///
/// # Safety
/// The CPU must support AVX-512F; `dst.len() == src.len() <= 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn copy_upto32(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    debug_assert!(n <= 32 && src.len() == n);
    let m0 = ((1u32 << n.min(16)) - 1) as __mmask16;
    let m1 = ((1u32 << n.saturating_sub(16)) - 1) as __mmask16;
    // SAFETY: the masks keep every access inside the first n floats of both slices.
    unsafe {
        let v0 = _mm512_maskz_loadu_ps(m0, src.as_ptr());
        let v1 = _mm512_maskz_loadu_ps(m1, src.as_ptr().wrapping_add(16));
        _mm512_mask_storeu_ps(dst.as_mut_ptr(), m0, v0);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().wrapping_add(16), m1, v1);
    }
}

/// Never called off x86-64 ([`super::direct::available`] is false there).
///
/// # Safety
/// Not callable: it panics.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn copy_upto32(_dst: &mut [f32], _src: &[f32]) {
    unreachable!("the AVX-512 conv kernel exists only on x86-64")
}

/// Never called off x86-64 ([`super::direct::available`] is false there).
///
/// # Safety
/// Not callable: it panics.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv_avx512_8x32(
    _k: usize,
    _a: *const f32,
    _b: *const f32,
    _c: *mut f32,
    _ldc: usize,
    _rows: usize,
    _cols: usize,
    _bias: Option<&[f32]>,
    _accumulate: bool,
) {
    unreachable!("the AVX-512 conv kernel exists only on x86-64")
}
