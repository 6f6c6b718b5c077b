//! Direct-packed convolution GEMMs for CPUs with AVX-512: the column matrix is packed straight
//! into the micro-kernel's panel layout from a padded copy of the image, with no im2col buffer
//! and no second packing pass, and the weights are packed once per call instead of once per
//! GEMM.
//!
//! - forward (and backward-data, as a forward convolution of the output gradient):
//!   `Y[co, p] = bias[co] + sum_kk Wt[co, kk] * cols[kk, p]`, A = the packed weights
//!   (`[c_out / 8][K][8]`), B = `cols` packed per tile of pixels (`[pixels / 32][K][32]`), read
//!   from the zero-padded NCHW image `Xp[ci, y, x]`: `cols[(ci, a, b), (i, j)] = Xp[ci, i*s + a,
//!   j*s + b]`.
//! - backward-weight: `dW[co, kk'] += sum_p dY[co, p] * colsT[p, kk']` over the pixels of a
//!   tile, with `kk' = (a, b, ci)` (see [`super::hwc`]): A = the output gradient's tile
//!   (`[c_out / 8][t][8]`), B = `colsT` packed `[K / 32][t][32]` from the padded channels-last
//!   image, whose `kw * c` runs are contiguous.
//!
//! Partial tiles are zero-padded in the packs and clipped by the kernel's masked stores.

use std::cell::RefCell;

use super::avx512::{conv_avx512_8x32, copy_upto32, BRows, MR, NR};
use super::im2col::Geometry;
use crate::ops::transpose::transpose4x4;

/// Target size, in f32, of one packed column tile (kept in L2 while the weights stream past).
const TILE_FLOATS: usize = 96 * 1024;

/// True when this CPU runs the direct path (AVX-512F, and the portable path not forced).
pub(crate) fn available() -> bool {
    cfg!(target_arch = "x86_64") && crate::kernels::cpu::isa() == crate::kernels::cpu::Isa::Avx512
}

/// Packs rows `0..rows` of the `rows x k` matrix `src` (row stride `ld`, column offset
/// `col0`) into `[ceil(rows / 8)][k][8]` micro-panels, zero rows past `rows`, in `out`
/// (resized to fit).
pub(crate) fn pack_rows(
    src: &[f32],
    rows: usize,
    k: usize,
    ld: usize,
    col0: usize,
    out: &mut Vec<f32>,
) {
    // Every value is written (padding rows as zeros), so the buffer is only resized.
    out.resize(packed_rows_len(rows, k), 0.0);
    pack_rows_into(src, rows, k, ld, col0, out);
}

/// Floats [`pack_rows`] writes for a `rows x k` matrix.
pub(crate) fn packed_rows_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(MR) * k * MR
}

/// [`pack_rows`] into `out`, which must hold [`packed_rows_len`] values.
pub(crate) fn pack_rows_into(
    src: &[f32],
    rows: usize,
    k: usize,
    ld: usize,
    col0: usize,
    out: &mut [f32],
) {
    assert_eq!(
        out.len(),
        packed_rows_len(rows, k),
        "pack_rows: output length"
    );
    for (blk, panel) in out.chunks_exact_mut(k * MR).enumerate() {
        let valid = MR.min(rows - blk * MR);
        let base = blk * MR * ld + col0;
        let mut done = 0;
        if valid == MR {
            // Whole blocks of 4 steps as two 4x4 transposes (rows 0-3 and 4-7).
            done = k / 4 * 4;
            for kk in (0..done).step_by(4) {
                for half in 0..2 {
                    let r0 = 4 * half;
                    let block =
                        transpose4x4(std::array::from_fn(|i| &src[base + (r0 + i) * ld + kk..]));
                    for (c, col) in block.iter().enumerate() {
                        let at = (kk + c) * MR + r0;
                        panel[at..at + 4].copy_from_slice(col);
                    }
                }
            }
        }
        for (kk, dst) in panel.chunks_exact_mut(MR).enumerate().skip(done) {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = if r < valid {
                    src[base + r * ld + kk]
                } else {
                    0.0
                };
            }
        }
    }
}

