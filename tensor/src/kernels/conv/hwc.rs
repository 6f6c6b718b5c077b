//! Pixel-major column tiles built from a zero-padded channels-last copy of the image.
//!
//! With `P[y, x, ci] = X[ci, y - pad_h, x - pad_w]` (zero outside the image; `(h + 2 pad_h) x
//! (w + 2 pad_w) x c`), the pixel-major column tile of output rows `r0..r1` is the
//! `t x (kh*kw*c)` matrix (`t = (r1 - r0) * ow`)
//!
//! ```text
//! colsT[(i - r0)*ow + j, (a*kw + b)*c + ci] = P[i*s + a, j*s + b, ci]
//! ```
//!
//! For fixed `(i, j, a)` the `kw * c` entries are contiguous in `P`, so each row is `kh` plain
//! copies whatever the stride. It feeds GEMMs that reduce over pixels (the weight gradient)
//! with both operands in their natural orientation; the price is a kernel-axis order of
//! `(a, b, ci)`, which [`permute_to_oihw`] converts back.

use super::im2col::Geometry;

/// Writes the padded channels-last copy of `image` (`[g.c, g.h, g.w]`) into `padded`.
pub(crate) fn pad_channels_last(g: &Geometry, image: &[f32], padded: &mut Vec<f32>) {
    let (hp, wp, c) = (g.h + 2 * g.pad_h, g.w + 2 * g.pad_w, g.c);
    padded.clear();
    padded.resize(hp * wp * c, 0.0);
    // Blocked transpose, eight channels at a time: eight source rows are read together (few
    // enough for the L1 ways, although channel planes are often 4 KiB apart) and each pixel
    // receives eight contiguous values.
    const BLOCK: usize = 8;
    let plane = g.h * g.w;
    for ci0 in (0..c).step_by(BLOCK) {
        let n = BLOCK.min(c - ci0);
        for y in 0..g.h {
            let row_base = ((y + g.pad_h) * wp + g.pad_w) * c + ci0;
            let src = |cc: usize| &image[(ci0 + cc) * plane + y * g.w..][..g.w];
            if n == BLOCK {
                let rows: [&[f32]; BLOCK] = std::array::from_fn(src);
                for x in 0..g.w {
                    let dst = &mut padded[row_base + x * c..][..BLOCK];
                    for (d, r) in dst.iter_mut().zip(&rows) {
                        *d = r[x];
                    }
                }
            } else {
                for cc in 0..n {
                    for (x, &v) in src(cc).iter().enumerate() {
                        padded[row_base + x * c + cc] = v;
                    }
                }
            }
        }
    }
}

/// Writes the pixel-major column tile of output rows `r0..r1` into `cols[..t * g.k()]`.
pub(crate) fn im2row_rows(g: &Geometry, padded: &[f32], r0: usize, r1: usize, cols: &mut [f32]) {
    let (k, c, s) = (g.k(), g.c, g.stride);
    let wp = g.w + 2 * g.pad_w;
    let run = g.kw * c;
    let t = (r1 - r0) * g.ow;
    for (q, row) in cols[..t * k].chunks_exact_mut(k).enumerate() {
        let (i, j) = (r0 + q / g.ow, q % g.ow);
        for (a, dst) in row.chunks_exact_mut(run).enumerate() {
            let src = ((i * s + a) * wp + j * s) * c;
            dst.copy_from_slice(&padded[src..src + run]);
        }
    }
}

/// Converts a weight-shaped matrix from `[co, (a, b, ci)]` order to `[co, ci, a, b]`.
pub(crate) fn permute_to_oihw(g: &Geometry, c_out: usize, src: &[f32], dst: &mut [f32]) {
    let (c, taps) = (g.c, g.kh * g.kw);
    for co in 0..c_out {
        let s = &src[co * c * taps..][..c * taps];
        let d = &mut dst[co * c * taps..][..c * taps];
        for tap in 0..taps {
            for ci in 0..c {
                d[ci * taps + tap] = s[tap * c + ci];
            }
        }
    }
}
