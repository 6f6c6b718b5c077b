//! The blocked 2-D transposes behind `permute` when the last axis moves: tiles assembled in
//! registers and a local buffer, prefetched reads, non-temporal writes for large outputs.

use rayon::prelude::*;

use super::layout::Walker;
use super::par::{SendPtr, PAR_MIN};
use crate::shape::{numel, strides};

/// Tile of the blocked transpose: `TJ` input rows (output columns) by `TK` input columns
/// (output rows). Measured on a 4096 x 4096 transpose against 64 x 64, 32 x 128, 16 x 256,
/// 128 x 32, 256 x 32, 256 x 64 and 128 x 128: 128 x 64 was fastest on one and two threads.
const TJ: usize = 128;
const TK: usize = 64;

/// Output columns per task of a transpose (a multiple of [`TJ`]).
const J_SPAN: usize = 512;

/// Outputs from this many elements (16 MiB) are written with non-temporal stores: far larger
/// than the caches, so caching them would only cost a read of every output line before it is
/// overwritten.
const STREAM_MIN: usize = 1 << 22;

/// `dst[..src.len()] = src` with non-temporal stores where `dst` is 16-byte aligned (x86-64;
/// plain stores elsewhere and for the unaligned ends).
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` values.
#[inline(always)]
unsafe fn write_streaming(dst: *mut f32, src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        let head = dst.align_offset(16).min(src.len());
        let body = (src.len() - head) / 4 * 4;
        let done = head + body;
        // SAFETY: every write stays inside dst[..src.len()] (the caller's guarantee), and the
        // streamed addresses dst + i for i in head..done are 16-byte aligned.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head);
            for i in (head..done).step_by(4) {
                _mm_stream_ps(dst.add(i), _mm_loadu_ps(src.as_ptr().add(i)));
            }
            std::ptr::copy_nonoverlapping(src.as_ptr().add(done), dst.add(done), src.len() - done);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's guarantee.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len())
    };
}

/// Orders this thread's non-temporal stores before whatever it does next (such as telling
/// rayon that its task is done).
#[inline(always)]
fn finish_streaming() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no preconditions.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Asks the CPU to start loading every cache line of `x` (a hint; nothing off x86-64).
#[inline(always)]
fn prefetch_run(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        // SAFETY: prefetching is a hint that never faults; the address lies inside `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// The 4x4 block of the first four values of four rows, transposed: `cols[c][r] = rows[r][c]`
/// (through SSE registers on x86-64).
#[inline(always)]
pub(crate) fn transpose4x4(rows: [&[f32]; 4]) -> [[f32; 4]; 4] {
    assert!(rows.iter().all(|r| r.len() >= 4));
    let mut cols = [[0.0f32; 4]; 4];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE is part of x86-64; the loads read rows[r][0..4] (asserted above) and the
        // stores write the four arrays of `cols`.
        unsafe {
            let q: [__m128; 4] = std::array::from_fn(|r| _mm_loadu_ps(rows[r].as_ptr()));
            let t0 = _mm_unpacklo_ps(q[0], q[1]); // q0[0] q1[0] q0[1] q1[1]
            let t1 = _mm_unpacklo_ps(q[2], q[3]);
            let t2 = _mm_unpackhi_ps(q[0], q[1]); // q0[2] q1[2] q0[3] q1[3]
            let t3 = _mm_unpackhi_ps(q[2], q[3]);
            let t = [
                _mm_movelh_ps(t0, t1),
                _mm_movehl_ps(t1, t0),
                _mm_movelh_ps(t2, t3),
                _mm_movehl_ps(t3, t2),
            ];
            for (col, v) in cols.iter_mut().zip(t) {
                _mm_storeu_ps(col.as_mut_ptr(), v);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (c, col) in cols.iter_mut().enumerate() {
        for (r, v) in col.iter_mut().enumerate() {
            *v = rows[r][c];
        }
    }
    cols
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// Transposes the 8 x 8 block at `src` (rows `ld` apart) into `dst` (rows `ld_dst`
    /// apart): `dst[q * ld_dst + r] = src[r * ld + q]`.
    ///
    /// # Safety
    /// Both blocks must be valid, and the CPU must support AVX.
    #[target_feature(enable = "avx")]
    pub(crate) unsafe fn transpose_8x8(src: *const f32, ld: usize, dst: *mut f32, ld_dst: usize) {
        // SAFETY: forwarded to the caller.
        unsafe {
            let r = |i: usize| _mm256_loadu_ps(src.add(i * ld));
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
            // Pairs of rows interleaved: (r0 r1)[0 1 | 4 5] and [2 3 | 6 7], ...
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let t4 = _mm256_unpacklo_ps(r4, r5);
            let t5 = _mm256_unpackhi_ps(r4, r5);
            let t6 = _mm256_unpacklo_ps(r6, r7);
            let t7 = _mm256_unpackhi_ps(r6, r7);
            // Columns q | q + 4 of rows 0-3 (s0..s3) and of rows 4-7 (s4..s7).
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let w = |q: usize, v: __m256| _mm256_storeu_ps(dst.add(q * ld_dst), v);
            w(0, _mm256_permute2f128_ps::<0x20>(s0, s4));
            w(1, _mm256_permute2f128_ps::<0x20>(s1, s5));
            w(2, _mm256_permute2f128_ps::<0x20>(s2, s6));
            w(3, _mm256_permute2f128_ps::<0x20>(s3, s7));
            w(4, _mm256_permute2f128_ps::<0x31>(s0, s4));
            w(5, _mm256_permute2f128_ps::<0x31>(s1, s5));
            w(6, _mm256_permute2f128_ps::<0x31>(s2, s6));
            w(7, _mm256_permute2f128_ps::<0x31>(s3, s7));
        }
    }
}

/// A permutation whose last merged output axis is not the input's contiguous one: for every
/// combination of the other axes, the plane spanned by the output's last axis `j` and the
/// output axis `k` that is contiguous in the input is transposed in TJ x TK tiles.
///
/// Writes all `n` output elements through `dst` (which needs room for them; they need not be
/// initialised): the (batch, span, k-tile) items cover every output element once.
pub(super) fn transpose_batched(src: &[f32], dst: SendPtr, n: usize, axes: &[(usize, usize)]) {
    let nd = axes.len();
    let k = axes
        .iter()
        .position(|a| a.1 == 1)
        .expect("the input's last axis is in the output");
    let out_strides = strides(&axes.iter().map(|a| a.0).collect::<Vec<_>>());
    let (jn, js) = axes[nd - 1];
    let (kn, kos) = (axes[k].0, out_strides[k]);
    let batch: Vec<usize> = (0..nd - 1).filter(|&d| d != k).collect();
    let in_walk = Walker {
        dims: batch.iter().map(|&d| axes[d].0).collect(),
        strides: batch.iter().map(|&d| axes[d].1).collect(),
    };
    let out_walk = Walker {
        dims: in_walk.dims.clone(),
        strides: batch.iter().map(|&d| out_strides[d]).collect(),
    };
    // Items are (batch, span of J_SPAN output columns, k-tile), in that order, so that the
    // consecutive items a thread takes read the same J_SPAN input rows (still in the caches
    // and the TLB) instead of sweeping every input row for each k-tile.
    let ktiles = kn.div_ceil(TK);
    let spans = jn.div_ceil(J_SPAN);
    let items = numel(&in_walk.dims) * spans * ktiles;
    let stream = n >= STREAM_MIN;
    let task = |item: usize| {
        let (b, span, kt) = (
            item / (spans * ktiles),
            item / ktiles % spans,
            item % ktiles,
        );
        let (ib, ob) = (in_walk.offset(b), out_walk.offset(b));
        let (k0, k1) = (kt * TK, ((kt + 1) * TK).min(kn));
        let ptr = dst;
        // SAFETY (the writes below): each (batch, span, k-tile) item writes only the output
        // elements with its own batch index, j in its span and k in k0..k1, so tasks never overlap, and every index is
        // below n (the axes' sizes multiply to it).
        // Each TK x TJ block of the output is assembled in a local buffer (4x4 blocks
        // transposed in registers, ragged edges element by element) and then written out
        // row by row: the output rows are a power-of-two stride apart in the common cases,
        // and writing them in short pieces would keep evicting half-written cache lines.
        let mut buf = [0.0f32; TJ * TK];
        for j0 in (span * J_SPAN..jn.min((span + 1) * J_SPAN)).step_by(TJ) {
            let j1 = (j0 + TJ).min(jn);
            let (j4, k4) = (j0 + (j1 - j0) / 4 * 4, k0 + (k1 - k0) / 4 * 4);
            for jb in (j0..j4).step_by(4) {
                // The same rows of the next tile down, a tile ahead: the strided rows are too
                // many streams for the hardware prefetcher.
                for r in jb + TJ..(jb + TJ + 4).min(jn) {
                    prefetch_run(&src[ib + r * js + k0..ib + r * js + k1]);
                }
                for kb in (k0..k4).step_by(4) {
                    let rows: [&[f32]; 4] =
                        std::array::from_fn(|r| &src[ib + (jb + r) * js + kb..]);
                    for (c, col) in transpose4x4(rows).iter().enumerate() {
                        let at = (kb - k0 + c) * TJ + (jb - j0);
                        buf[at..at + 4].copy_from_slice(col);
                    }
                }
            }
            for kk in k0..k1 {
                let from = if kk < k4 { j4 } else { j0 };
                for jj in from..j1 {
                    buf[(kk - k0) * TJ + (jj - j0)] = src[ib + jj * js + kk];
                }
            }
            for kk in k0..k1 {
                let row = &buf[(kk - k0) * TJ..][..j1 - j0];
                // SAFETY: each item writes only the output elements with its own batch index,
                // j in its span and k in k0..k1, so tasks never overlap, and the row lies
                // inside the output (the axes' sizes multiply to n).
                unsafe {
                    let to = ptr.0.add(ob + kk * kos + j0);
                    if stream {
                        write_streaming(to, row);
                    } else if row.len() == TJ {
                        // A whole row as one fixed-size move (no call to `memcpy`).
                        (to as *mut [f32; TJ]).write_unaligned(*(row.as_ptr() as *const [f32; TJ]));
                    } else {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), to, row.len());
                    }
                };
            }
        }
        if stream {
            finish_streaming();
        }
    };
    if n < PAR_MIN {
        (0..items).for_each(task);
    } else {
        (0..items).into_par_iter().for_each(task);
    }
}
