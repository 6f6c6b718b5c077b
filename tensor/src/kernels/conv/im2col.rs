//! The column matrix of one image, one tile of output rows at a time, and its adjoint.
//!
//! For an image `X[c, y, x]` and output rows `r0..r1`, the tile is the `(c*kh*kw) x t` matrix
//! (`t = (r1 - r0) * ow`)
//!
//! ```text
//! cols[(ci*kh + a)*kw + b, (i - r0)*ow + j] = X[ci, i*s + a - pad_h, j*s + b - pad_w]   (0 outside)
//! ```
//!
//! so that a convolution of the tile is `Wt[co, (ci, a, b)] * cols`. [`col2im_rows`] is its
//! adjoint: it adds each entry of a column tile back onto the pixel it was read from.

use super::Conv2dParams;

/// One image's convolution geometry (padding may differ between the axes, which the
/// transposed-convolution form of backward-data needs for non-square kernels).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Target size, in f32, of one column tile: a few hundred KiB, so that the tile written by
/// im2col is still in L2 when the GEMM packs it.
const TILE_FLOATS: usize = 96 * 1024;

/// Fewest output pixels per tile, so that each GEMM call still has a long N.
const MIN_TILE_PIXELS: usize = 256;

impl Geometry {
    /// The geometry of `p`'s input images.
    pub fn of(p: &Conv2dParams) -> Geometry {
        Geometry {
            c: p.c_in,
            h: p.h,
            w: p.w,
            kh: p.kh,
            kw: p.kw,
            stride: p.stride,
            pad_h: p.padding,
            pad_w: p.padding,
            oh: p.out_h(),
            ow: p.out_w(),
        }
    }

    /// Rows of the column matrix (the GEMM reduction length): `c * kh * kw`.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Input pixels per channel.
    pub fn in_pixels(&self) -> usize {
        self.h * self.w
    }

    /// Output pixels per channel.
    pub fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }

    /// True when the column matrix is the image itself (1x1, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_h == 0 && self.pad_w == 0
    }

    /// Output rows per column tile. Depends only on the geometry (never on the thread count).
    pub fn tile_rows(&self) -> usize {
        let row = (self.k() * self.ow).max(1);
        let rows = (TILE_FLOATS / row).max(MIN_TILE_PIXELS.div_ceil(self.ow.max(1)));
        rows.clamp(1, self.oh.max(1))
    }

    /// The output-row tiles `(r0, r1)` covering `0..oh`.
    pub fn tiles(&self) -> impl Iterator<Item = (usize, usize)> {
        let step = self.tile_rows();
        let oh = self.oh;
        (0..oh)
            .step_by(step)
            .map(move |r0| (r0, (r0 + step).min(oh)))
    }

    /// Output columns `j_lo..j_hi` whose input column `j*s + b - pad_w` lies inside the image.
    fn valid_cols(&self, b: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if b >= self.pad_w {
            0
        } else {
            (self.pad_w - b).div_ceil(s)
        };
        let hi = if self.w + self.pad_w > b {
            (self.w + self.pad_w - b).div_ceil(s).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row read by output row `i` and kernel row `a`, if inside the image.
    fn input_row(&self, i: usize, a: usize) -> Option<usize> {
        (i * self.stride + a)
            .checked_sub(self.pad_h)
            .filter(|&y| y < self.h)
    }
}

/// Writes the column tile of output rows `r0..r1` of `image` (`[c, h, w]`) into
/// `cols[..k * (r1 - r0) * ow]`, laid out `[k, (r1 - r0) * ow]`.
pub(crate) fn im2col_rows(g: &Geometry, image: &[f32], r0: usize, r1: usize, cols: &mut [f32]) {
    let (ow, s) = (g.ow, g.stride);
    let t = (r1 - r0) * ow;
    let cols = &mut cols[..g.k() * t];
    for (kk, row) in cols.chunks_exact_mut(t).enumerate() {
        let ci = kk / (g.kh * g.kw);
        let a = kk / g.kw % g.kh;
        let b = kk % g.kw;
        let plane = &image[ci * g.in_pixels()..][..g.in_pixels()];
        let (lo, hi) = g.valid_cols(b);
        for (i, dst) in (r0..r1).zip(row.chunks_exact_mut(ow)) {
            let Some(y) = g.input_row(i, a) else {
                dst.fill(0.0);
                continue;
            };
            let src = &plane[y * g.w..][..g.w];
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            if lo == hi {
                continue;
            }
            // Input column of output column j is j*s + b - pad_w; at j = lo it is >= 0.
            let x0 = lo * s + b - g.pad_w;
            if s == 1 {
                dst[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
            } else {
                for (d, &v) in dst[lo..hi].iter_mut().zip(src[x0..].iter().step_by(s)) {
                    *d = v;
                }
            }
        }
    }
}

/// The adjoint of [`im2col_rows`]: adds every entry of the column tile `cols` (`[k, (r1 - r0) *
/// ow]`) onto the pixel of `image` (`[c, h, w]`) it was read from; padding entries are dropped.
pub(crate) fn col2im_rows(g: &Geometry, cols: &[f32], r0: usize, r1: usize, image: &mut [f32]) {
    let (ow, s) = (g.ow, g.stride);
    let t = (r1 - r0) * ow;
    let cols = &cols[..g.k() * t];
    for (kk, row) in cols.chunks_exact(t).enumerate() {
        let ci = kk / (g.kh * g.kw);
        let a = kk / g.kw % g.kh;
        let b = kk % g.kw;
        let plane = &mut image[ci * g.in_pixels()..][..g.in_pixels()];
        let (lo, hi) = g.valid_cols(b);
        if lo == hi {
            continue;
        }
        let x0 = lo * s + b - g.pad_w;
        for (i, src) in (r0..r1).zip(row.chunks_exact(ow)) {
            let Some(y) = g.input_row(i, a) else {
                continue;
            };
            let dst = &mut plane[y * g.w..][..g.w];
            if s == 1 {
                for (d, &v) in dst[x0..x0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                    *d += v;
                }
            } else {
                for (d, &v) in dst[x0..].iter_mut().step_by(s).zip(&src[lo..hi]) {
                    *d += v;
                }
            }
        }
    }
}
