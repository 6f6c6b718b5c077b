//! The packing and the fold with explicit AVX-512 vectors: eight f64 lanes per register, the
//! filters' taps turned into lanes (and back) by 8x8 register transposes. The portable forms
//! in the parent module compute the same values (the same f64 operations in the same order,
//! each value rounded once).

use std::arch::x86_64::*;
use std::ops::{Add, Mul, Sub};

use super::{fold_filter, transform_filter, Block, Orientation, FILTER_BLOCK, MR, STEP, XI};
use crate::ops::transpose::x86::transpose_8x8;

/// Eight f64 lanes in one register.
#[derive(Clone, Copy)]
struct Pd(__m512d);

impl Add for Pd {
    type Output = Pd;
    #[inline(always)]
    fn add(self, o: Pd) -> Pd {
        // SAFETY: only reached from the AVX-512F functions below.
        Pd(unsafe { _mm512_add_pd(self.0, o.0) })
    }
}

impl Sub for Pd {
    type Output = Pd;
    #[inline(always)]
    fn sub(self, o: Pd) -> Pd {
        // SAFETY: as above.
        Pd(unsafe { _mm512_sub_pd(self.0, o.0) })
    }
}

impl Mul<f64> for Pd {
    type Output = Pd;
    #[inline(always)]
    fn mul(self, s: f64) -> Pd {
        // SAFETY: as above.
        Pd(unsafe { _mm512_mul_pd(self.0, _mm512_set1_pd(s)) })
    }
}

/// One block of [`super::pack_weights`]: per input channel, the eight filters' nine taps are
/// turned into nine vectors (one 8x8 transpose and the ninth tap by hand), transformed, and
/// the 36 results written as eight f32 values each into a local block that goes out in whole
/// runs every [`STEP`] input channels.
///
/// # Safety
/// The CPU must support AVX-512F; `b.weight` must hold `c_out * c_in * 9` values (asserted
/// by [`super::pack_weights`]) and every run `c_in * 8`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn pack_block(b: &Block, runs: &mut [&mut [f32]]) {
    let valid = MR.min(b.c_out - b.cb * MR);
    // Filter (cb * 8 + l, ci) starts at `first(ci) + l * lane_step`; its stored taps run
    // forwards (forward) or backwards (adjoint, turned by 180 degrees).
    let (lane_step, first): (usize, &dyn Fn(usize) -> usize) = match b.orientation {
        Orientation::Forward => (9 * b.c_in, &|ci| 9 * (b.cb * MR * b.c_in + ci)),
        Orientation::Adjoint => (9, &|ci| 9 * (ci * b.c_out + b.cb * MR)),
    };
    let w = b.weight.as_ptr();
    let zero = Pd(_mm512_setzero_pd());
    let mut local = [[0.0f32; STEP * MR]; XI];
    // stored[q][l]: stored tap q of lane l's filter.
    let mut stored = [[0.0f32; MR]; 9];
    for ci0 in (0..b.c_in).step_by(STEP) {
        let step = STEP.min(b.c_in - ci0);
        for s in 0..step {
            let at = first(ci0 + s);
            if valid == MR {
                // SAFETY: the eight filters' taps lie inside the weight (see above).
                transpose_8x8(w.add(at), lane_step, stored.as_mut_ptr().cast(), MR);
                for (l, tap) in stored[8].iter_mut().enumerate() {
                    *tap = *w.add(at + l * lane_step + 8);
                }
            } else {
                stored = [[0.0; MR]; 9];
                for l in 0..valid {
                    for (q, row) in stored.iter_mut().enumerate() {
                        row[l] = *w.add(at + l * lane_step + q);
                    }
                }
            }
            let mut g = [zero; 9];
            for (t, tap) in g.iter_mut().enumerate() {
                let q = match b.orientation {
                    Orientation::Forward => t,
                    Orientation::Adjoint => 8 - t,
                };
                *tap = Pd(_mm512_cvtps_pd(_mm256_loadu_ps(stored[q].as_ptr())));
            }
            let u = transform_filter(g, zero);
            for (run, v) in local.iter_mut().zip(&u) {
                _mm256_storeu_ps(run[s * MR..].as_mut_ptr(), _mm512_cvtpd_ps(v.0));
            }
        }
        // Padding lanes: +0 (their transform gives -0 in places).
        if valid < MR {
            for run in local.iter_mut() {
                for s in 0..step {
                    run[s * MR + valid..s * MR + MR].fill(0.0);
                }
            }
        }
        for (run, values) in runs.iter_mut().zip(&local) {
            run[ci0 * MR..(ci0 + step) * MR].copy_from_slice(&values[..step * MR]);
        }
    }
}

/// [`super::fold_block`]: the block's 36 runs copied in whole, folded eight filters at a
/// time, each group's nine taps turned back into filters by an 8x8 transpose and the
/// ninth tap by hand.
///
/// # Safety
/// The CPU must support AVX-512F; `du` must hold the block's runs (as for
/// [`super::fold_block`]).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn fold_block(du: &[f32], u_plane: usize, b: usize, filters: &mut [f32]) {
    let count = filters.len() / 9;
    let mut block = [[0.0f32; FILTER_BLOCK]; XI];
    for (xi, run) in block.iter_mut().enumerate() {
        let at = xi * u_plane + b * FILTER_BLOCK;
        run[..count].copy_from_slice(&du[at..at + count]);
    }
    let zero = Pd(_mm512_setzero_pd());
    let mut taps = [[0.0f32; MR]; 9];
    for k0 in (0..count).step_by(MR) {
        let mut u = [zero; XI];
        for (v, run) in u.iter_mut().zip(&block) {
            *v = Pd(_mm512_cvtps_pd(_mm256_loadu_ps(run[k0..].as_ptr())));
        }
        for (row, g) in taps.iter_mut().zip(fold_filter(u, zero)) {
            _mm256_storeu_ps(row.as_mut_ptr(), _mm512_cvtpd_ps(g.0));
        }
        let out = &mut filters[9 * k0..];
        if count - k0 >= MR {
            // SAFETY: eight filters of nine values from 9 * k0 lie inside `filters`.
            transpose_8x8(taps.as_ptr().cast(), MR, out.as_mut_ptr(), 9);
            for l in 0..MR {
                out[9 * l + 8] = taps[8][l];
            }
        } else {
            for (l, filter) in out.chunks_exact_mut(9).enumerate() {
                for (o, row) in filter.iter_mut().zip(&taps) {
                    *o = row[l];
                }
            }
        }
    }
}
