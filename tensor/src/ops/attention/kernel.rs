//! The per-head kernels of [`super`], written once for any [`SimdF32`] of `L` lanes. Query rows
//! are taken `L` at a time, **one query per lane**: the softmax over keys is then lane-wise
//! (no horizontal max or sum), and every product broadcasts one key or value entry across the
//! block's queries, so no lane is wasted however few channels a head has (8 in the benchmark
//! UNet, where a vector over channels would leave half of a 16-lane register empty). On
//! AVX-512 the "vector" is a pair of registers (`L = 32`): an FMA that broadcasts its own
//! operand from memory runs at about two thirds of the FMA peak, and a pair broadcasts each
//! entry once for two FMAs.
//!
//! For a block with its scaled queries transposed to `qt [d][L]`:
//! - forward: `s_j = sum_c k_jc qt_c` (the block's scores against key `j`), `m = max_j s_j`,
//!   `p_j = e^(s_j - m)`, `l = sum_j p_j`, `o_c = (sum_j p_j v_jc) / l` and `lse = m + ln l`;
//! - backward, with `gt [dv][L]` the output gradient transposed and `D = g . o` per query:
//!   `p_j = e^(s_j - lse)`, `dp_j = sum_c v_jc gt_c`, `ds_j = p_j (dp_j - D)` and
//!   `dq_c = scale sum_j ds_j k_jc`; then, once per chunk of blocks, the key and value gradients
//!   `dk_jc += sum_i ds_ij qt_ic` and `dv_jc += sum_i p_ij gt_ic` over the chunk's queries `i`
//!   (lane-wise products over the blocks, then one sum across lanes).

use std::cell::RefCell;
use std::ops::Range;

use super::tiles::{
    block_products, block_times, key_tile_products, row_dots, CHANS, KEYS, KEY_TILE,
};
use super::Dims;
use crate::kernels::cpu::Isa;
use crate::ops::par::SendPtr;
use crate::ops::simd::SimdF32;
use crate::ops::vmath::exp2_nonpositive;

/// Floats of probabilities (and as many of score gradients) a backward chunk keeps.
const CHUNK_FLOATS: usize = 1 << 16;

/// A `[rows, width]` matrix inside a larger tensor: entry `(i, c)` is
/// `data[start + i row_stride + c col_stride]`. Heads of `[B, L, H w]` tensors have
/// `col_stride` 1 (each row contiguous); heads of `[B, H w, L]` tensors have `row_stride` 1
/// (each channel contiguous).
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub(super) data: &'a [f32],
    pub(super) start: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
    pub(super) width: usize,
}

impl Rows<'_> {
    /// Row `i` into `dst` (`width` values).
    #[inline(always)]
    fn row_into(self, i: usize, dst: &mut [f32]) {
        let at = self.start + i * self.row_stride;
        if self.col_stride == 1 {
            copy_short(&self.data[at..at + self.width], dst);
        } else {
            for (c, d) in dst[..self.width].iter_mut().enumerate() {
                *d = self.data[at + c * self.col_stride];
            }
        }
    }

    /// All `dst.len() / width` rows, one after another, into `dst`: the keys of
    /// [`transposed_keys`] eight at a time by 8x8 transposes (each row's eight values come
    /// from eight places), the rest entry by entry.
    fn rows_into(self, dst: &mut [f32]) {
        let n = dst.len() / self.width;
        let blocks = transposed_keys(self.width, self.row_stride, n);
        if blocks > 0 {
            let end = self.start + 7 * self.col_stride + blocks;
            assert!(end <= self.data.len(), "attention: rows out of range");
        }
        #[cfg(target_arch = "x86_64")]
        for j in (0..blocks).step_by(8) {
            // SAFETY: the CPU has AVX (`transposed_keys`); the eight channels hold keys
            // j..j + 8 (checked above), and `dst` eight rows of 8 from j * 8.
            unsafe {
                crate::ops::transpose::x86::transpose_8x8(
                    self.data.as_ptr().add(self.start + j),
                    self.col_stride,
                    dst[j * 8..(j + 8) * 8].as_mut_ptr(),
                    8,
                )
            };
        }
        for (i, row) in dst.chunks_exact_mut(self.width).enumerate().skip(blocks) {
            self.row_into(i, row);
        }
    }

    /// Asks for the entries of rows `rows` to be brought into cache (a head's rows or channels
    /// are scattered over a larger tensor, so the next block's are fetched while this one
    /// computes): one address per row, or per channel when the channels are contiguous.
    #[inline(always)]
    fn prefetch(self, rows: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            let fetch = |at: usize| {
                if at < self.data.len() {
                    // SAFETY: a prefetch of an address inside the slice; it never faults.
                    unsafe {
                        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                        _mm_prefetch::<_MM_HINT_T0>(self.data.as_ptr().add(at).cast());
                    }
                }
            };
            if self.row_stride == 1 {
                for c in 0..self.width {
                    fetch(self.start + rows.start + c * self.col_stride);
                }
            } else {
                for i in rows {
                    fetch(self.start + i * self.row_stride);
                }
            }
        }
    }
}

