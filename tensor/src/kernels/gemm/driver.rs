//! The blocked driver: the GotoBLAS loops around the micro-kernel, and the threading.
//!
//! ```text
//! for jc in 0..n step NC                      columns of C and B
//!   for each run of K slices (KC deep)        as many as fit in PACK_BUDGET, in order
//!     for ic in 0..m step chunk               rows of C and A
//!       pack A[ic.., run] (and, for the first chunk, B[run, jc..])   one parallel pass
//!       for each task: MC rows x NT columns of the chunk             the parallel loop
//!         for each K slice of the run, in order
//!           for ir in task rows step MR       micro-panel of A: stays in L1
//!             for jr in task columns step NR  micro-panels of B: stay in L2
//!               micro-kernel: C[ir.., jr..] = alpha * A~ B~ + beta' * C[ir.., jr..]
//! ```
//!
//! `beta' = beta` for the first K slice and 1 afterwards, so C is read only when the caller
//! asked for it. Each element of C belongs to exactly one task and receives its K slices in
//! order, so the result does not depend on how tasks are spread over threads (nor on how the
//! tasks are cut). Packed B is shared by every task. Small products (below
//! [`PARALLEL_MIN_MNK`]) run on the calling thread without touching rayon.

use std::cell::Cell;

use rayon::prelude::*;

use super::blocking::Config;
use super::{pack, Trans};

/// Products with `m * n * k` below this run serially. A fork-join costs microseconds (tens
/// when the workers must be woken), and a product crosses at least two; 2^21 multiply-adds
/// take about 40 microseconds on one Zen 4 core.
pub(super) const PARALLEL_MIN_MNK: usize = 1 << 21;

/// How many `MC` blocks of A are packed at once when threads share the work.
const MC_PER_CHUNK: usize = 16;

/// The operands of one product (everything but C).
#[derive(Clone, Copy)]
pub(super) struct Operands<'a> {
    pub transa: Trans,
    pub transb: Trans,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: &'a [f32],
    pub lda: usize,
    pub b: &'a [f32],
    pub ldb: usize,
    pub beta: f32,
}

/// A pointer to C that tasks may share: each task writes a disjoint set of tiles.
#[derive(Clone, Copy)]
struct TilePtr(*mut f32);
// SAFETY: tasks write disjoint tiles of C, and the borrow of C outlives every task.
unsafe impl Send for TilePtr {}
unsafe impl Sync for TilePtr {}

impl TilePtr {
    /// The element `offset` floats past the start of C.
    ///
    /// # Safety
    /// `offset` must lie inside C.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: forwarded to the caller.
        unsafe { self.0.add(offset) }
    }
}

/// `C = alpha op(A) op(B) + beta C` with the kernel and blocks of `cfg`. The operands' sizes
/// must have been checked against their slices. `threads` allows the use of the current rayon
/// pool (it is used only for products large enough to pay for it).
pub(super) fn gemm(cfg: &Config, op: &Operands, c: &mut [f32], ldc: usize, threads: bool) {
    let Operands { m, n, k, .. } = *op;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || op.alpha == 0.0 {
        scale(c, ldc, m, n, op.beta);
        return;
    }
    let parallel = threads
        && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_MNK
        && rayon::current_num_threads() > 1;
    let (mr, nr) = (cfg.mr, cfg.nr);
    // Equal K slices of at most KC: a short last slice would waste a pass over C.
    let slices = k.div_ceil(cfg.kc);
    let kc = k.div_ceil(slices);
    let nc = cfg.nc.min(n.next_multiple_of(nr));
    let m_chunk = if parallel {
        cfg.mc * MC_PER_CHUNK
    } else {
        cfg.mc
    };
    let m_chunk = m_chunk.min(m.next_multiple_of(mr));
    // Slices packed per pass: as many as fit in the budget, so that small products cross
    // few fork-join barriers.
    let group = (PACK_BUDGET / (kc * (nc + m_chunk))).clamp(1, slices);
    let b_len = (group * kc * nc).next_multiple_of(16);
    let c_ptr = TilePtr(c.as_mut_ptr());

    with_buffer(b_len + group * kc * m_chunk, |buf| {
        let (b_buf, a_buf) = buf.split_at_mut(b_len);
        for jc in (0..n).step_by(nc) {
            let n_cur = (n - jc).min(nc);
            for first in (0..slices).step_by(group) {
                let ks = Slices {
                    first,
                    count: group.min(slices - first),
                    kc,
                    k,
                };
                let b_pack = &mut b_buf[..ks.count * n_cur.div_ceil(nr) * kc * nr];
                for (chunk, ic) in (0..m).step_by(m_chunk).enumerate() {
                    let m_cur = (m - ic).min(m_chunk);
                    let a_pack = &mut a_buf[..ks.count * m_cur.div_ceil(mr) * kc * mr];
                    // The panels of B are packed together with the first chunk of A.
                    let b_new: &mut [f32] = if chunk == 0 { b_pack } else { &mut [] };
                    pack_panels(
                        cfg,
                        op,
                        parallel,
                        ks,
                        (jc, n_cur, b_new),
                        (ic, m_cur, a_pack),
                    );
                    let block = Block {
                        ic,
                        jc,
                        m_cur,
                        n_cur,
                        ks,
                        a_pack,
                        b_pack,
                    };
                    compute_block(cfg, op, &block, c_ptr, ldc, parallel);
                }
            }
        }
    });
}

