//! Fused scaled dot-product attention: `O = softmax(s Q K^T) V`, forward and backward, without
//! ever holding the `L_q x L_k` score matrix of more than one row.
//!
//! The composed form (a batched product, a softmax, another product) writes the whole score
//! matrix to memory, reads it back twice, and keeps the probabilities for the backward pass:
//! with 16 heads of 8 channels over 256 positions and a batch of 16 that is 64 MiB per layer,
//! while Q, K and V together are 6 MiB. Here each query row is finished in cache, as in
//! FlashAttention (Dao et al., 2022, Algorithms 1 and 2, with one row per block):
//!
//! - forward, for query row `i`: `s_j = s q_i . k_j`, `m = max_j s_j`,
//!   `l = sum_j e^(s_j - m)`, `o_i = sum_j e^(s_j - m) v_j / l`, and the row's log-sum-exp
//!   `lse_i = m + ln l` is kept for the backward pass;
//! - backward, with `G = dL/dO`: the probabilities are recomputed as `p_j = e^(s_j - lse_i)`,
//!   `dp_j = g_i . v_j`, `D_i = sum_j p_j dp_j = g_i . o_i`, `ds_j = p_j (dp_j - D_i)`
//!   (the softmax Jacobian), then `dq_i = s sum_j ds_j k_j`, `dk_j += s ds_j q_i` and
//!   `dv_j += p_j g_i`.
//!
//! K and V are transposed once per head so that every inner loop runs over key positions in
//! 8-lane vectors. Work is split over heads (and, when there are few heads, over fixed blocks
//! of query rows whose key and value gradients are added in block order), so results are
//! bitwise the same for any number of threads.
//!
//! ```
//! use tensor::ops::attention::attention;
//! use tensor::Tensor;
//! // One query attending to two keys with equal scores: the mean of the two values.
//! let q = Tensor::from_vec(vec![0.0, 0.0], &[1, 1, 2]);
//! let k = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 2, 2]);
//! let v = Tensor::from_vec(vec![1.0, 3.0], &[1, 2, 1]);
//! let (o, lse) = attention(&q, &k, &v, 1.0);
//! assert_eq!(o.data(), &[2.0]);
//! assert!((lse.data()[0] - 2f32.ln()).abs() < 1e-6);
//! ```

use rayon::prelude::*;
use wide::f32x8;

use super::alloc;
use super::simd::{self, SimdF32};
use crate::kernels::cpu::{isa, Isa};
use crate::Tensor;

/// Query rows per task when a head is split (few heads).
const ROW_BLOCK: usize = 64;
/// With at least this many heads, each head is one task and is never split.
const MIN_HEADS_UNSPLIT: usize = 8;

/// Sizes of one call: `n` heads (all leading axes), `lq` queries, `lk` keys, `d` channels of
/// queries and keys, `dv` channels of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    n: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    /// Lanes of the vectors the kernels run on (8 or 16): rows are padded to whole vectors.
    lanes: usize,
}

impl Dims {
    /// These sizes with the vector width of `isa`'s kernels.
    fn for_isa(self, isa: Isa) -> Dims {
        Dims {
            lanes: lanes_of(isa),
            ..self
        }
    }

    /// `n` rounded up to whole vectors.
    fn pad(self, n: usize) -> usize {
        n.div_ceil(self.lanes) * self.lanes
    }

    /// Query-row blocks per head: 1 unless there are few heads (depends on the shape only).
    fn blocks(self) -> usize {
        if self.n >= MIN_HEADS_UNSPLIT {
            1
        } else {
            self.lq.div_ceil(ROW_BLOCK).max(1)
        }
    }

    /// The query rows of block `b`.
    fn rows(self, b: usize) -> std::ops::Range<usize> {
        let per = self.lq.div_ceil(self.blocks()).max(1);
        (b * per).min(self.lq)..((b + 1) * per).min(self.lq)
    }
}

