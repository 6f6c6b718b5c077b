//! Multi-head attention on tensors whose heads sit side by side in the channel axis, as the
//! query, key and value projections produce them: `q [B, Lq, H d]`, `k [B, Lk, H d]`,
//! `v [B, Lk, H dv]`, head `h` of token `i` being channels `h d .. (h + 1) d`. The usual route
//! splits the heads with a permutation to `[B, H, L, d]` (a copy of each tensor), runs
//! attention and merges them back with another; here the kernels read each head's rows in
//! place and write its outputs in place, so the four layout passes over memory per layer (and
//! their four in the backward pass) never happen. [`attention`](super::attention) is the case
//! of one head per batch entry.

use rayon::prelude::*;

use super::kernel::{with_workspace, BackwardInputs, Rows, RowsOut};
use super::{run_pass_on, Dims, Pass};
use crate::kernels::cpu::{isa, Isa};
use crate::ops::alloc;
use crate::ops::par::SendPtr;
use crate::Tensor;

/// Where the heads of a `[B, L, H w]` tensor lie: head `t = b H + h` has its row `i` (of `w`
/// values) at `(b L + i) H w + h w`.
#[derive(Clone, Copy)]
struct Layout {
    heads: usize,
    len: usize,
    width: usize,
}

impl Layout {
    /// Offset of row 0 of head `t`.
    fn start(self, t: usize) -> usize {
        let (b, h) = (t / self.heads, t % self.heads);
        b * self.len * self.heads * self.width + h * self.width
    }

    /// Head `t`'s rows in `data`.
    fn rows(self, data: &[f32], t: usize) -> Rows<'_> {
        Rows {
            data,
            start: self.start(t),
            stride: self.heads * self.width,
            width: self.width,
        }
    }

    /// Head `t`'s rows in the output at `data` (`len` values).
    fn rows_out(self, data: &SendPtr, len: usize, t: usize) -> RowsOut<'_> {
        RowsOut {
            data,
            len,
            start: self.start(t),
            stride: self.heads * self.width,
            width: self.width,
        }
    }
}