/// Scratch of one task.
#[derive(Default)]
pub(crate) struct Workspace {
    padded: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    /// Each thread keeps its scratch between calls (a few hundred KiB to a few MiB, the largest
    /// tile it has packed), so a convolution does not pay page faults on fresh buffers.
    static SCRATCH: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Runs `f` with this thread's scratch (or a fresh one if it is already in use higher up the
/// stack, as when rayon runs another task while this one waits).
pub(crate) fn with_workspace<R>(f: impl FnOnce(&mut Workspace) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut ws) => f(&mut ws),
        Err(_) => f(&mut Workspace::default()),
    })
}

/// The padded image split into its `s x s` stride phases: with `Xp` the zero-padded image,
/// `phases[ci][py][px][u][v] = Xp[ci, u*s + py, v*s + px]` (`u < ceil(hp / s)`, `v <
/// ceil(wp / s)`), so that the input pixels of consecutive output columns are consecutive
/// (for stride 1 it is just the padded image).
struct Phases {
    hh: usize,
    ww: usize,
}

impl Phases {
    fn of(g: &Geometry) -> Phases {
        let s = g.stride;
        Phases {
            hh: (g.h + 2 * g.pad_h).div_ceil(s),
            ww: (g.w + 2 * g.pad_w).div_ceil(s),
        }
    }

    /// Offset of the input pixel of output pixel `(i, j)` under tap `(ci, a, b)`.
    fn offset(&self, g: &Geometry, ci: usize, a: usize, b: usize, i: usize, j: usize) -> usize {
        let s = g.stride;
        let plane = self.hh * self.ww;
        ((ci * s + a % s) * s + b % s) * plane + (i + a / s) * self.ww + j + b / s
    }