/// Checks the shapes `q [.., lq, d]`, `k [.., lk, d]`, `v [.., lk, dv]` (same leading axes).
fn dims(op: &str, q: &Tensor, k: &Tensor, v: &Tensor) -> Dims {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let ok = qs.len() >= 2
        && ks.len() == qs.len()
        && vs.len() == qs.len()
        && qs[..qs.len() - 2] == ks[..ks.len() - 2]
        && ks[..ks.len() - 2] == vs[..vs.len() - 2]
        && qs[qs.len() - 1] == ks[ks.len() - 1]
        && ks[ks.len() - 2] == vs[vs.len() - 2];
    assert!(
        ok,
        "{op}: expected q [.., Lq, d], k [.., Lk, d], v [.., Lk, dv] with equal leading axes, \
         got q {qs:?}, k {ks:?}, v {vs:?}"
    );
    let r = qs.len();
    assert!(
        ks[r - 2] > 0 && qs[r - 1] > 0 && vs[r - 1] > 0,
        "{op}: expected at least one key and one channel, got q {qs:?}, k {ks:?}, v {vs:?}"
    );
    Dims {
        n: qs[..r - 2].iter().product(),
        lq: qs[r - 2],
        lk: ks[r - 2],
        d: qs[r - 1],
        dv: vs[r - 1],
        lanes: 8,
    }
}

mod heads;
mod rows;
#[cfg(test)]
mod tests;

pub use heads::{attention_heads, attention_heads_backward};

use rows::{backward_rows, forward_rows, with_head, BlockGrads, HeadKv, Scratch, ROWS};

/// Row scratch for both tile heights (see [`rows::with_head`]).
type RowScratch<'a> = (&'a mut Scratch<ROWS>, &'a mut Scratch<1>);

/// Declares `$name`, which runs `$generic::<$v>` compiled with `$features`.
macro_rules! with_features {
    ($name:ident, $features:literal, $v:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            dm: Dims,
            rows: std::ops::Range<usize>,
            q: &[f32],
            kv: &HeadKv,
            scale: f32,
            pass: Pass<'_>,
            sc: RowScratch<'_>,
        ) -> Option<BlockGrads> {
            run_pass::<$v>(dm, rows, q, kv, scale, pass, sc)
        }
    };
}

/// The pass to run over a block of query rows, with its own inputs and outputs.
enum Pass<'a> {
    /// Writes the block's rows of `o` and `lse`.
    Forward {
        o: &'a mut [f32],
        lse: &'a mut [f32],
    },
    /// Writes the block's rows of `dq` (and returns the key and value gradients), given the
    /// head's `o`, `lse` and output gradient `g`.
    Backward {
        o: &'a [f32],
        lse: &'a [f32],
        g: &'a [f32],
        dq: &'a mut [f32],
    },
}

#[inline(always)]
fn run_pass<V: SimdF32>(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    pass: Pass<'_>,
    sc: RowScratch<'_>,
) -> Option<BlockGrads> {
    debug_assert_eq!(V::LANES, dm.lanes);
    match pass {
        Pass::Forward { o, lse } => {
            forward_rows::<V>(dm, rows, q, kv, scale, o, lse, sc);
            None
        }
        Pass::Backward { o, lse, g, dq } => Some(backward_rows::<V>(
            dm, rows, q, kv, o, lse, g, scale, dq, sc,
        )),
    }
}

#[cfg(target_arch = "x86_64")]
with_features!(run_pass_avx512, "avx512f,avx2,fma", simd::Avx512);
#[cfg(target_arch = "x86_64")]
with_features!(run_pass_avx2, "avx2,fma", simd::Avx2);

/// [`run_pass`] on the implementation for `isa` (which the CPU must have).
#[allow(clippy::too_many_arguments)]
fn run_pass_on(
    isa: Isa,
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    pass: Pass<'_>,
    sc: RowScratch<'_>,
) -> Option<BlockGrads> {
    match isa {
        // SAFETY: `isa` is the CPU's (cpu::isa) or a lesser one.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_pass_avx512(dm, rows, q, kv, scale, pass, sc) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { run_pass_avx2(dm, rows, q, kv, scale, pass, sc) },
        _ => run_pass::<f32x8>(dm, rows, q, kv, scale, pass, sc),
    }
}

/// Vector lanes of the implementation for `isa`.
fn lanes_of(isa: Isa) -> usize {
    if cfg!(target_arch = "x86_64") && isa == Isa::Avx512 {
        16
    } else {
        8
    }
}

/// Attention over the last two axes of `q [.., Lq, d]`, `k [.., Lk, d]`, `v [.., Lk, dv]`
/// (equal leading axes, each a separate head): returns `O = softmax(scale Q K^T) V`
/// `[.., Lq, dv]` and the log-sum-exp of each row of scaled scores `[.., Lq]`, which
/// [`attention_backward`] needs. Adds the work of the two products, `2 Lq Lk (d + dv)` per
/// head, to the FLOP counter. Panics if the shapes disagree.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> (Tensor, Tensor) {
    let dm = dims("attention", q, k, v);
    let _prof = crate::profile::scope("attention", || {
        format!("q {:?} k {:?} v {:?}", q.shape(), k.shape(), v.shape())
    });
    attention_with(dm, q, k, v, scale, isa())
}

