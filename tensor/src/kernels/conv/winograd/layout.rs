//! Moving tiles between images and the transform buffers: gathering each tile's patch (or
//! output-gradient block) into one column of 36 (or 16) rows, and scattering output tiles back
//! into the image.

use std::mem::MaybeUninit;

use super::{tiles, Conv2dParams};
use crate::kernels::cpu::{self, Isa};
use crate::ops::transpose::transpose4x4;

/// `dst = src` for runs of the lengths a row of tiles has in practice, as fixed-size moves
/// rather than calls to `memcpy`.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = (&mut dst[..N]).try_into().unwrap();
        let s: &[f32; N] = src[..N].try_into().unwrap();
        *d = *s;
    }
    match dst.len() {
        1 => dst[0] = src[0],
        2 => fixed::<2>(dst, src),
        4 => fixed::<4>(dst, src),
        8 => fixed::<8>(dst, src),
        16 => fixed::<16>(dst, src),
        _ => dst.copy_from_slice(&src[..dst.len()]),
    }
}

/// `phases[dst[k] + s] = row[4s + k]` for the leading groups of 16 values of `row` (four
/// quads at a time, transposed as a 4x4 block); returns how many values were placed.
#[inline(always)]
fn split_quads(row: &[f32], phases: &mut [f32], dst: [usize; 4]) -> usize {
    let groups = row.len() / 16;
    for g in 0..groups {
        let (x, s) = (&row[16 * g..16 * g + 16], 4 * g);
        let cols = transpose4x4(std::array::from_fn(|i| &x[4 * i..]));
        for (&d, col) in dst.iter().zip(&cols) {
            phases[d + s..d + s + 4].copy_from_slice(col);
        }
    }
    16 * groups
}

/// True if the channels are gathered by [`gather_channel`] (AVX-512, images at most 32
/// wide), which reads a channel held at half the resolution (`up = 2`) itself; else by the
/// portable [`gather`], image by image, the caller upsampling the plane first.
pub(super) fn gathers_upsampled(p: &Conv2dParams) -> bool {
    cfg!(target_arch = "x86_64") && p.w <= 32 && cpu::isa() == Isa::Avx512
}

/// `rows[i * N + j][col0 + ty * tw + tx] = x[4ty + i - OFF][4tx + j - OFF]` (zero outside the
/// image) for every tile of one channel `x` (`h x w`) of one image: the 6x6 input patches
/// (`N = 6`, `OFF = 1`) or the 4x4 output blocks (`N = 4`, `OFF = 0`); the portable path of
/// [`gather_channel`]. `phases` is scratch of at least `(4 * th + 2) * 4 * (tw + 1)` values:
/// shifted row `r` (image row `r - OFF`) split by shifted column `4t + k` (image column
/// `4t + k - OFF`) into `phases[(4r + k) * (tw + 1) + t]`, zero outside the image, so that
/// each run of `rows` is contiguous there. Only the entries inside the image are written, so
/// `phases` must hold zeros elsewhere: it must start as zeros and be reused only by calls with
/// the same `p`, `N` and `OFF` (which write the same entries).
pub(super) fn gather<const N: usize, const OFF: usize>(
    p: &Conv2dParams,
    x: &[f32],
    rows: &mut [&mut [f32]],
    col0: usize,
    phases: &mut [f32],
) {
    let (th, tw) = tiles(p);
    let w = p.w;
    let run = tw + 1;
    for (y, row) in x.chunks_exact(w).enumerate() {
        let at = |k: usize| (4 * (y + OFF) + k) * run;
        // Image column 4s + k is shifted column 4s + k + OFF: phase (k + OFF) % 4 at tile
        // s + (k + OFF) / 4.
        let dst: [usize; 4] = std::array::from_fn(|k| at((k + OFF) % 4) + (k + OFF) / 4);
        let done = split_quads(row, phases, dst);
        for (x, &v) in row.iter().enumerate().skip(done) {
            let (s, k) = (x / 4, x % 4);
            phases[dst[k] + s] = v;
        }
    }
    for ty in 0..th {
        let at = col0 + ty * tw;
        for i in 0..N {
            let r = 4 * ty + i;
            for j in 0..N {
                let src = &phases[(4 * r + j % 4) * run + j / 4..];
                copy_run(&mut rows[i * N + j][at..at + tw], src);
            }
        }
    }
}

