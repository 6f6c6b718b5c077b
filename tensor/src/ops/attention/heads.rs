//! Multi-head attention on tensors whose heads sit side by side in the channel axis, as the
//! query, key and value projections produce them: `q [B, Lq, H d]`, `k [B, Lk, H d]`,
//! `v [B, Lk, H dv]`, head `h` of token `i` being channels `h d .. (h + 1) d`. The usual route
//! splits the heads with a permutation to `[B, H, L, d]` (a copy of each tensor), runs
//! [`attention`](super::attention) and merges them back with another; here each head's rows are
//! gathered into a small per-task buffer (in cache, a few KiB) and its outputs scattered back,
//! so the four layout passes over memory per layer (and their four in the backward pass)
//! disappear. Every head is computed by the same code as in [`attention`](super::attention),
//! so the results are bitwise the same as the permuted route's.

use rayon::prelude::*;

use super::{backward_head, forward_head, with_head, Dims, HeadInputs};
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
    /// Offset of row `i` of head `t`.
    fn row(self, t: usize, i: usize) -> usize {
        let (b, h) = (t / self.heads, t % self.heads);
        (b * self.len + i) * self.heads * self.width + h * self.width
    }

    /// Head `t` of `src` as a contiguous `[L, w]` block in `dst`.
    fn gather(self, src: &[f32], t: usize, dst: &mut Vec<f32>) {
        dst.clear();
        for i in 0..self.len {
            let at = self.row(t, i);
            dst.extend_from_slice(&src[at..at + self.width]);
        }
    }

    /// Writes the contiguous `[L, w]` block `src` as head `t` of the tensor at `dst`.
    ///
    /// # Safety
    /// `dst` must point to a tensor of this layout, and no other thread may write head `t`.
    unsafe fn scatter(self, src: &[f32], t: usize, dst: &SendPtr) {
        assert_eq!(
            src.len(),
            self.len * self.width,
            "attention heads: block size"
        );
        for (i, row) in src.chunks_exact(self.width).enumerate() {
            // SAFETY: the row lies inside the tensor (the caller's layout) and belongs to
            // head `t` alone.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst.0.add(self.row(t, i)), self.width)
            };
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

/// Per-task copies of one head's rows.
#[derive(Default)]
struct HeadBuffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
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
    forward_with(dm, batch, heads, (q, k, v), scale, isa())
}

fn forward_with(
    dm: Dims,
    batch: usize,
    heads: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    scale: f32,
    isa: Isa,
) -> (Tensor, Tensor) {
    let dm = dm.for_isa(isa);
    let [lq_d, lk_d, lk_dv, lq_dv] = layouts(dm, heads);
    let mut lse = alloc::zeroed(dm.n * dm.lq);
    let fill = |o: &mut [std::mem::MaybeUninit<f32>]| {
        if dm.lq == 0 {
            return;
        }
        super::super::flops::add((2 * dm.n * dm.lq * dm.lk * (dm.d + dm.dv)) as u64);
        let out = SendPtr(o.as_mut_ptr().cast::<f32>());
        let (qd, kd, vd) = (q.data(), k.data(), v.data());
        lse.par_chunks_mut(dm.lq).enumerate().for_each_init(
            HeadBuffers::default,
            |buf, (t, lh)| {
                lq_d.gather(qd, t, &mut buf.q);
                lk_d.gather(kd, t, &mut buf.k);
                lk_dv.gather(vd, t, &mut buf.v);
                buf.o.clear();
                buf.o.resize(dm.lq * dm.dv, 0.0);
                let (qh, oh) = (&buf.q, &mut buf.o);
                with_head(dm, &buf.k, &buf.v, |kv, wide, one| {
                    forward_head(isa, dm, qh, kv, scale, (oh, lh), (wide, one))
                });
                // SAFETY: `out` is the [B, Lq, H dv] output, and head t is this task's alone.
                unsafe { lq_dv.scatter(&buf.o, t, &out) };
            },
        );
    };
    // SAFETY: the heads' rows tile the output, and every head is scattered in full.
    let o = unsafe { alloc::filled_by(batch * dm.lq * heads * dm.dv, fill) };
    (
        Tensor::from_vec(o, &[batch, dm.lq, heads * dm.dv]),
        Tensor::from_vec(lse, &[batch, heads, dm.lq]),
    )
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
    backward_with(dm, heads, (q, k, v), (o, lse, g), scale, isa())
}

fn backward_with(
    dm: Dims,
    heads: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (o, lse, g): (&Tensor, &Tensor, &Tensor),
    scale: f32,
    isa: Isa,
) -> (Tensor, Tensor, Tensor) {
    let dm = dm.for_isa(isa);
    let [lq_d, lk_d, lk_dv, lq_dv] = layouts(dm, heads);
    // Every element of the three gradients is written once, through the pointers: the heads'
    // rows tile each tensor.
    let mut dq = alloc::with_capacity(q.data().len());
    let mut dk = alloc::with_capacity(k.data().len());
    let mut dv = alloc::with_capacity(v.data().len());
    if dm.lq == 0 {
        dq.resize(q.data().len(), 0.0);
        dk.resize(k.data().len(), 0.0);
        dv.resize(v.data().len(), 0.0);
    } else {
        let ptrs = [&mut dq, &mut dk, &mut dv].map(|t| SendPtr(t.as_mut_ptr()));
        let (qd, kd, vd, od, ld, gd) =
            (q.data(), k.data(), v.data(), o.data(), lse.data(), g.data());
        let lp = dm.pad(dm.lk);
        (0..dm.n).into_par_iter().for_each_init(
            || (HeadBuffers::default(), Vec::new(), Vec::new()),
            |(buf, dqh, dkv), t| {
                lq_d.gather(qd, t, &mut buf.q);
                lk_d.gather(kd, t, &mut buf.k);
                lk_dv.gather(vd, t, &mut buf.v);
                lq_dv.gather(od, t, &mut buf.o);
                lq_dv.gather(gd, t, &mut buf.g);
                let head = HeadInputs {
                    q: &buf.q,
                    o: &buf.o,
                    g: &buf.g,
                    lse: &ld[t * dm.lq..(t + 1) * dm.lq],
                };
                dqh.clear();
                dqh.resize(dm.lq * dm.d, 0.0);
                let total = with_head(dm, &buf.k, &buf.v, |kv, wide, one| {
                    backward_head(isa, dm, head, kv, scale, dqh, (wide, one))
                });
                // SAFETY (all three scatters): the pointers are the [B, L, H w] gradients, and
                // head t is this task's alone.
                unsafe { lq_d.scatter(dqh, t, &ptrs[0]) };
                for (layout, dt, width, ptr) in [
                    (lk_d, &total.dkt, dm.d, &ptrs[1]),
                    (lk_dv, &total.dvt, dm.dv, &ptrs[2]),
                ] {
                    // The head's rows from the transposed (padded) sums.
                    dkv.clear();
                    for j in 0..dm.lk {
                        dkv.extend((0..width).map(|c| dt[c * lp + j]));
                    }
                    unsafe { layout.scatter(dkv, t, ptr) };
                }
            },
        );
        // SAFETY: every head of every gradient was scattered in full above.
        unsafe {
            dq.set_len(q.data().len());
            dk.set_len(k.data().len());
            dv.set_len(v.data().len());
        }
    }
    (
        Tensor::from_vec(dq, q.shape()),
        Tensor::from_vec(dk, k.shape()),
        Tensor::from_vec(dv, v.shape()),
    )
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