fn attention_with(
    dm: Dims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    isa: Isa,
) -> (Tensor, Tensor) {
    let dm = dm.for_isa(isa);
    let lead = &q.shape()[..q.shape().len() - 2];
    let mut o_shape = lead.to_vec();
    o_shape.extend([dm.lq, dm.dv]);
    let mut lse_shape = lead.to_vec();
    lse_shape.push(dm.lq);
    let mut o = alloc::zeroed(dm.n * dm.lq * dm.dv);
    let mut lse = alloc::zeroed(dm.n * dm.lq);
    if dm.lq > 0 {
        super::flops::add((2 * dm.n * dm.lq * dm.lk * (dm.d + dm.dv)) as u64);
        let (qd, kd, vd) = (q.data(), k.data(), v.data());
        o.par_chunks_mut(dm.lq * dm.dv)
            .zip(lse.par_chunks_mut(dm.lq))
            .enumerate()
            .for_each(|(h, (oh, lh))| {
                let kh = &kd[h * dm.lk * dm.d..(h + 1) * dm.lk * dm.d];
                let vh = &vd[h * dm.lk * dm.dv..(h + 1) * dm.lk * dm.dv];
                let qh = &qd[h * dm.lq * dm.d..(h + 1) * dm.lq * dm.d];
                with_head(dm, kh, vh, |kv, wide, one| {
                    forward_head(isa, dm, qh, kv, scale, (oh, lh), (wide, one))
                });
            });
    }
    (
        Tensor::from_vec(o, &o_shape),
        Tensor::from_vec(lse, &lse_shape),
    )
}

/// The forward pass of one head into its `o` and `lse`: in one go with this thread's scratch,
/// or, for a head split into blocks of query rows (few heads), the blocks in parallel.
fn forward_head(
    isa: Isa,
    dm: Dims,
    qh: &[f32],
    kv: &HeadKv,
    scale: f32,
    (oh, lh): (&mut [f32], &mut [f32]),
    sc: RowScratch<'_>,
) {
    if dm.blocks() == 1 {
        let pass = Pass::Forward { o: oh, lse: lh };
        run_pass_on(isa, dm, 0..dm.lq, qh, kv, scale, pass, sc);
        return;
    }
    let blocks: Vec<_> = (0..dm.blocks()).map(|b| dm.rows(b)).collect();
    let mut o_parts = Vec::new();
    let mut l_parts = Vec::new();
    let (mut orest, mut lrest) = (&mut oh[..], &mut lh[..]);
    for r in &blocks {
        let (a, b) = orest.split_at_mut(r.len() * dm.dv);
        let (c, d) = lrest.split_at_mut(r.len());
        o_parts.push(a);
        l_parts.push(c);
        (orest, lrest) = (b, d);
    }
    blocks
        .into_par_iter()
        .zip(o_parts)
        .zip(l_parts)
        .for_each(|((rows, ob), lb)| {
            let pass = Pass::Forward { o: ob, lse: lb };
            let (mut wide, mut one) = (Scratch::new(dm), Scratch::new(dm));
            run_pass_on(isa, dm, rows, qh, kv, scale, pass, (&mut wide, &mut one));
        });
}

/// The gradients `(dQ, dK, dV)` of [`attention`] given its inputs, its outputs `o` and `lse`,
/// and the gradient `g` of the loss with respect to `o`. Panics if the shapes disagree.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    scale: f32,
) -> (Tensor, Tensor, Tensor) {
    let _prof = crate::profile::scope("attention_backward", || {
        format!("q {:?} k {:?} v {:?}", q.shape(), k.shape(), v.shape())
    });
    attention_backward_with(q, k, v, o, lse, g, scale, isa())
}