    /// Writes the phases of `image` into `out`.
    fn build(&self, g: &Geometry, image: &[f32], out: &mut Vec<f32>) {
        let s = g.stride;
        let plane = self.hh * self.ww;
        out.clear();
        out.resize(g.c * s * s * plane, 0.0);
        for (ci, src) in image.chunks_exact(g.h * g.w).enumerate() {
            for (y, row) in src.chunks_exact(g.w).enumerate() {
                let (py, u) = ((y + g.pad_h) % s, (y + g.pad_h) / s);
                if s == 1 {
                    out[(ci * plane) + u * self.ww + g.pad_w..][..g.w].copy_from_slice(row);
                    continue;
                }
                for px in 0..s {
                    // The first input column of phase px, and its position in the phase row.
                    let x0 = (px + s - g.pad_w % s) % s;
                    if x0 >= g.w {
                        continue;
                    }
                    let v0 = (x0 + g.pad_w) / s;
                    let dst = &mut out[((ci * s + py) * s + px) * plane + u * self.ww + v0..];
                    if s == 2 {
                        // Pairs of a fixed size: the compiler turns this into shuffles.
                        for (d, pair) in dst.iter_mut().zip(row[x0..].chunks(2)) {
                            *d = pair[0];
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(row[x0..].iter().step_by(s)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward convolution of one image with weights packed by [`pack_rows`] (`[c_out, g.k()]`):
/// `y` (`[c_out, oh * ow]`) `= bias + Wt * cols(x)`.
///
/// With stride 1 and output rows a multiple of 32 wide, every 32-pixel panel of `cols` lies in
/// one output row, and its row for tap `(ci, a, b)` is 32 contiguous floats of the padded
/// image (`Xp[ci, i + a, j + b..]`): the micro-kernel reads them in place, walking `b`, `a` and
/// `ci` as three nested strides. Otherwise the panels are packed first.
pub(crate) fn forward_image(
    g: &Geometry,
    c_out: usize,
    packed_w: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut Workspace,
) {
    let (k, npix) = (g.k(), g.out_pixels());
    let phases = Phases::of(g);
    phases.build(g, x, &mut ws.padded);
    let tile = (TILE_FLOATS / (k * NR)).max(1) * NR;
    if g.stride == 1 && g.ow.is_multiple_of(NR) {
        for p0 in (0..npix).step_by(tile) {
            forward_tile_in_place(g, c_out, packed_w, &phases, &ws.padded, bias, p0, tile, y);
        }
        return;
    }
    let mut segments = Vec::with_capacity(8);
    for p0 in (0..npix).step_by(tile) {
        let t = tile.min(npix - p0);
        let panels = t.div_ceil(NR);
        ws.b.resize(panels * k * NR, 0.0);
        for (panel, bp) in ws.b.chunks_exact_mut(k * NR).take(panels).enumerate() {
            // The panel's pixels as runs within output rows: (lane, i, j, len).
            segments.clear();
            let (start, end) = (p0 + panel * NR, (p0 + (panel + 1) * NR).min(p0 + t));
            let mut q = start;
            while q < end {
                let (i, j) = (q / g.ow, q % g.ow);
                let len = (end - q).min(g.ow - j);
                segments.push((q - start, i, j, len));
                q += len;
            }
            // SAFETY: `available()` checked AVX-512F.
            unsafe { pack_panel(g, &phases, &ws.padded, &segments, end - start, bp) };
        }
        for (cb, ap) in packed_w.chunks_exact(k * MR).enumerate() {
            let rows = MR.min(c_out - cb * MR);
            let bias_rows = bias.map(|b| &b[cb * MR..cb * MR + rows]);
            for (panel, bp) in ws.b.chunks_exact(k * NR).take(panels).enumerate() {
                let cols = NR.min(t - panel * NR);
                let c = &mut y[cb * MR * npix + p0 + panel * NR..];
                // SAFETY: `available()` checked AVX-512F; the packs hold k steps; the tile's
                // rows x cols lie inside `y` (row stride npix).
                unsafe {
                    conv_avx512_8x32(
                        ap.as_ptr(),
                        BRows::packed(bp.as_ptr(), k),
                        c.as_mut_ptr(),
                        npix,
                        rows,
                        cols,
                        bias_rows,
                        false,
                    );
                }
            }
        }
    }
}

/// The output pixels `p0..p0 + tile` (clipped to the image) of [`forward_image`] with the
/// columns read in place from the padded image `padded` (stride 1, `g.ow % 32 == 0`).
#[allow(clippy::too_many_arguments)]
fn forward_tile_in_place(
    g: &Geometry,
    c_out: usize,
    packed_w: &[f32],
    phases: &Phases,
    padded: &[f32],
    bias: Option<&[f32]>,
    p0: usize,
    tile: usize,
    y: &mut [f32],
) {
    let (k, npix) = (g.k(), g.out_pixels());
    let plane = phases.hh * phases.ww;
    debug_assert!(g.stride == 1 && g.ow.is_multiple_of(NR) && padded.len() == g.c * plane);
    for (cb, ap) in packed_w.chunks_exact(k * MR).enumerate() {
        let rows = MR.min(c_out - cb * MR);
        let bias_rows = bias.map(|b| &b[cb * MR..cb * MR + rows]);
        for q in (p0..npix.min(p0 + tile)).step_by(NR) {
            let (i, j) = (q / g.ow, q % g.ow);
            let first = phases.offset(g, 0, 0, 0, i, j);
            // The last row read: tap (c - 1, kh - 1, kw - 1), 32 floats within the row.
            let last = phases.offset(g, g.c - 1, g.kh - 1, g.kw - 1, i, j);
            assert!(last + NR <= padded.len(), "conv2d forward: columns");
            let b = BRows {
                ptr: padded[first..].as_ptr(),
                step: 1,
                run: g.kw,
                run_stride: phases.ww,
                runs: g.kh,
                block_stride: plane,
                blocks: g.c,
            };
            let c = &mut y[cb * MR * npix + q..];
            // SAFETY: `available()` checked AVX-512F; A holds k = c * kh * kw steps; each row
            // of B is 32 floats of one padded row (j + b + 32 <= ow + kw - 1 = the padded
            // width; the last checked above); the tile's rows x 32 columns lie inside `y`.
            unsafe {
                conv_avx512_8x32(
                    ap.as_ptr(),
                    b,
                    c.as_mut_ptr(),
                    npix,
                    rows,
                    NR,
                    bias_rows,
                    false,
                )
            };
        }
    }
}

/// Packs one B micro-panel of the forward column matrix: `bp[kk][lane] = Xp[ci, i*s + a, j*s +
/// b]` for `kk = (ci, a, b)` and the pixels `(i, j)` of `segments` (runs `(lane, i, j, len)`
/// within output rows), read as contiguous runs from the stride phases; lanes from `filled`
/// on are zero. Compiled for AVX-512 so that the copies inline as masked vector moves.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn pack_panel(
    g: &Geometry,
    phases: &Phases,
    data: &[f32],
    segments: &[(usize, usize, usize, usize)],
    filled: usize,
    bp: &mut [f32],
) {
    let mut rows = bp.chunks_exact_mut(NR);
    for ci in 0..g.c {
        for a in 0..g.kh {
            for b in 0..g.kw {
                let dst = rows.next().expect("k panel rows");
                for &(lane, i, j, len) in segments {
                    let at = phases.offset(g, ci, a, b, i, j);
                    // SAFETY: AVX-512F per this function's contract; len <= NR.
                    unsafe { copy_upto32(&mut dst[lane..lane + len], &data[at..at + len]) };
                }
                dst[filled..].fill(0.0);
            }
        }
    }
}

/// Packs the pixel-major columns of pixels `p0..p0 + t` and of the column panels
/// `first..first + count` into `[count][t][32]`: `b[(kk / 32 - first) t + q][kk % 32] = P[i*s +
/// a, j*s + b, ci]` for `kk = (a*kw + b)*c + ci` in those panels and pixel `p0 + q = (i, j)`;
/// each `(q, a)` is a run of `kw * c` contiguous values of `padded`. Lanes past `K` are zero.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_rows_t(
    g: &Geometry,
    padded: &[f32],
    p0: usize,
    t: usize,
    first: usize,
    count: usize,
    b: &mut [f32],
) {
    let (c, s, k) = (g.c, g.stride, g.k());
    let wp = g.w + 2 * g.pad_w;
    let run = g.kw * c;
    let (lo, hi) = (first * NR, ((first + count) * NR).min(k));
    if hi < (first + count) * NR {
        // The last panel is partial: zero its lanes past K.
        let last = &mut b[(count - 1) * t * NR..][..t * NR];
        for lanes in last.chunks_exact_mut(NR) {
            lanes[hi % NR..].fill(0.0);
        }
    }
    for q in 0..t {
        let (i, j) = ((p0 + q) / g.ow, (p0 + q) % g.ow);
        for a in 0..g.kh {
            // The part of this tap row's run that falls in the panels asked for.
            let (start, end) = (lo.max(a * run), hi.min((a + 1) * run));
            if start >= end {
                continue;
            }
            let src = &padded[((i * s + a) * wp + j * s) * c..][..run];
            let mut kk = start;
            while kk < end {
                let (panel, lane) = (kk / NR - first, kk % NR);
                let len = (NR - lane).min(end - kk);
                let at = (panel * t + q) * NR + lane;
                let off = kk - a * run;
                // SAFETY: AVX-512F per this function's contract; len <= NR.
                unsafe { copy_upto32(&mut b[at..at + len], &src[off..off + len]) };
                kk += len;
            }
        }
    }
}

/// Weight gradient of one image in `(co, a, b, ci)` order: `dw (+)= dY * colsT(x)`, where
/// `padded` is the image's padded channels-last copy ([`super::hwc::pad_channels_last`]) and
/// `dy` is `[c_out, oh * ow]`. Overwrites `dw` when `overwrite`, else adds to it.
///
/// When the channel count is a multiple of 32, each 32-column panel of `colsT` (one tap `(a,
/// b)`, 32 consecutive channels) is read in place: its row for output pixel `(i, j)` is the 32
/// contiguous channels of padded pixel `(i*s + a, j*s + b)`, at a fixed stride along an output
/// row. Otherwise the panels are packed first.
pub(crate) fn weight_grad_image(
    g: &Geometry,
    c_out: usize,
    padded: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    overwrite: bool,
    ws: &mut Workspace,
) {
    let npix = g.out_pixels();
    // Pixels per tile: the packed output-gradient tile (c_out x t) stays within a quarter of
    // L2 (whole output rows when the columns are read in place).
    let mut tile = (TILE_FLOATS * 2 / 3 / c_out.max(1)).clamp(64, 512);
    let in_place = g.c.is_multiple_of(NR);
    if in_place {
        tile = (tile / g.ow).max(1) * g.ow;
    }
    let mut accumulate = !overwrite;
    for p0 in (0..npix).step_by(tile) {
        let t = tile.min(npix - p0);
        pack_rows(dy, c_out, t, npix, p0, &mut ws.a);
        if in_place {
            weight_grad_tile_in_place(g, c_out, padded, p0, t, &ws.a, dw, accumulate);
        } else {
            weight_grad_tile_packed(g, c_out, padded, p0, t, &ws.a, &mut ws.b, dw, accumulate);
        }
        accumulate = true;
    }
}

/// `dw (+)= A * colsT` for the output pixels `p0..p0 + t` (whole output rows), with `a` the
/// packed output-gradient tile and the columns read in place from `padded` (`g.c % 32 == 0`).
#[allow(clippy::too_many_arguments)]
fn weight_grad_tile_in_place(
    g: &Geometry,
    c_out: usize,
    padded: &[f32],
    p0: usize,
    t: usize,
    a: &[f32],
    dw: &mut [f32],
    accumulate: bool,
) {
    let (k, c, s) = (g.k(), g.c, g.stride);
    let wp = g.w + 2 * g.pad_w;
    let (i0, out_rows) = (p0 / g.ow, t / g.ow);
    debug_assert!(c.is_multiple_of(NR) && p0.is_multiple_of(g.ow) && t.is_multiple_of(g.ow));
    for (cb, ap) in a.chunks_exact(t * MR).enumerate() {
        let rows = MR.min(c_out - cb * MR);
        for col0 in (0..k).step_by(NR) {
            let (ta, tb, ci0) = (col0 / (g.kw * c), col0 / c % g.kw, col0 % c);
            let first = ((i0 * s + ta) * wp + tb) * c + ci0;
            // The last row read starts here and holds 32 floats of the same pixel.
            let last = first + ((out_rows - 1) * s * wp + (g.ow - 1) * s) * c;
            assert!(last + NR <= padded.len(), "conv2d weight gradient: columns");
            let b = BRows {
                ptr: padded[first..].as_ptr(),
                step: s * c,
                run: g.ow,
                run_stride: s * wp * c,
                runs: out_rows,
                block_stride: 0,
                blocks: 1,
            };
            let cc = &mut dw[cb * MR * k + col0..];
            // SAFETY: `available()` checked AVX-512F; A holds t steps; every row of B is 32
            // floats of one padded pixel (checked above for the last); the tile's rows x 32
            // columns lie inside `dw` (row stride k, col0 + 32 <= k).
            unsafe {
                conv_avx512_8x32(
                    ap.as_ptr(),
                    b,
                    cc.as_mut_ptr(),
                    k,
                    rows,
                    NR,
                    None,
                    accumulate,
                )
            };
        }
    }
}

/// `dw (+)= A * colsT` for the output pixels `p0..p0 + t`, packing the columns group by group
/// of panels (as many as fit the tile budget, so a long K does not shorten the reduction of
/// each micro-kernel call).
#[allow(clippy::too_many_arguments)]
fn weight_grad_tile_packed(
    g: &Geometry,
    c_out: usize,
    padded: &[f32],
    p0: usize,
    t: usize,
    a: &[f32],
    b: &mut Vec<f32>,
    dw: &mut [f32],
    accumulate: bool,
) {
    let k = g.k();
    let kpanels = k.div_ceil(NR);
    let group = (TILE_FLOATS / (t * NR)).clamp(1, kpanels);
    for first in (0..kpanels).step_by(group) {
        let count = group.min(kpanels - first);
        b.resize(count * t * NR, 0.0);
        // SAFETY: `available()` checked AVX-512F.
        unsafe { pack_rows_t(g, padded, p0, t, first, count, b) };
        for (cb, ap) in a.chunks_exact(t * MR).enumerate() {
            let rows = MR.min(c_out - cb * MR);
            for (kp, bp) in b.chunks_exact(t * NR).take(count).enumerate() {
                let col0 = (first + kp) * NR;
                let cols = NR.min(k - col0);
                let cc = &mut dw[cb * MR * k + col0..];
                // SAFETY: `available()` checked AVX-512F; the packs hold t steps; the tile's
                // rows x cols lie inside `dw` (row stride k).
                unsafe {
                    conv_avx512_8x32(
                        ap.as_ptr(),
                        BRows::packed(bp.as_ptr(), t),
                        cc.as_mut_ptr(),
                        k,
                        rows,
                        cols,
                        None,
                        accumulate,
                    );
                }
            }
        }
    }
}