/// The permutations of [`gather_channel`] for one geometry (and `N`, `OFF`, `up`), built once
/// per convolution step rather than for every channel of every image.
///
/// Each stored vector holds the runs of `group = 16 / tw` consecutive tile rows (of
/// consecutive images where an image has fewer), made by `perms` two-source permutations,
/// instead of one partly overlapping store of `tw` useful lanes per tile row (4 of 16 at
/// 16x16, 2 at 8x8, 8 at 32x32):
/// - images more than 16 values wide (as stored): each tile row's image row in two registers
///   (`lo | hi`), one permutation per tile row;
/// - narrower ones, whose rows fit in one register: two tile rows' image rows per
///   permutation.
///
/// Against one tile row per vector, interleaved in one process (`ddpm bench unet
/// --compare-in-place` with the switch pointed at this choice), for the narrow images:
/// training steps took 1.049x as long on one thread and on two, sampling steps 1.051x and
/// 1.036x; for the wide ones too: 1.019x and 1.003-1.010x, 1.021x and 1.010-1.032x.
#[derive(Clone)]
pub(super) struct GatherPlan {
    group: usize,
    perms: usize,
    /// For run `j` and permutation `q`: lane `r tw + t` (tile row `r` of the group, `r = q`
    /// for wide images, else `2q` or `2q + 1`) takes column `4t + j - OFF` of its image row,
    /// kept (`keep`) where that column is inside the image. Index values `0..16` pick a lane
    /// of the first register (`lo`, or tile row `2q`), `16..32` of the second (`hi`, or tile
    /// row `2q + 1`).
    idx: [[[i32; 16]; 8]; 6],
    keep: [[u16; 8]; 6],
}

impl GatherPlan {
    /// The plan for `p`'s images held at `1 / up` of the resolution, gathering `N x N`
    /// patches at offset `OFF`.
    pub(super) fn new<const N: usize, const OFF: usize>(p: &Conv2dParams, up: usize) -> Self {
        let (_, tw) = tiles(p);
        let w = p.w;
        let wide = w / up > 16;
        let group = (16 / tw).max(1);
        let perms = if wide { group } else { group.div_ceil(2) };
        assert!(
            matches!(perms, 1..=4 | 8),
            "winograd gather: {perms} permutations per vector"
        );
        let mut plan = GatherPlan {
            group,
            perms,
            idx: [[[0; 16]; 8]; 6],
            keep: [[0; 8]; 6],
        };
        for j in 0..N {
            for q in 0..perms {
                let rows = if wide { q..q + 1 } else { 2 * q..2 * q + 2 };
                for r in rows {
                    for t in 0..tw {
                        let (lane, c) = (r * tw + t, (4 * t + j) as isize - OFF as isize);
                        if lane < group * tw && c >= 0 && (c as usize) < w {
                            let second = if wide { 0 } else { 16 * (r % 2) };
                            plan.idx[j][q][lane] = (c as usize / up + second) as i32;
                            plan.keep[j][q] |= 1 << lane;
                        }
                    }
                }
            }
        }
        plan
    }
}