#[allow(clippy::too_many_arguments)]
fn attention_backward_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    scale: f32,
    isa: Isa,
) -> (Tensor, Tensor, Tensor) {
    let dm = dims("attention_backward", q, k, v).for_isa(isa);
    let lead = &q.shape()[..q.shape().len() - 2];
    let mut o_shape = lead.to_vec();
    o_shape.extend([dm.lq, dm.dv]);
    let mut lse_shape = lead.to_vec();
    lse_shape.push(dm.lq);
    assert!(
        o.shape() == o_shape && g.shape() == o_shape && lse.shape() == lse_shape,
        "attention_backward: expected o and g {o_shape:?} and lse {lse_shape:?}, got o {:?}, \
         g {:?}, lse {:?}",
        o.shape(),
        g.shape(),
        lse.shape()
    );
    let mut dq = alloc::zeroed(dm.n * dm.lq * dm.d);
    let mut dk = alloc::zeroed(dm.n * dm.lk * dm.d);
    let mut dv = alloc::zeroed(dm.n * dm.lk * dm.dv);
    if dm.lq > 0 {
        let (qd, kd, vd, od, ld, gd) =
            (q.data(), k.data(), v.data(), o.data(), lse.data(), g.data());
        let lp = dm.pad(dm.lk);
        dq.par_chunks_mut(dm.lq * dm.d)
            .zip(dk.par_chunks_mut(dm.lk * dm.d))
            .zip(dv.par_chunks_mut(dm.lk * dm.dv))
            .enumerate()
            .for_each(|(h, ((dqh, dkh), dvh))| {
                let kh = &kd[h * dm.lk * dm.d..(h + 1) * dm.lk * dm.d];
                let vh = &vd[h * dm.lk * dm.dv..(h + 1) * dm.lk * dm.dv];
                let head = HeadInputs {
                    q: &qd[h * dm.lq * dm.d..(h + 1) * dm.lq * dm.d],
                    o: &od[h * dm.lq * dm.dv..(h + 1) * dm.lq * dm.dv],
                    g: &gd[h * dm.lq * dm.dv..(h + 1) * dm.lq * dm.dv],
                    lse: &ld[h * dm.lq..(h + 1) * dm.lq],
                };
                let total = with_head(dm, kh, vh, |kv, wide, one| {
                    backward_head(isa, dm, head, kv, scale, dqh, (wide, one))
                });
                for j in 0..dm.lk {
                    for c in 0..dm.d {
                        dkh[j * dm.d + c] = total.dkt[c * lp + j];
                    }
                    for c in 0..dm.dv {
                        dvh[j * dm.dv + c] = total.dvt[c * lp + j];
                    }
                }
            });
    }
    (
        Tensor::from_vec(dq, q.shape()),
        Tensor::from_vec(dk, k.shape()),
        Tensor::from_vec(dv, v.shape()),
    )
}

/// One head's query rows, outputs, output gradient and log-sum-exps.
#[derive(Clone, Copy)]
struct HeadInputs<'a> {
    q: &'a [f32],
    o: &'a [f32],
    g: &'a [f32],
    lse: &'a [f32],
}

/// The backward pass of one head: writes its `dq` and returns its key and value gradients
/// (transposed). In one go with this thread's scratch, or, for a head split into blocks of
/// query rows (few heads), the blocks in parallel and their partials added in block order
/// (independent of the thread count).
fn backward_head(
    isa: Isa,
    dm: Dims,
    head: HeadInputs<'_>,
    kv: &HeadKv,
    scale: f32,
    dqh: &mut [f32],
    sc: RowScratch<'_>,
) -> BlockGrads {
    let pass = |dq| Pass::Backward {
        o: head.o,
        lse: head.lse,
        g: head.g,
        dq,
    };
    let expect = "the backward pass returns gradients";
    if dm.blocks() == 1 {
        return run_pass_on(isa, dm, 0..dm.lq, head.q, kv, scale, pass(dqh), sc).expect(expect);
    }
    let blocks: Vec<_> = (0..dm.blocks()).map(|b| dm.rows(b)).collect();
    let mut dq_parts = Vec::new();
    let mut rest = dqh;
    for r in &blocks {
        let (a, b) = rest.split_at_mut(r.len() * dm.d);
        dq_parts.push(a);
        rest = b;
    }
    let parts: Vec<BlockGrads> = blocks
        .into_par_iter()
        .zip(dq_parts)
        .map(|(rows, dqb)| {
            let (mut wide, mut one) = (Scratch::new(dm), Scratch::new(dm));
            run_pass_on(
                isa,
                dm,
                rows,
                head.q,
                kv,
                scale,
                pass(dqb),
                (&mut wide, &mut one),
            )
            .expect(expect)
        })
        .collect();
    let lp = dm.pad(dm.lk);
    let mut total = BlockGrads {
        dkt: vec![0.0; dm.d * lp],
        dvt: vec![0.0; dm.dv * lp],
    };
    for part in &parts {
        for (t, x) in total.dkt.iter_mut().zip(&part.dkt) {
            *t += x;
        }
        for (t, x) in total.dvt.iter_mut().zip(&part.dvt) {
            *t += x;
        }
    }
    total
}