/// Floats of packed A and B one pass may hold (4 MiB): a few K slices of a small product,
/// one slice of a large one.
const PACK_BUDGET: usize = 1 << 20;

/// A run of consecutive K slices: slice `s` covers `s * kc .. min((s + 1) * kc, k)`.
#[derive(Clone, Copy)]
struct Slices {
    first: usize,
    count: usize,
    kc: usize,
    k: usize,
}

impl Slices {
    /// Start and depth of the `t`-th slice of the run.
    fn get(&self, t: usize) -> (usize, usize) {
        let pc = (self.first + t) * self.kc;
        (pc, self.kc.min(self.k - pc))
    }
}

/// Packs micro-panels of B (columns `jc .. jc + n_cur`) and of A (rows `ic .. ic + m_cur`)
/// for the K slices `ks` into the given buffers (either may be empty), in one parallel pass
/// if `parallel`. Panel `j` of slice `t` starts at `(t * panels + j) * kc * width`.
fn pack_panels(
    cfg: &Config,
    op: &Operands,
    parallel: bool,
    ks: Slices,
    (jc, n_cur, b_pack): (usize, usize, &mut [f32]),
    (ic, m_cur, a_pack): (usize, usize, &mut [f32]),
) {
    let (mr, nr, kc) = (cfg.mr, cfg.nr, ks.kc);
    let (b_panels, a_panels) = (n_cur.div_ceil(nr), m_cur.div_ceil(mr));
    let job = |(is_b, index, dst): (bool, usize, &mut [f32])| {
        if is_b {
            let (pc, depth) = ks.get(index / b_panels);
            let j0 = jc + index % b_panels * nr;
            let dst = &mut dst[..depth * nr];
            pack::pack_b(
                op.transb,
                op.b,
                op.ldb,
                j0,
                (op.n - j0).min(nr),
                pc,
                nr,
                dst,
            );
        } else {
            let (pc, depth) = ks.get(index / a_panels);
            let i0 = ic + index % a_panels * mr;
            let dst = &mut dst[..depth * mr];
            pack::pack_a(
                op.transa,
                op.a,
                op.lda,
                i0,
                (op.m - i0).min(mr),
                pc,
                mr,
                dst,
            );
        }
    };
    let b_jobs = |(j, dst)| (true, j, dst);
    let a_jobs = |(i, dst)| (false, i, dst);
    if parallel {
        let b = b_pack.par_chunks_mut(kc * nr).enumerate().map(b_jobs);
        let a = a_pack.par_chunks_mut(kc * mr).enumerate().map(a_jobs);
        b.chain(a).for_each(job);
    } else {
        let b = b_pack.chunks_mut(kc * nr).enumerate().map(b_jobs);
        let a = a_pack.chunks_mut(kc * mr).enumerate().map(a_jobs);
        b.chain(a).for_each(job);
    }
}

/// One block of C with its packed operands: rows `ic .. ic + m_cur`, columns
/// `jc .. jc + n_cur`, the K slices `ks`.
struct Block<'p> {
    ic: usize,
    jc: usize,
    m_cur: usize,
    n_cur: usize,
    ks: Slices,
    a_pack: &'p [f32],
    b_pack: &'p [f32],
}