/// [`gather`] for every image of a chunk at once on AVX-512, with images at most 32 wide:
/// channel `c`'s plane of image `n` is `images[n * image_len + at..]` (`h / up x w / up`
/// values), and its tiles go to columns `n * th * tw..` of `rows`. Reads a channel held at half
/// the resolution (`up = 2`) itself. Requires [`gathers_upsampled`]; `plan` must be
/// `GatherPlan::new::<N, OFF>(p, up)`.
pub(super) fn gather_channel<const N: usize, const OFF: usize>(
    p: &Conv2dParams,
    (images, image_len, at): (&[f32], usize, usize),
    up: usize,
    plan: &GatherPlan,
    rows: &mut [&mut [f32]],
) {
    let (th, tw) = tiles(p);
    let count = images.len() / image_len.max(1);
    let splane = p.h * p.w / (up * up);
    // The CPU's own instruction set, not the one kernels are told to use: another thread may
    // force the portable path after the caller chose this one (tests do).
    assert!(
        cfg!(target_arch = "x86_64")
            && cpu::detected_isa() == Isa::Avx512
            && p.w <= 32
            && (up == 1 || up == 2 && p.h.is_multiple_of(2) && p.w.is_multiple_of(2))
            && at + splane <= image_len
            && rows.len() >= N * N
            && rows[..N * N].iter().all(|r| r.len() >= count * th * tw),
        "winograd gather: images or rows too short"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is available (`gathers_upsampled`, which asks cpu::isa); each of the
    // `count` images holds the channel's plane from `at` (asserted above); the plan is this
    // geometry's; every row holds the count * th * tw columns (asserted above).
    unsafe {
        gather_rows_avx512::<N, OFF>(p, (images, image_len, at, count), up, plan, rows)
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("winograd gather: the fast path is x86-64's");
}

/// The body of [`gather_channel`]: the runs `x[y][4 tx + j - OFF]` (`tx < tw`, zero outside the
/// image) that row `(i, j)` needs from image row `y = 4 ty + i - OFF` of each tile row `ty` are
/// picked out of registers holding those image rows by two-source permutations with zero
/// masking, as `plan` says, and stored straight into the row, a group of tile rows at a time.
/// Upsampled (`up = 2`), a register holds source row `y / 2` and the permutation picks column
/// `x / 2`.
///
/// # Safety
/// As [`gather_channel`] asserts, with AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_rows_avx512<const N: usize, const OFF: usize>(
    p: &Conv2dParams,
    (images, image_len, at, count): (&[f32], usize, usize, usize),
    up: usize,
    plan: &GatherPlan,
    rows: &mut [&mut [f32]],
) {
    let (th, tw) = tiles(p);
    let (h, w) = (p.h, p.w);
    // The width of a stored row, and the lanes of the first and second register of one.
    let sw = w / up;
    let mask = |n: usize| ((1u32 << n.min(16)) - 1) as u16;
    let (lo_mask, hi_mask) = (mask(sw), mask(sw.saturating_sub(16)));
    let images = Images {
        data: images,
        image_len,
        at,
        th,
        tw,
        h,
        sw,
        up,
        total: count * th,
        wide: sw > 16,
        masks: (lo_mask, hi_mask),
    };
    // The permutations' count as a constant, so that their registers stay registers.
    match plan.perms {
        1 => gather_groups::<N, OFF, 1>(images, plan, rows),
        2 => gather_groups::<N, OFF, 2>(images, plan, rows),
        3 => gather_groups::<N, OFF, 3>(images, plan, rows),
        4 => gather_groups::<N, OFF, 4>(images, plan, rows),
        _ => gather_groups::<N, OFF, 8>(images, plan, rows),
    }
}

/// The images [`gather_groups`] reads: channel plane of image `n` at `data[n * image_len +
/// at..]`, `h / up` rows of `sw` values; `total` tile rows of `tw` tiles, `th` to an image.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Images<'a> {
    data: &'a [f32],
    image_len: usize,
    at: usize,
    th: usize,
    tw: usize,
    h: usize,
    sw: usize,
    up: usize,
    total: usize,
    /// Image rows in two registers each (`lo | hi`), or one.
    wide: bool,
    /// The lanes of a stored row in its first and second register.
    masks: (u16, u16),
}