/// The keys, from the first, that [`Rows::rows_into`] and [`RowsOut::put_rows`] move by 8x8
/// transposes: every whole block of eight of the `n`, where a head's eight channels are each
/// contiguous (`row_stride` 1, a head of a `[B, H w, L]` tensor) on a CPU with AVX; else none.
fn transposed_keys(width: usize, row_stride: usize, n: usize) -> usize {
    let fits = width == 8 && row_stride == 1;
    if cfg!(target_arch = "x86_64") && fits && crate::kernels::cpu::isa() != Isa::Portable {
        n / 8 * 8
    } else {
        0
    }
}

/// An output matrix written by several tasks, each its own rows (laid out as [`Rows`]).
#[derive(Clone, Copy)]
pub(super) struct RowsOut<'a> {
    pub(super) data: &'a SendPtr,
    pub(super) len: usize,
    pub(super) start: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
    pub(super) width: usize,
}

impl RowsOut<'_> {
    /// Writes entry `(i, c)`.
    ///
    /// # Safety
    /// No other task may write row `i` meanwhile.
    #[inline(always)]
    unsafe fn set(self, i: usize, c: usize, x: f32) {
        let at = self.start + i * self.row_stride + c * self.col_stride;
        assert!(at < self.len, "attention: output entry out of range");
        // SAFETY: in range (checked above); the caller owns the row.
        unsafe { *self.data.0.add(at) = x };
    }

    /// Writes `values` (rows of `width`, one after another) as rows `0..`, as
    /// [`Rows::rows_into`] reads them.
    ///
    /// # Safety
    /// No other task may write these rows meanwhile.
    pub(super) unsafe fn put_rows(self, values: &[f32]) {
        let n = values.len() / self.width;
        let blocks = transposed_keys(self.width, self.row_stride, n);
        if blocks > 0 {
            let end = self.start + 7 * self.col_stride + blocks;
            assert!(end <= self.len, "attention: output rows out of range");
        }
        #[cfg(target_arch = "x86_64")]
        for j in (0..blocks).step_by(8) {
            // SAFETY: the CPU has AVX (`transposed_keys`); the eight channels' keys j..j + 8
            // lie inside the output (checked above) and are the caller's; `values` holds
            // eight rows of 8 from j * 8.
            unsafe {
                crate::ops::transpose::x86::transpose_8x8(
                    values[j * 8..(j + 8) * 8].as_ptr(),
                    8,
                    self.data.0.add(self.start + j),
                    self.col_stride,
                )
            };
        }
        for (i, row) in values.chunks_exact(self.width).enumerate().skip(blocks) {
            // SAFETY: the caller's rows.
            unsafe { self.put(i, row) };
        }
    }

    /// Writes `values` (`width` of them) as row `i`.
    ///
    /// # Safety
    /// No other task may write row `i` meanwhile.
    #[inline(always)]
    pub(super) unsafe fn put(self, i: usize, values: &[f32]) {
        for (c, &x) in values[..self.width].iter().enumerate() {
            // SAFETY: the caller's row.
            unsafe { self.set(i, c, x) };
        }
    }
}