/// Checks `q [B, Lq, H d]`, `k [B, Lk, H d]`, `v [B, Lk, H dv]` and returns the per-head sizes.
fn dims_heads(op: &str, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> (Dims, usize) {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let ok = heads > 0
        && qs.len() == 3
        && ks.len() == 3
        && vs.len() == 3
        && qs[0] == ks[0]
        && ks[0] == vs[0]
        && ks[1] == vs[1]
        && qs[2] == ks[2]
        && qs[2] % heads == 0
        && vs[2] % heads == 0
        && ks[1] > 0
        && qs[2] > 0
        && vs[2] > 0;
    assert!(
        ok,
        "{op}: expected q [B, Lq, H d], k [B, Lk, H d], v [B, Lk, H dv] with {heads} heads \
         and at least one key and channel, got q {qs:?}, k {ks:?}, v {vs:?}"
    );
    let dm = Dims {
        n: qs[0] * heads,
        lq: qs[1],
        lk: ks[1],
        d: qs[2] / heads,
        dv: vs[2] / heads,
        lanes: 8,
    };
    (dm, qs[0])
}

/// The layouts of a call's tensors: queries (`Lq` rows of `d`), keys (`Lk` of `d`), values
/// (`Lk` of `dv`) and outputs (`Lq` of `dv`).
fn layouts(dm: Dims, heads: usize) -> [Layout; 4] {
    let at = |len, width| Layout { heads, len, width };
    [
        at(dm.lq, dm.d),
        at(dm.lk, dm.d),
        at(dm.lk, dm.dv),
        at(dm.lq, dm.dv),
    ]
}

/// Attention with `heads` heads side by side in the channels of `q [B, Lq, H d]`,
/// `k [B, Lk, H d]` and `v [B, Lk, H dv]`: returns `O [B, Lq, H dv]` (head `h` of each output
/// token in channels `h dv .. (h + 1) dv`) and the row log-sum-exps `[B, H, Lq]`, exactly as
/// [`attention`](super::attention) on the heads split out. Panics if the shapes disagree.
pub fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> (Tensor, Tensor) {
    let (dm, batch) = dims_heads("attention_heads", q, k, v, heads);
    let _prof = crate::profile::scope("attention", || {
        format!(
            "q {:?} k {:?} v {:?} heads {heads}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    });
    let (o, lse) = forward_with(dm, batch, heads, (q, k, v), scale, isa());
    (
        Tensor::from_vec(o, &[batch, dm.lq, heads * dm.dv]),
        Tensor::from_vec(lse, &[batch, heads, dm.lq]),
    )
}

/// The forward pass in the `[B, L, H w]` layouts: `o` and `lse` as flat vectors.
pub(super) fn forward_with(
    dm: Dims,
    batch: usize,
    heads: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    scale: f32,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let dm = dm.for_isa(isa);
    let [lq_d, lk_d, lk_dv, lq_dv] = layouts(dm, heads);
    let mut lse = alloc::zeroed(dm.n * dm.lq);
    let len = batch * dm.lq * heads * dm.dv;
    let fill = |o: &mut [std::mem::MaybeUninit<f32>]| {
        if dm.lq == 0 {
            return;
        }
        super::super::flops::add((2 * dm.n * dm.lq * dm.lk * (dm.d + dm.dv)) as u64);
        let out = SendPtr(o.as_mut_ptr().cast::<f32>());
        let (qd, kd, vd) = (q.data(), k.data(), v.data());
        lse.par_chunks_mut(dm.lq).enumerate().for_each(|(t, lh)| {
            let (qr, kr, vr) = (lq_d.rows(qd, t), lk_d.rows(kd, t), lk_dv.rows(vd, t));
            let or = lq_dv.rows_out(&out, len, t);
            let run = |rows: std::ops::Range<usize>, lse: &mut [f32]| {
                with_workspace(dm, kr, vr, |ws| {
                    let pass = Pass::Forward { q: qr, o: or, lse };
                    // SAFETY: rows `rows` of head t are this task's alone.
                    unsafe { run_pass_on(isa, dm, rows, scale, ws, pass) }
                })
            };
            if dm.blocks() == 1 {
                run(0..dm.lq, lh);
                return;
            }
            // Few heads: the head's blocks of query rows in parallel.
            let mut parts = Vec::new();
            let mut rest = lh;
            for b in 0..dm.blocks() {
                let (part, tail) = rest.split_at_mut(dm.rows(b).len());
                parts.push((dm.rows(b), part));
                rest = tail;
            }
            parts
                .into_par_iter()
                .for_each(|(rows, part)| run(rows, part));
        });
    };
    // SAFETY: the heads' rows tile the output, and every row of every head is written.
    let o = unsafe { alloc::filled_by(len, fill) };
    (o, lse)
}

/// The gradients `(dQ, dK, dV)` of [`attention_heads`] (in its layouts) given its inputs, its
/// outputs `o` and `lse`, and the gradient `g` of the loss with respect to `o`. Panics if the
/// shapes disagree.
#[allow(clippy::too_many_arguments)]
pub fn attention_heads_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    heads: usize,
    scale: f32,
) -> (Tensor, Tensor, Tensor) {
    let (dm, batch) = dims_heads("attention_heads_backward", q, k, v, heads);
    let _prof = crate::profile::scope("attention_backward", || {
        format!(
            "q {:?} k {:?} v {:?} heads {heads}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    });
    let o_shape = [batch, dm.lq, heads * dm.dv];
    let lse_shape = [batch, heads, dm.lq];
    assert!(
        o.shape() == o_shape && g.shape() == o_shape && lse.shape() == lse_shape,
        "attention_heads_backward: expected o and g {o_shape:?} and lse {lse_shape:?}, got o \
         {:?}, g {:?}, lse {:?}",
        o.shape(),
        g.shape(),
        lse.shape()
    );
    let (dq, dk, dv) = backward_with(dm, heads, (q, k, v), (o, lse, g), scale, isa());
    (
        Tensor::from_vec(dq, q.shape()),
        Tensor::from_vec(dk, k.shape()),
        Tensor::from_vec(dv, v.shape()),
    )
}

/// The backward pass in the `[B, L, H w]` layouts: `dq`, `dk`, `dv` as flat vectors.
pub(super) fn backward_with(
    dm: Dims,
    heads: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (o, lse, g): (&Tensor, &Tensor, &Tensor),
    scale: f32,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dm = dm.for_isa(isa);
    let [lq_d, lk_d, lk_dv, lq_dv] = layouts(dm, heads);
    let lens = [q.data().len(), k.data().len(), v.data().len()];
    // Every element of the three gradients is written once, through the pointers: the heads'
    // rows tile each tensor.
    let mut grads = lens.map(alloc::with_capacity);
    if dm.lq == 0 {
        for (t, n) in grads.iter_mut().zip(lens) {
            t.resize(n, 0.0);
        }
        let [dq, dk, dv] = grads;
        return (dq, dk, dv);
    }
    let ptrs = grads.each_mut().map(|t| SendPtr(t.as_mut_ptr()));
    let (qd, kd, vd, od, ld, gd) = (q.data(), k.data(), v.data(), o.data(), lse.data(), g.data());
    (0..dm.n).into_par_iter().for_each(|t| {
        let (kr, vr) = (lk_d.rows(kd, t), lk_dv.rows(vd, t));
        let x = BackwardInputs {
            q: lq_d.rows(qd, t),
            o: lq_dv.rows(od, t),
            g: lq_dv.rows(gd, t),
            lse: &ld[t * dm.lq..(t + 1) * dm.lq],
        };
        let dq = lq_d.rows_out(&ptrs[0], lens[0], t);
        // One block of the head's query rows: its key and value gradients.
        let run = |rows: std::ops::Range<usize>, keep: &mut dyn FnMut(&[f32], &[f32])| {
            with_workspace(dm, kr, vr, |ws| {
                ws.dk.fill(0.0);
                ws.dv.fill(0.0);
                let pass = Pass::Backward { x, dq };
                // SAFETY: rows `rows` of head t are this task's alone.
                unsafe { run_pass_on(isa, dm, rows, scale, ws, pass) };
                keep(&ws.dk, &ws.dv);
            })
        };
        let write = |dk: &[f32], dv: &[f32]| {
            for (layout, ptr, len, grad, w) in [
                (lk_d, &ptrs[1], lens[1], dk, dm.d),
                (lk_dv, &ptrs[2], lens[2], dv, dm.dv),
            ] {
                let out = layout.rows_out(ptr, len, t);
                for (j, row) in grad.chunks_exact(w).enumerate() {
                    // SAFETY: head t's rows are this task's alone.
                    unsafe { out.put(j, row.iter().copied()) };
                }
            }
        };
        if dm.blocks() == 1 {
            run(0..dm.lq, &mut |dk, dv| write(dk, dv));
            return;
        }
        // Few heads: the blocks in parallel, their key and value gradients added in block
        // order (independent of the thread count).
        let parts: Vec<(Vec<f32>, Vec<f32>)> = (0..dm.blocks())
            .into_par_iter()
            .map(|b| {
                let mut part = (Vec::new(), Vec::new());
                run(dm.rows(b), &mut |dk, dv| part = (dk.to_vec(), dv.to_vec()));
                part
            })
            .collect();
        let (mut dk, mut dv) = (vec![0.0; dm.lk * dm.d], vec![0.0; dm.lk * dm.dv]);
        for (pk, pv) in &parts {
            for (t, x) in dk.iter_mut().zip(pk) {
                *t += x;
            }
            for (t, x) in dv.iter_mut().zip(pv) {
                *t += x;
            }
        }
        write(&dk, &dv);
    });
    // SAFETY: every head of every gradient was written in full above.
    unsafe {
        for (t, n) in grads.iter_mut().zip(lens) {
            t.set_len(n);
        }
    }
    let [dq, dk, dv] = grads;
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::super::{attention, attention_backward};
    use super::*;
    use crate::ops::testutil::Lcg;

    /// `[B, L, H w]` to `[B, H, L, w]` and back.
    fn split(t: &Tensor, heads: usize) -> Tensor {
        let s = t.shape();
        t.reshape(&[s[0], s[1], heads, s[2] / heads])
            .permute(&[0, 2, 1, 3])
    }

    fn merge(t: &Tensor) -> Tensor {
        let s = t.shape();
        t.permute(&[0, 2, 1, 3]).reshape(&[s[0], s[2], s[1] * s[3]])
    }

    /// Bitwise the same as splitting the heads out, running `attention` and merging them back,
    /// in every output and gradient, with few heads (query rows split into blocks) and many,
    /// unequal query and key lengths, `d != dv`, on one thread and two.
    #[test]
    fn equals_the_permuted_route_bitwise() {
        let mut rng = Lcg::new(11);
        for (batch, heads, lq, lk, d, dv) in [(1, 2, 150, 70, 8, 5), (3, 4, 33, 40, 4, 8)] {
            let q = rng.tensor(&[batch, lq, heads * d]);
            let k = rng.tensor(&[batch, lk, heads * d]);
            let v = rng.tensor(&[batch, lk, heads * dv]);
            let g = rng.tensor(&[batch, lq, heads * dv]);
            let (o0, l0) = attention(&split(&q, heads), &split(&k, heads), &split(&v, heads), 0.3);
            let grads0 = attention_backward(
                &split(&q, heads),
                &split(&k, heads),
                &split(&v, heads),
                &o0,
                &l0,
                &split(&g, heads),
                0.3,
            );
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (o, l, (dq, dk, dvv)) = pool.install(|| {
                    let (o, l) = attention_heads(&q, &k, &v, heads, 0.3);
                    let grads = attention_heads_backward(&q, &k, &v, &o, &l, &g, heads, 0.3);
                    (o, l, grads)
                });
                assert_eq!(o.shape(), &[batch, lq, heads * dv]);
                assert_eq!(o.data(), merge(&o0).data());
                assert_eq!(l.data(), l0.data());
                assert_eq!(dq.data(), merge(&grads0.0).data());
                assert_eq!(dk.data(), merge(&grads0.1).data());
                assert_eq!(dvv.data(), merge(&grads0.2).data());
            }
        }
    }

    #[test]
    #[should_panic(expected = "attention_heads: expected q [B, Lq, H d]")]
    fn channels_not_divisible_by_heads_panic_with_the_shapes() {
        let x = Tensor::zeros(&[1, 4, 6]);
        let _ = attention_heads(&x, &x, &x, 4, 1.0);
    }
}