/// The loops of [`gather_rows_avx512`] with the plan's `P` permutations per vector: for each
/// group of tile rows and each `i`, the `2 P` registers the permutations read (the image
/// rows of tile rows `t0 + 2q` and `t0 + 2q + 1`, or, wide, the two halves of tile row
/// `t0 + q`'s; zero outside the image) are loaded once for the `N` runs.
///
/// # Safety
/// As for [`gather_rows_avx512`], with `P` the plan's count.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_groups<const N: usize, const OFF: usize, const P: usize>(
    g: Images,
    plan: &GatherPlan,
    rows: &mut [&mut [f32]],
) {
    use std::arch::x86_64::*;
    assert_eq!(plan.perms, P, "winograd gather: the plan's permutations");
    let mask = |n: usize| ((1u32 << n.min(16)) - 1) as u16;
    let store = mask(plan.group * g.tw);
    let load = |t: usize, i: usize, half: usize| {
        let y = (4 * (t % g.th) + i) as isize - OFF as isize;
        if t < g.total && y >= 0 && (y as usize) < g.h {
            let row = (t / g.th) * g.image_len + g.at + y as usize / g.up * g.sw;
            let m = if half == 0 { g.masks.0 } else { g.masks.1 };
            _mm512_maskz_loadu_ps(m, g.data.as_ptr().add(row + 16 * half))
        } else {
            _mm512_setzero_ps()
        }
    };
    for t0 in (0..g.total).step_by(plan.group) {
        let col = t0 * g.tw;
        for i in 0..N {
            let mut src = [[_mm512_setzero_ps(); 2]; P];
            for (q, pair) in src.iter_mut().enumerate() {
                *pair = if g.wide {
                    [load(t0 + q, i, 0), load(t0 + q, i, 1)]
                } else {
                    [load(t0 + 2 * q, i, 0), load(t0 + 2 * q + 1, i, 0)]
                };
            }
            for j in 0..N {
                let mut run = _mm512_setzero_ps();
                for (q, [a, b]) in src.iter().enumerate() {
                    let index = _mm512_loadu_si512(plan.idx[j][q].as_ptr().cast());
                    let part = _mm512_permutex2var_ps(*a, index, *b);
                    run = _mm512_mask_mov_ps(run, plan.keep[j][q], part);
                }
                let row = &mut rows[i * N + j];
                if col + 16 <= row.len() {
                    // Lanes past the group's are overwritten by later tiles, or lie in the
                    // row's padding (zeroed afterwards up to the column count the transform
                    // reads; never read past it).
                    _mm512_storeu_ps(row.as_mut_ptr().add(col), run);
                } else {
                    let inside = store & mask(row.len() - col);
                    _mm512_mask_storeu_ps(row.as_mut_ptr().add(col), inside, run);
                }
            }
        }
    }
}

/// What an output plane gets added as its tiles are written: `((tile + bias) + shift) +
/// residual[i]`, each addition rounded on its own (the bits of separate additions).
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub bias: f32,
    pub shift: Option<f32>,
    /// The plane's `h x w` values.
    pub residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// The output value for `tile` at offset `i` of the plane.
    #[inline(always)]
    fn apply(&self, tile: f32, i: usize) -> f32 {
        let mut v = tile + self.bias;
        if let Some(s) = self.shift {
            v += s;
        }
        if let Some(r) = self.residual {
            v += r[i];
        }
        v
    }
}

/// `y[4ty + a][4tx + b] = rows[a * 4 + b][col0 + ty * tw + tx]` plus the epilogue for every
/// tile of one channel `y` (`h x w`) of one image, clipped at the image's edges, so that every
/// element of `y` is written (it may start uninitialised); `row` is scratch of at least
/// `4 * tw` values.
pub(super) fn scatter_tiles(
    p: &Conv2dParams,
    rows: &[&mut [f32]],
    col0: usize,
    epilogue: Epilogue,
    y: &mut [MaybeUninit<f32>],
    row: &mut [f32],
) {
    let (th, tw) = tiles(p);
    let (h, w) = (p.h, p.w);
    assert!(
        epilogue.residual.is_none_or(|r| r.len() == h * w),
        "winograd scatter: residual plane of the wrong size"
    );
    #[cfg(target_arch = "x86_64")]
    if w <= 32 && cpu::isa() == Isa::Avx512 {
        assert!(
            y.len() == h * w
                && rows.len() >= 16
                && rows[..16].iter().all(|r| r.len() >= col0 + th * tw),
            "winograd scatter: image or rows too short"
        );
        // SAFETY: AVX-512F is available (cpu::isa), the image and the residual plane (if
        // any) are h x w with w <= 32, and every row holds the th * tw columns from col0
        // (asserted above).
        unsafe { scatter_rows_avx512(p, rows, col0, epilogue, y) };
        return;
    }
    for ty in 0..th {
        let at = col0 + ty * tw;
        for a in 0..4 {
            let yy = 4 * ty + a;
            if yy >= h {
                break;
            }
            let src: [&[f32]; 4] = std::array::from_fn(|b| &rows[a * 4 + b][at..at + tw]);
            let dst = &mut y[yy * w..(yy + 1) * w];
            if w == 4 * tw {
                for (tx, out) in dst.chunks_exact_mut(4).enumerate() {
                    for b in 0..4 {
                        out[b].write(epilogue.apply(src[b][tx], yy * w + 4 * tx + b));
                    }
                }
            } else {
                // The last tile overhangs the image: the whole row of tiles in scratch first.
                for (tx, out) in row[..4 * tw].chunks_exact_mut(4).enumerate() {
                    for b in 0..4 {
                        out[b] = src[b][tx];
                    }
                }
                for (x, (d, &v)) in dst.iter_mut().zip(&row[..w]).enumerate() {
                    d.write(epilogue.apply(v, yy * w + x));
                }
            }
        }
    }
}