/// Blocks of `lanes` query rows per backward chunk for `dm` (at least one; depends on the
/// shape and the vector width only, so the sums' order does not depend on the threads).
fn chunk_blocks(dm: Dims) -> usize {
    (CHUNK_FLOATS / (dm.lk * dm.lanes)).clamp(1, 16)
}

/// Per-thread buffers, reused from head to head while the sizes stay the same.
pub(super) struct Workspace {
    dims: Dims,
    /// The head's keys `[lk, d]` and values `[lk, dv]`, contiguous.
    k: Vec<f32>,
    v: Vec<f32>,
    /// Per block of a chunk: the scaled queries `[d][L]`, output gradients `[dv][L]`,
    /// probabilities and scores' gradients `[lk][L]`.
    qt: Vec<f32>,
    gt: Vec<f32>,
    p: Vec<f32>,
    ds: Vec<f32>,
    /// One block's results `[max(d, dv)][L]` before they are written out, and one value per
    /// lane.
    out: Vec<f32>,
    lane: Vec<f32>,
    /// The key and value gradients `[lk, d]`, `[lk, dv]` summed so far.
    pub(super) dk: Vec<f32>,
    pub(super) dv: Vec<f32>,
}

impl Workspace {
    fn new(dm: Dims) -> Workspace {
        let (l, c) = (dm.lanes, chunk_blocks(dm));
        Workspace {
            dims: dm,
            k: vec![0.0; dm.lk * dm.d],
            v: vec![0.0; dm.lk * dm.dv],
            qt: vec![0.0; c * dm.d * l],
            gt: vec![0.0; c * dm.dv * l],
            p: vec![0.0; c * dm.lk * l],
            ds: vec![0.0; c * dm.lk * l],
            out: vec![0.0; dm.d.max(dm.dv) * l],
            lane: vec![0.0; l],
            dk: vec![0.0; dm.lk * dm.d],
            dv: vec![0.0; dm.lk * dm.dv],
        }
    }
}

/// Workspaces a thread keeps, for as many different sizes (a UNet attends at two resolutions,
/// and rebuilding a workspace at each switch would fault its pages in again).
const KEPT_SIZES: usize = 4;

thread_local! {
    static WORKSPACES: RefCell<Vec<Workspace>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's workspace for `dm` holding the head's keys `k` and values `v`
/// (built on first use of these sizes, the least recently used of [`KEPT_SIZES`] dropped; a
/// fresh one if this thread's are in use higher up the stack, as when rayon runs another task
/// while this one waits).
pub(super) fn with_workspace<T>(
    dm: Dims,
    k: Rows<'_>,
    v: Rows<'_>,
    f: impl FnOnce(&mut Workspace) -> T,
) -> T {
    let run = |w: &mut Workspace| {
        k.rows_into(&mut w.k);
        v.rows_into(&mut w.v);
        f(w)
    };
    WORKSPACES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            // Most recently used last.
            let w = match kept.iter().position(|w| w.dims == dm) {
                Some(i) => kept.remove(i),
                None => Workspace::new(dm),
            };
            if kept.len() == KEPT_SIZES {
                kept.remove(0);
            }
            kept.push(w);
            run(kept.last_mut().expect("just pushed"))
        }
        Err(_) => run(&mut Workspace::new(dm)),
    })
}

/// `dst = src` for short rows: eight values at a time in registers (a call to `memmove` per
/// row of a few values would cost more than the copy).
#[inline(always)]
fn copy_short(src: &[f32], dst: &mut [f32]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let s: &[f32; 8] = s.try_into().expect("eight values");
        d.copy_from_slice(s);
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = *s;
    }
}

