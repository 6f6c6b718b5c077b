//! The AVX-512F micro-kernel of the direct-packed convolution ([`super::direct`]).
//!
//! It computes one `8 x 32` tile of `C = A * B` over a reduction of length `k`, from an A
//! micro-panel packed `[k][8]` (8 rows of A side by side) and 32 columns of B read as rows of
//! 32 contiguous floats, either from a packed panel (`[k][32]`) or in place from a matrix whose
//! rows lie at regular strides ([`BRows`]): 16 zmm accumulators; per reduction step two loads
//! of B, eight broadcasts of A and sixteen FMAs. On Zen 4 a 512-bit FMA occupies both 256-bit pipes,
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

/// Where the kernel finds the rows of B (32 contiguous floats each), as up to three nested
/// strides: `blocks` blocks of `runs` runs of `run` reduction steps, step `q` of run `r` of
/// block `l` at `ptr + l * block_stride + r * run_stride + q * step`. A packed panel (`[k][32]`)
/// is one run of `k` steps 32 floats apart ([`BRows::packed`]).
#[derive(Clone, Copy)]
pub(crate) struct BRows {
    pub ptr: *const f32,
    pub step: usize,
    pub run: usize,
    pub run_stride: usize,
    pub runs: usize,
    pub block_stride: usize,
    pub blocks: usize,
}

impl BRows {
    /// A packed `[k][32]` panel.
    pub(crate) fn packed(ptr: *const f32, k: usize) -> BRows {
        BRows {
            ptr,
            step: NR,
            run: k,
            run_stride: 0,
            runs: 1,
            block_stride: 0,
            blocks: 1,
        }
    }
}

/// `C[r, j] (+)= bias[r] + sum_{p < k} A[p][r] * B[p][j]` for `r < rows`, `j < cols`, with
/// `k = b.run * b.runs * b.blocks`.
///
/// # Safety
/// The CPU must support AVX-512F; `a` must hold `k * MR` floats and every row of `b` 32 readable
/// floats; `c` must be valid for reads (when `accumulate`) and writes of `rows` rows of `cols`
/// floats with row stride `ldc`; `rows <= MR`, `cols <= NR`; `bias`, if any, must hold `rows`
/// floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv_avx512_8x32(
    a: *const f32,
    b: BRows,
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
    let mut a = a;
    for l in 0..b.blocks {
        for r in 0..b.runs {
            let mut bp = b.ptr.wrapping_add(l * b.block_stride + r * b.run_stride);
            for _ in 0..b.run {
                // SAFETY: the caller guarantees k steps of MR values of A and rows of NR
                // values of B at these addresses.
                unsafe {
                    let b0 = _mm512_loadu_ps(bp);
                    let b1 = _mm512_loadu_ps(bp.add(16));
                    for (r, row) in acc.iter_mut().enumerate() {
                        let ar = _mm512_set1_ps(*a.add(r));
                        row[0] = _mm512_fmadd_ps(ar, b0, row[0]);
                        row[1] = _mm512_fmadd_ps(ar, b1, row[1]);
                    }
                    a = a.add(MR);
                    bp = bp.add(b.step);
                }
            }
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
    _a: *const f32,
    _b: BRows,
    _c: *mut f32,
    _ldc: usize,
    _rows: usize,
    _cols: usize,
    _bias: Option<&[f32]>,
    _accumulate: bool,
) {
    unreachable!("the AVX-512 conv kernel exists only on x86-64")
}
