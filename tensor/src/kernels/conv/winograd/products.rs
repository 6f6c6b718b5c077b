//! The 36 matrix products of a chunk in the forward direction, `M[xi] = U[xi] V[xi]`
//! (`C_out x tiles = (C_out x C_in) (C_in x tiles)`).
//!
//! On CPUs with AVX-512 the filters are transformed once per convolution straight into the
//! micro-kernel's A layout (`[C_out / 8][C_in][8]` per `xi`, shared by every chunk), and the
//! kernel reads its B rows (32 tiles of one input channel) in place from `V`, whose rows are a
//! multiple of 32 long: neither operand is copied per chunk. Elsewhere each product is an
//! [`sgemm`](crate::kernels::gemm) call.

use std::cell::Cell;

use rayon::prelude::*;

use super::super::avx512::{conv_avx512_8x32, BRows, MR, NR};
use super::super::direct;
use super::filters::{pack_weights, transform_weights, weight_plane, Orientation};
use super::{PLANE_SKEW, XI};
use crate::kernels::gemm::{sgemm_batched_threads, Trans};

/// A convolution's transformed filters: packed for the direct kernel where it runs, else the
/// planes `U[xi][co * c_in + ci]` (of [`weight_plane`] values) for the GEMM.
pub(crate) struct Filters {
    c_out: usize,
    c_in: usize,
    form: Form,
}

enum Form {
    /// `U`, planes of [`weight_plane`] values.
    Planes(Vec<f32>),
    /// `[xi][c_out / 8][c_in][8]`, planes of [`Filters::packed_plane`] values.
    Packed(Vec<f32>),
}

thread_local! {
    /// The last packed copy this thread dropped, reused by the next convolution (a fresh one
    /// would cost page faults on every call).
    static SPARE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl Drop for Filters {
    fn drop(&mut self) {
        if let Form::Packed(packed) = &mut self.form {
            let packed = std::mem::take(packed);
            SPARE.with(|spare| spare.set(packed));
        }
    }
}

impl Filters {
    /// The transformed filters of `weight` read as `orientation` says (`c_out` outputs over
    /// `c_in` inputs), packed straight from the weights if the direct kernel runs.
    pub(crate) fn new(
        weight: &[f32],
        c_out: usize,
        c_in: usize,
        orientation: Orientation,
    ) -> Filters {
        let form = if direct::available() {
            let plane = Self::packed_plane(c_out, c_in);
            // Every value is overwritten; the buffer keeps the length of the largest filters
            // it has held (so switching between layers never zeroes it again).
            let mut packed = SPARE.with(Cell::take);
            if packed.len() < XI * plane {
                packed.resize(XI * plane, 0.0);
            }
            pack_weights(
                c_out,
                c_in,
                weight,
                orientation,
                &mut packed[..XI * plane],
                plane,
            );
            Form::Packed(packed)
        } else {
            Form::Planes(transform_weights(c_out, c_in, weight, orientation))
        };
        Filters { c_out, c_in, form }
    }

    /// Values per `xi` of the packed form: the panels, then a cache line of skew (the 36
    /// planes are written side by side, see [`PLANE_SKEW`]).
    fn packed_plane(c_out: usize, c_in: usize) -> usize {
        direct::packed_rows_len(c_out, c_in) + PLANE_SKEW
    }

    /// `M[xi][.., ..cols] = U[xi] V[xi][.., ..cols]` for every `xi`, in parallel over `xi` if
    /// `par`. `V` has rows of `stride` values (a multiple of 32) and planes of `v_plane`; `M`
    /// rows of `stride` and planes of `m_plane`. Columns `cols..` of `M` are left as they are.
    pub(super) fn products(
        &self,
        par: bool,
        cols: usize,
        (v, v_plane): (&[f32], usize),
        (m, m_plane): (&mut [f32], usize),
        stride: usize,
    ) {
        let packed = match &self.form {
            Form::Packed(packed) => packed,
            Form::Planes(u) => {
                sgemm_batched_threads(
                    par,
                    XI,
                    Trans::No,
                    Trans::No,
                    self.c_out,
                    cols,
                    self.c_in,
                    1.0,
                    u,
                    self.c_in,
                    weight_plane(self.c_out, self.c_in),
                    v,
                    stride,
                    v_plane,
                    0.0,
                    m,
                    stride,
                    m_plane,
                );
                return;
            }
        };
        assert!(
            stride.is_multiple_of(NR) && cols <= stride,
            "winograd products: rows of {stride} values for {cols} columns"
        );
        let (c_out, c_in) = (self.c_out, self.c_in);
        let (plane, pp) = (
            Self::packed_plane(c_out, c_in),
            direct::packed_rows_len(c_out, c_in),
        );
        let product = |(xi, m_xi): (usize, &mut [f32])| {
            let a = &packed[xi * plane..][..pp];
            let v_xi = &v[xi * v_plane..][..c_in * stride];
            for j0 in (0..cols).step_by(NR) {
                let n = NR.min(cols - j0);
                let b = BRows {
                    ptr: v_xi[j0..].as_ptr(),
                    step: stride,
                    run: c_in,
                    run_stride: 0,
                    runs: 1,
                    block_stride: 0,
                    blocks: 1,
                };
                for (cb, ap) in a.chunks_exact(c_in * MR).enumerate() {
                    let rows = MR.min(c_out - cb * MR);
                    let c = &mut m_xi[cb * MR * stride + j0..c_out * stride];
                    // SAFETY: the direct kernel runs (AVX-512F); A holds c_in steps of 8; B's
                    // c_in rows of 32 values start at j0 of rows of `v_xi` (j0 + 32 <= stride,
                    // asserted above); the rows x n tile lies inside `c` (row stride `stride`).
                    unsafe {
                        conv_avx512_8x32(
                            ap.as_ptr(),
                            b,
                            c.as_mut_ptr(),
                            stride,
                            rows,
                            n,
                            None,
                            false,
                        )
                    };
                }
            }
        };
        if par {
            m.par_chunks_mut(m_plane)
                .take(XI)
                .enumerate()
                .for_each(product);
        } else {
            m.chunks_mut(m_plane).take(XI).enumerate().for_each(product);
        }
    }
}