/// `log2(e)`: scores times this are in base 2 (see [`exp2_nonpositive`]).
const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// Rows `i0..i0 + nb` (`nb <= L`) of `x`, times `scale`, transposed into `out [width][L]`;
/// the lanes past `nb` are 0.
#[inline(always)]
fn load_block(x: Rows<'_>, i0: usize, nb: usize, scale: f32, l: usize, out: &mut [f32]) {
    let out = &mut out[..x.width * l];
    if x.row_stride == 1 {
        // Channels contiguous: each channel's run of the block's rows is one lane row.
        for (c, lanes) in out.chunks_exact_mut(l).enumerate() {
            let at = x.start + c * x.col_stride + i0;
            for (o, &val) in lanes.iter_mut().zip(&x.data[at..at + nb]) {
                *o = val * scale;
            }
            lanes[nb..].fill(0.0);
        }
        return;
    }
    for lane in 0..l {
        if lane < nb {
            let at = x.start + (i0 + lane) * x.row_stride;
            for (c, &val) in x.data[at..at + x.width].iter().enumerate() {
                out[c * l + lane] = val * scale;
            }
        } else {
            for c in 0..x.width {
                out[c * l + lane] = 0.0;
            }
        }
    }
}

/// Writes the first `nb` lanes of the block `out [width][L]` as rows `i0..` of `dst`.
///
/// # Safety
/// The rows must be this task's alone.
#[inline(always)]
unsafe fn write_block(out: &[f32], l: usize, dst: RowsOut<'_>, i0: usize, nb: usize) {
    if dst.row_stride == 1 {
        // Channels contiguous: each lane row is one run of the output.
        for (c, lanes) in out.chunks_exact(l).take(dst.width).enumerate() {
            let at = dst.start + c * dst.col_stride + i0;
            assert!(at + nb <= dst.len, "attention: output entry out of range");
            // SAFETY: in range (checked above); the caller's rows.
            unsafe { std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst.data.0.add(at), nb) };
        }
        return;
    }
    for lane in 0..nb {
        for c in 0..dst.width {
            // SAFETY: the caller's rows.
            unsafe { dst.set(i0 + lane, c, out[c * l + lane]) };
        }
    }
}