/// Tasks a block is cut into, at least (when it is big enough): enough for rayon to balance
/// a few threads whatever their number. Results do not depend on how a block is cut.
const TASKS: usize = 16;

/// Runs the micro-kernel over every tile of `blk`, cut into tasks of at most `MC` rows by
/// `NT` columns; in parallel over tasks if `parallel`. A task takes the K slices in order;
/// inside a slice, each micro-panel of A (in L1) meets every micro-panel of B of the task's
/// columns (in L2) in turn.
fn compute_block(
    cfg: &Config,
    op: &Operands,
    blk: &Block,
    c_ptr: TilePtr,
    ldc: usize,
    parallel: bool,
) {
    let (mr, nr, kc) = (cfg.mr, cfg.nr, blk.ks.kc);
    let (a_panels, b_panels) = (blk.m_cur.div_ceil(mr), blk.n_cur.div_ceil(nr));
    let row_tasks = blk.m_cur.div_ceil(cfg.mc);
    let col_tasks = TASKS.div_ceil(row_tasks);
    // Task width rounded down to whole micro-panels, so that there are at least `col_tasks`
    // tasks (rounding up could leave, say, 9 tasks for 2 threads where 18 fit).
    let nt = ((blk.n_cur / col_tasks / nr).max(1) * nr).min(cfg.nt);
    let col_tasks = blk.n_cur.div_ceil(nt);
    let task = |t: usize| {
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let rows = rt * cfg.mc..blk.m_cur.min((rt + 1) * cfg.mc);
        let cols = ct * nt..blk.n_cur.min((ct + 1) * nt);
        for s in 0..blk.ks.count {
            let (pc, depth) = blk.ks.get(s);
            let beta = if pc == 0 { op.beta } else { 1.0 };
            for ir in rows.clone().step_by(mr) {
                let a_at = (s * a_panels + ir / mr) * kc * mr;
                let a_panel = &blk.a_pack[a_at..a_at + depth * mr];
                for jr in cols.clone().step_by(nr) {
                    let b_at = (s * b_panels + jr / nr) * kc * nr;
                    let b_panel = &blk.b_pack[b_at..b_at + depth * nr];
                    let tile = (blk.ic + ir) * ldc + blk.jc + jr;
                    // SAFETY: the panels hold `depth` groups of MR and NR values; the tile's
                    // (m_cur - ir).min(mr) x (n_cur - jr).min(nr) corner is inside C (checked
                    // by the caller) and belongs to this task alone.
                    unsafe {
                        (cfg.kernel)(
                            depth,
                            op.alpha,
                            a_panel.as_ptr(),
                            b_panel.as_ptr(),
                            beta,
                            c_ptr.at(tile),
                            ldc,
                            (blk.m_cur - ir).min(mr),
                            (blk.n_cur - jr).min(nr),
                        );
                    }
                }
            }
        }
    };
    let tasks = row_tasks * col_tasks;
    if parallel {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// `C = beta C` (zeros when `beta == 0`, without reading C).
fn scale(c: &mut [f32], ldc: usize, m: usize, n: usize, beta: f32) {
    for row in c.chunks_mut(ldc).take(m) {
        let row = &mut row[..n];
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|x| *x *= beta);
        }
    }
}

/// One cache line of f32s: the unit of the packing buffers, so that panels start 64-byte
/// aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// The packing buffer of this thread, kept between calls to avoid page faults.
    static BUFFER: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a 64-byte aligned scratch buffer of `len` floats (contents unspecified). A
/// nested call on the same thread (rayon may run another product while this one waits) gets a
/// fresh buffer.
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut lines = BUFFER.with(Cell::take);
    if lines.len() * 16 < len {
        lines = vec![Line([0.0; 16]); len.div_ceil(16)];
    }
    // SAFETY: `Line` is 16 plain f32s with no padding, and `lines` holds at least `len` floats.
    let floats = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), len) };
    let result = f(floats);
    BUFFER.with(|cell| {
        let other = cell.take();
        cell.set(if other.len() > lines.len() {
            other
        } else {
            lines
        });
    });
    result
}