/// [`scatter_tiles`] for images at most 32 wide: for each image row, the four runs
/// `rows[a * 4 + b]` (`b = 0..4`, `tw <= 8` tiles each) are loaded, interleaved into the row's
/// `4 tw` values by two rounds of two-source permutations, given the epilogue and stored.
///
/// # Safety
/// AVX-512F must be available; `y` (and the epilogue's residual, if any) must be `h x w` with
/// `w <= 32`, and `rows[..16]` must each hold at least `col0 + th * tw` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scatter_rows_avx512(
    p: &Conv2dParams,
    rows: &[&mut [f32]],
    col0: usize,
    epilogue: Epilogue,
    y: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (th, tw) = tiles(p);
    let (h, w) = (p.h, p.w);
    let lane = |i: usize| i as i32;
    // Pairs: run b0 in lanes 0..8 of the result, run b1 in lanes 8..16 (lanes 16.. of the
    // two-source index pick the second register).
    let pair: [i32; 16] = std::array::from_fn(|k| if k < 8 { lane(k) } else { lane(16 + k - 8) });
    // Output value 4 tx + b: run b at tile tx, from `[r0 | r1]` (lanes 0..16) or
    // `[r2 | r3]` (lanes 16..32); the first 16 values, then the next 16.
    let out = |k: usize| {
        let (tx, b) = (k / 4, k % 4);
        lane(if b < 2 {
            b * 8 + tx
        } else {
            16 + (b - 2) * 8 + tx
        })
    };
    let lo_idx: [i32; 16] = std::array::from_fn(out);
    let hi_idx: [i32; 16] = std::array::from_fn(|k| out(16 + k));
    let (pair, lo_idx, hi_idx) = (
        _mm512_loadu_si512(pair.as_ptr().cast()),
        _mm512_loadu_si512(lo_idx.as_ptr().cast()),
        _mm512_loadu_si512(hi_idx.as_ptr().cast()),
    );
    let run_mask: u16 = ((1u32 << tw) - 1) as u16;
    let lo_mask: u16 = if w >= 16 { u16::MAX } else { (1u16 << w) - 1 };
    let hi_mask: u16 = if w <= 16 {
        0
    } else {
        ((1u32 << (w - 16)) - 1) as u16
    };
    let b = _mm512_set1_ps(epilogue.bias);
    let shift = epilogue.shift.map(|s| _mm512_set1_ps(s));
    let residual = epilogue.residual.map(|r| r.as_ptr());
    // (tile + bias), then the shift, then the residual's values at `at` (`mask` lanes).
    let finish = |v: __m512, mask: u16, at: usize| {
        let mut v = _mm512_add_ps(v, b);
        if let Some(s) = shift {
            v = _mm512_add_ps(v, s);
        }
        if let Some(r) = residual {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.add(at)));
        }
        v
    };
    let out_ptr = y.as_mut_ptr().cast::<f32>();
    for ty in 0..th {
        let at = col0 + ty * tw;
        for a in 0..4 {
            let yy = 4 * ty + a;
            if yy >= h {
                break;
            }
            let run = |r: usize| _mm512_maskz_loadu_ps(run_mask, rows[a * 4 + r].as_ptr().add(at));
            let ab = _mm512_permutex2var_ps(run(0), pair, run(1));
            let cd = _mm512_permutex2var_ps(run(2), pair, run(3));
            let dst = out_ptr.add(yy * w);
            let lo = finish(_mm512_permutex2var_ps(ab, lo_idx, cd), lo_mask, yy * w);
            _mm512_mask_storeu_ps(dst, lo_mask, lo);
            if hi_mask != 0 {
                let hi = finish(_mm512_permutex2var_ps(ab, hi_idx, cd), hi_mask, yy * w + 16);
                _mm512_mask_storeu_ps(dst.wrapping_add(16), hi_mask, hi);
            }
        }
    }
}