/// The forward pass over query rows `rows` of one head (its keys and values in `ws`):
/// writes those rows of `o` and their log-sum-exps `lse[..rows.len()]`.
///
/// # Safety
/// Rows `rows` of `o` must be this task's alone.
#[inline(always)]
pub(super) unsafe fn forward_rows<V: SimdF32>(
    dm: Dims,
    rows: Range<usize>,
    q: Rows<'_>,
    scale: f32,
    ws: &mut Workspace,
    o: RowsOut<'_>,
    lse: &mut [f32],
) {
    let (l, lk) = (V::LANES, dm.lk);
    let mut i0 = rows.start;
    while i0 < rows.end {
        let nb = (rows.end - i0).min(l);
        load_block(q, i0, nb, scale, l, &mut ws.qt);
        q.prefetch(i0 + nb..(i0 + nb + l).min(rows.end));
        // Scores, and their maximum per lane.
        let mut mx = V::splat(f32::NEG_INFINITY);
        let mut j0 = 0;
        while j0 + KEYS <= lk {
            let s = row_dots::<V, KEYS>(&ws.k, dm.d, j0, &ws.qt);
            for (u, x) in s.iter().enumerate() {
                x.store(&mut ws.p[(j0 + u) * l..]);
            }
            let m01 = s[0].max_(s[1]).max_(s[2].max_(s[3]));
            let m23 = s[4].max_(s[5]).max_(s[6].max_(s[7]));
            mx = mx.max_(m01.max_(m23));
            j0 += KEYS;
        }
        for j in j0..lk {
            let [s] = row_dots::<V, 1>(&ws.k, dm.d, j, &ws.qt);
            s.store(&mut ws.p[j * l..]);
            mx = mx.max_(s);
        }
        // Probabilities (unnormalised) and their sums, even and odd keys apart (two chains of
        // additions in flight).
        let (mut even, mut odd) = (V::splat(0.0), V::splat(0.0));
        // e^(s - max) = 2^(s log2(e) - max log2(e)).
        let (log2e, shift) = (V::splat(LOG2_E), mx * V::splat(-LOG2_E));
        let mut pairs = ws.p[..lk * l].chunks_exact_mut(2 * l);
        for pj in &mut pairs {
            let e0 = exp2_nonpositive(V::load(pj).mul_add(log2e, shift));
            let e1 = exp2_nonpositive(V::load(&pj[l..]).mul_add(log2e, shift));
            e0.store(pj);
            e1.store(&mut pj[l..]);
            even = even + e0;
            odd = odd + e1;
        }
        let last = pairs.into_remainder();
        if !last.is_empty() {
            let e0 = exp2_nonpositive(V::load(last).mul_add(log2e, shift));
            e0.store(last);
            even = even + e0;
        }
        let sum = even + odd;
        block_times::<V>((&ws.p, l), &ws.v, dm.dv, V::splat(1.0) / sum, &mut ws.out);
        // SAFETY: the caller's rows.
        unsafe { write_block(&ws.out, l, o, i0, nb) };
        let (mut mb, mut sb) = ([0.0f32; 32], [0.0f32; 32]);
        mx.store(&mut mb);
        sum.store(&mut sb);
        for lane in 0..nb {
            lse[i0 - rows.start + lane] = mb[lane] + sb[lane].ln();
        }
        i0 += nb;
    }
}

/// One head's inputs to the backward pass besides the keys and values: queries, outputs,
/// output gradients (rows of each) and the rows' log-sum-exps.
#[derive(Clone, Copy)]
pub(super) struct BackwardInputs<'a> {
    pub(super) q: Rows<'a>,
    pub(super) o: Rows<'a>,
    pub(super) g: Rows<'a>,
    pub(super) lse: &'a [f32],
}

