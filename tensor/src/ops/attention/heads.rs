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

/// Where the tokens and the heads' channels of a call's tensors lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadLayout {
    /// `[B, L, H w]`: each token's channels contiguous, as a linear layer produces them.
    TokensFirst,
    /// `[B, H w, L]`: each channel's tokens contiguous, as a 1x1 convolution of an NCHW image
    /// produces them (`L = H W` pixels).
    ChannelsFirst,
}

/// Where the heads of one tensor lie: with `T` channels per token in all (`H w` unless the
/// tensor holds more than these heads, from channel `offset` on), head `t = b H + h` has entry
/// `(i, c)` (token `i`, channel `c < w`) at `(b L + i) T + offset + h w + c` (tokens first) or
/// `(b T + offset + h w + c) L + i` (channels first).
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub(super) heads: usize,
    pub(super) len: usize,
    pub(super) width: usize,
    pub(super) order: HeadLayout,
    pub(super) offset: usize,
    pub(super) total: usize,
}

impl Layout {
    /// Offset of entry (0, 0) of head `t`, and the strides between tokens and channels.
    fn place(self, t: usize) -> (usize, usize, usize) {
        let (b, h) = (t / self.heads, t % self.heads);
        let (total, channel) = (self.total, self.offset + h * self.width);
        match self.order {
            HeadLayout::TokensFirst => (b * self.len * total + channel, total, 1),
            HeadLayout::ChannelsFirst => ((b * total + channel) * self.len, 1, self.len),
        }
    }

    /// Head `t` in `data`.
    fn rows(self, data: &[f32], t: usize) -> Rows<'_> {
        let (start, row_stride, col_stride) = self.place(t);
        Rows {
            data,
            start,
            row_stride,
            col_stride,
            width: self.width,
        }
    }

    /// Head `t` in the output at `data` (`len` values).
    fn rows_out(self, data: &SendPtr, len: usize, t: usize) -> RowsOut<'_> {
        let (start, row_stride, col_stride) = self.place(t);
        RowsOut {
            data,
            len,
            start,
            row_stride,
            col_stride,
            width: self.width,
        }
    }

    /// The shape of a whole tensor of this layout with `batch` entries.
    pub(super) fn shape(self, batch: usize) -> [usize; 3] {
        match self.order {
            HeadLayout::TokensFirst => [batch, self.len, self.total],
            HeadLayout::ChannelsFirst => [batch, self.total, self.len],
        }
    }
}

/// Checks `q [B, Lq, H d]`, `k [B, Lk, H d]`, `v [B, Lk, H dv]` (or, channels first,
/// `[B, H d, Lq]`, `[B, H d, Lk]`, `[B, H dv, Lk]`) and returns the per-head sizes.
fn dims_heads(
    op: &str,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    heads: usize,
    order: HeadLayout,
) -> (Dims, usize) {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    // (tokens, channels) of each.
    let (t, c) = match order {
        HeadLayout::TokensFirst => (1, 2),
        HeadLayout::ChannelsFirst => (2, 1),
    };
    let ok = heads > 0
        && qs.len() == 3
        && ks.len() == 3
        && vs.len() == 3
        && qs[0] == ks[0]
        && ks[0] == vs[0]
        && ks[t] == vs[t]
        && qs[c] == ks[c]
        && qs[c] % heads == 0
        && vs[c] % heads == 0
        && ks[t] > 0
        && qs[c] > 0
        && vs[c] > 0;
    let want = match order {
        HeadLayout::TokensFirst => "q [B, Lq, H d], k [B, Lk, H d], v [B, Lk, H dv]",
        HeadLayout::ChannelsFirst => "q [B, H d, Lq], k [B, H d, Lk], v [B, H dv, Lk]",
    };
    assert!(
        ok,
        "{op}: expected {want} with {heads} heads and at least one key and channel, got q \
         {qs:?}, k {ks:?}, v {vs:?}"
    );
    let dm = Dims {
        n: qs[0] * heads,
        lq: qs[t],
        lk: ks[t],
        d: qs[c] / heads,
        dv: vs[c] / heads,
        lanes: 8,
    };
    (dm, qs[0])
}

/// The layouts of a call's tensors: queries (`Lq` rows of `d`), keys (`Lk` of `d`), values
/// (`Lk` of `dv`) and outputs (`Lq` of `dv`).
fn layouts(dm: Dims, heads: usize, order: HeadLayout) -> [Layout; 4] {
    let at = |len, width| Layout {
        heads,
        len,
        width,
        order,
        offset: 0,
        total: heads * width,
    };
    [
        at(dm.lq, dm.d),
        at(dm.lk, dm.d),
        at(dm.lk, dm.dv),
        at(dm.lq, dm.dv),
    ]
}