/// The backward pass over query rows `rows` of one head (its keys and values in `ws`): writes
/// those rows of `dq` and adds their contributions to `ws.dk` and `ws.dv`.
///
/// # Safety
/// Rows `rows` of `dq` must be this task's alone.
#[inline(always)]
pub(super) unsafe fn backward_rows<V: SimdF32>(
    dm: Dims,
    rows: Range<usize>,
    x: BackwardInputs<'_>,
    scale: f32,
    ws: &mut Workspace,
    dq: RowsOut<'_>,
) {
    let (l, lk, d, dv) = (V::LANES, dm.lk, dm.d, dm.dv);
    let chunk = chunk_blocks(dm);
    let mut b = 0;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let nb = (rows.end - i0).min(l);
        load_block(x.q, i0, nb, scale, l, &mut ws.qt[b * d * l..]);
        load_block(x.g, i0, nb, 1.0, l, &mut ws.gt[b * dv * l..]);
        let next = i0 + nb..(i0 + nb + l).min(rows.end);
        for r in [x.q, x.g, x.o] {
            r.prefetch(next.clone());
        }
        // D = g . o per query, lane-wise over the transposed blocks (each lane's products
        // added in channel order, as a dot product of its rows would add them; padding lanes
        // 0); padding lanes get lse = +inf, so that their p and ds are 0.
        load_block(x.o, i0, nb, 1.0, l, &mut ws.out);
        let mut dvec = V::splat(0.0);
        for (g, o) in ws.gt[b * dv * l..][..dv * l]
            .chunks_exact(l)
            .zip(ws.out.chunks_exact(l))
        {
            dvec = dvec + V::load(g) * V::load(o);
        }
        for lane in 0..l {
            ws.lane[lane] = if lane < nb {
                x.lse[i0 + lane]
            } else {
                f32::INFINITY
            };
        }
        // e^(s - lse) = 2^(s log2(e) - lse log2(e)); padding lanes get -inf, so 0.
        let (log2e, shift) = (V::splat(LOG2_E), V::load(&ws.lane) * V::splat(-LOG2_E));
        let (qt, gt) = (&ws.qt[b * d * l..], &ws.gt[b * dv * l..]);
        // Key j's vectors of block b at (j chunk + b) L: the chunk's blocks side by side.
        let at = |j: usize| (j * chunk + b) * l;
        let (pb, dsb) = (&mut ws.p, &mut ws.ds);
        // p and ds for a tile of keys: the scores first, then the probabilities' gradients.
        let mut j0 = 0;
        while j0 < lk {
            let keys = if j0 + KEYS <= lk { KEYS } else { 1 };
            let s: [V; KEYS] = if keys == KEYS {
                row_dots::<V, KEYS>(&ws.k, d, j0, qt)
            } else {
                [row_dots::<V, 1>(&ws.k, d, j0, qt)[0]; KEYS]
            };
            for (u, &s) in s.iter().enumerate().take(keys) {
                exp2_nonpositive(s.mul_add(log2e, shift)).store(&mut pb[at(j0 + u)..]);
            }
            let dp: [V; KEYS] = if keys == KEYS {
                row_dots::<V, KEYS>(&ws.v, dv, j0, gt)
            } else {
                [row_dots::<V, 1>(&ws.v, dv, j0, gt)[0]; KEYS]
            };
            for (u, &dp) in dp.iter().enumerate().take(keys) {
                let at = at(j0 + u);
                (V::load(&pb[at..]) * (dp - dvec)).store(&mut dsb[at..]);
            }
            j0 += keys;
        }
        block_times::<V>(
            (&dsb[b * l..], chunk * l),
            &ws.k,
            d,
            V::splat(scale),
            &mut ws.out,
        );
        // SAFETY: the caller's rows.
        unsafe { write_block(&ws.out, l, dq, i0, nb) };
        b += 1;
        i0 += nb;
        if b == chunk || i0 >= rows.end {
            add_key_grads::<V>(dm, b, ws);
            b = 0;
        }
    }
}

/// Adds the chunk's key and value gradients (its first `nb` blocks) to `ws.dk` and `ws.dv`.
#[inline(always)]
fn add_key_grads<V: SimdF32>(dm: Dims, nb: usize, ws: &mut Workspace) {
    let (lk, chunk) = (dm.lk, chunk_blocks(dm));
    for (x, y, w, grad) in [
        (&ws.ds, &ws.qt, dm.d, &mut ws.dk),
        (&ws.p, &ws.gt, dm.dv, &mut ws.dv),
    ] {
        let mut j = 0;
        if w == CHANS {
            // Two keys at a time: each block's eight vectors of `y` loaded once for both.
            while j + KEY_TILE <= lk {
                let sums = key_tile_products::<V, KEY_TILE>((x, chunk), j, y, nb);
                let rows = grad[j * w..(j + KEY_TILE) * w].chunks_exact_mut(w);
                for (row, sums) in rows.zip(sums) {
                    for (g, s) in row.iter_mut().zip(V::lane_sums8(sums)) {
                        *g += s;
                    }
                }
                j += KEY_TILE;
            }
        }
        for j in j..lk {
            let row = &mut grad[j * w..(j + 1) * w];
            let mut c0 = 0;
            while c0 + CHANS <= w {
                let sums = V::lane_sums8(block_products::<V, CHANS>((x, chunk), j, y, w, c0, nb));
                for (g, s) in row[c0..c0 + CHANS].iter_mut().zip(sums) {
                    *g += s;
                }
                c0 += CHANS;
            }
            for (c, g) in row.iter_mut().enumerate().skip(c0) {
                let [acc] = block_products::<V, 1>((x, chunk), j, y, w, c, nb);
                *g += acc.lane_sum();
            }
        }
    }
}