/// Attention with `heads` heads side by side in the channels of `q [B, Lq, H d]`,
/// `k [B, Lk, H d]` and `v [B, Lk, H dv]` (or of `[B, H d, Lq]`, `[B, H d, Lk]`, `[B, H dv, Lk]`
/// with `order` [`HeadLayout::ChannelsFirst`]): returns `O [B, Lq, H dv]` (or `[B, H dv, Lq]`;
/// head `h` in channels `h dv .. (h + 1) dv`) and the row log-sum-exps `[B, H, Lq]`, exactly
/// as [`attention`](super::attention) on the heads split out. Panics if the shapes disagree.
pub fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (heads, order): (usize, HeadLayout),
    scale: f32,
) -> (Tensor, Tensor) {
    let (dm, batch) = dims_heads("attention_heads", (q, k, v), heads, order);
    let _prof = crate::profile::scope("attention", || {
        format!(
            "q {:?} k {:?} v {:?} heads {heads}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    });
    let (o, lse) = forward_with(dm, batch, (heads, order), (q, k, v), scale, isa());
    let [.., lq_dv] = layouts(dm, heads, order);
    (
        Tensor::from_vec(o, &lq_dv.shape(batch)),
        Tensor::from_vec(lse, &[batch, heads, dm.lq]),
    )
}

/// The forward pass in the layouts `order`: `o` and `lse` as flat vectors.
pub(super) fn forward_with(
    dm: Dims,
    batch: usize,
    (heads, order): (usize, HeadLayout),
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    scale: f32,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let layouts = layouts(dm, heads, order);
    forward_in(
        dm,
        batch,
        layouts,
        (q.data(), k.data(), v.data()),
        scale,
        isa,
    )
}

/// The forward pass with the queries, keys, values and outputs laid out as `layouts` says.
pub(super) fn forward_in(
    dm: Dims,
    batch: usize,
    [lq_d, lk_d, lk_dv, lq_dv]: [Layout; 4],
    (qd, kd, vd): (&[f32], &[f32], &[f32]),
    scale: f32,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let dm = dm.for_isa(isa);
    let mut lse = alloc::zeroed(dm.n * dm.lq);
    let len = batch * dm.lq * lq_dv.total;
    let fill = |o: &mut [std::mem::MaybeUninit<f32>]| {
        if dm.lq == 0 {
            return;
        }
        super::super::flops::add((2 * dm.n * dm.lq * dm.lk * (dm.d + dm.dv)) as u64);
        let out = SendPtr(o.as_mut_ptr().cast::<f32>());
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
    (heads, order): (usize, HeadLayout),
    scale: f32,
) -> (Tensor, Tensor, Tensor) {
    let (dm, batch) = dims_heads("attention_heads_backward", (q, k, v), heads, order);
    let _prof = crate::profile::scope("attention_backward", || {
        format!(
            "q {:?} k {:?} v {:?} heads {heads}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    });
    let [.., lq_dv] = layouts(dm, heads, order);
    let o_shape = lq_dv.shape(batch);
    let lse_shape = [batch, heads, dm.lq];
    assert!(
        o.shape() == o_shape && g.shape() == o_shape && lse.shape() == lse_shape,
        "attention_heads_backward: expected o and g {o_shape:?} and lse {lse_shape:?}, got o \
         {:?}, g {:?}, lse {:?}",
        o.shape(),
        g.shape(),
        lse.shape()
    );
    let (dq, dk, dv) = backward_with(dm, (heads, order), (q, k, v), (o, lse, g), scale, isa());
    (
        Tensor::from_vec(dq, q.shape()),
        Tensor::from_vec(dk, k.shape()),
        Tensor::from_vec(dv, v.shape()),
    )
}

/// The backward pass in the layouts `order`: `dq`, `dk`, `dv` as flat vectors.
pub(super) fn backward_with(
    dm: Dims,
    (heads, order): (usize, HeadLayout),
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (o, lse, g): (&Tensor, &Tensor, &Tensor),
    scale: f32,
    isa: Isa,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let lens = [q.data().len(), k.data().len(), v.data().len()];
    // Every element of the three gradients is written once, through the pointers: the heads'
    // rows tile each tensor.
    let mut grads = lens.map(alloc::with_capacity);
    let ptrs = grads.each_mut().map(|t| SendPtr(t.as_mut_ptr()));
    let inputs = [q, k, v, o, lse, g].map(Tensor::data);
    let targets = [0, 1, 2].map(|i| (&ptrs[i], lens[i]));
    backward_in(dm, layouts(dm, heads, order), inputs, targets, scale, isa);
    // SAFETY: every head of every gradient was written in full (or, without queries, filled).
    unsafe {
        for (t, n) in grads.iter_mut().zip(lens) {
            t.set_len(n);
        }
    }
    let [dq, dk, dv] = grads;
    (dq, dk, dv)
}

/// The backward pass with the tensors laid out as `layouts` says: `inputs` are `q`, `k`,
/// `v`, `o`, `lse`, `g`; `dq`, `dk`, `dv` are written through `targets` (pointer and length of
/// the tensor each lies in; they may share one), every entry of their heads once.
pub(super) fn backward_in(
    dm: Dims,
    [lq_d, lk_d, lk_dv, lq_dv]: [Layout; 4],
    [qd, kd, vd, od, ld, gd]: [&[f32]; 6],
    targets: [(&SendPtr, usize); 3],
    scale: f32,
    isa: Isa,
) {
    let dm = dm.for_isa(isa);
    let (ptrs, lens) = (targets.map(|t| t.0), targets.map(|t| t.1));
    if dm.lq == 0 {
        // No query: every gradient is 0.
        for (i, layout) in [lq_d, lk_d, lk_dv].into_iter().enumerate() {
            let rows = if i == 0 { dm.lq } else { dm.lk };
            for t in 0..dm.n {
                let out = layout.rows_out(ptrs[i], lens[i], t);
                for j in 0..rows {
                    // SAFETY: this thread writes alone.
                    unsafe { out.put(j, &vec![0.0; layout.width]) };
                }
            }
        }
        return;
    }
    (0..dm.n).into_par_iter().for_each(|t| {
        let (kr, vr) = (lk_d.rows(kd, t), lk_dv.rows(vd, t));
        let x = BackwardInputs {
            q: lq_d.rows(qd, t),
            o: lq_dv.rows(od, t),
            g: lq_dv.rows(gd, t),
            lse: &ld[t * dm.lq..(t + 1) * dm.lq],
        };
        let dq = lq_d.rows_out(ptrs[0], lens[0], t);
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
                (lk_d, ptrs[1], lens[1], dk, dm.d),
                (lk_dv, ptrs[2], lens[2], dv, dm.dv),
            ] {
                let out = layout.rows_out(ptr, len, t);
                debug_assert_eq!(grad.len(), w * dm.lk);
                // SAFETY: head t's rows are this task's alone.
                unsafe { out.put_rows(grad) };
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
}

#[cfg(test)]
mod tests {
    use super::super::{attention, attention_backward};
    use super::*;
    use crate::ops::testutil::{on_threads, Lcg};

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
        let _guard = crate::ops::testutil::isa_lock();
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
                let (o, l, (dq, dk, dvv)) = on_threads(threads, || {
                    let (o, l) = attention_heads(&q, &k, &v, (heads, TOKENS), 0.3);
                    let grads =
                        attention_heads_backward(&q, &k, &v, &o, &l, &g, (heads, TOKENS), 0.3);
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
        let _ = attention_heads(&x, &x, &x, (4, TOKENS), 1.0);
    }

    const TOKENS: HeadLayout = HeadLayout::TokensFirst;

    /// `[B, L, C]` to `[B, C, L]` and back.
    fn turn(t: &Tensor) -> Tensor {
        t.permute(&[0, 2, 1])
    }

    /// Channels first gives bitwise the outputs and gradients of tokens first, turned, with
    /// few heads and many, a last block of queries shorter than a vector, `d != dv`, on one
    /// thread and two.
    #[test]
    fn channels_first_equals_tokens_first_bitwise() {
        let _guard = crate::ops::testutil::isa_lock();
        let mut rng = Lcg::new(12);
        let cf = HeadLayout::ChannelsFirst;
        for (batch, heads, lq, lk, d, dv) in [(1, 2, 150, 70, 8, 5), (3, 4, 33, 40, 4, 8)] {
            let q = rng.tensor(&[batch, lq, heads * d]);
            let k = rng.tensor(&[batch, lk, heads * d]);
            let v = rng.tensor(&[batch, lk, heads * dv]);
            let g = rng.tensor(&[batch, lq, heads * dv]);
            let (o0, l0) = attention_heads(&q, &k, &v, (heads, TOKENS), 0.3);
            let grads0 = attention_heads_backward(&q, &k, &v, &o0, &l0, &g, (heads, TOKENS), 0.3);
            let (qc, kc, vc, gc) = (turn(&q), turn(&k), turn(&v), turn(&g));
            for threads in [1, 2] {
                let (o, l, (dq, dk, dvv)) = on_threads(threads, || {
                    let (o, l) = attention_heads(&qc, &kc, &vc, (heads, cf), 0.3);
                    let grads =
                        attention_heads_backward(&qc, &kc, &vc, &o, &l, &gc, (heads, cf), 0.3);
                    (o, l, grads)
                });
                assert_eq!(o.shape(), &[batch, heads * dv, lq]);
                assert_eq!(turn(&o).data(), o0.data());
                assert_eq!(l.data(), l0.data());
                assert_eq!(turn(&dq).data(), grads0.0.data());
                assert_eq!(turn(&dk).data(), grads0.1.data());
                assert_eq!(turn(&dvv).data(), grads0.2.data());
            }
        }
    }
}
