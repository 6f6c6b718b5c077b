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

use super::simd::{self, V8};
use super::vmath;
use crate::Tensor;

/// Query rows per task when a head is split (few heads).
const ROW_BLOCK: usize = 64;
/// With at least this many heads, each head is one task and is never split.
const MIN_HEADS_UNSPLIT: usize = 8;

/// Sizes of one call: `n` heads (all leading axes), `lq` queries, `lk` keys, `d` channels of
/// queries and keys, `dv` channels of values.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
}

impl Dims {
    /// `lk` rounded up to whole 8-lane vectors.
    fn lk_padded(self) -> usize {
        self.lk.div_ceil(8) * 8
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
    }
}

/// `x [rows, cols]` transposed into `out [cols, stride]` (columns past `rows` stay as they are).
fn transpose_into(x: &[f32], rows: usize, cols: usize, out: &mut [f32], stride: usize) {
    for (r, row) in x.chunks_exact(cols).take(rows).enumerate() {
        for (c, &val) in row.iter().enumerate() {
            out[c * stride + r] = val;
        }
    }
}

fn hsum<V: V8>(v: V) -> f32 {
    let mut buf = [0.0f32; 8];
    v.store(&mut buf);
    ((buf[0] + buf[4]) + (buf[1] + buf[5])) + ((buf[2] + buf[6]) + (buf[3] + buf[7]))
}

/// `y += a x` over whole vectors.
#[inline(always)]
fn axpy<V: V8>(a: f32, x: &[f32], y: &mut [f32]) {
    let av = V::splat(a);
    for (xc, yc) in x.chunks_exact(8).zip(y.chunks_exact_mut(8)) {
        av.mul_add(V::load(xc), V::load(yc)).store(yc);
    }
}

/// `x . y` over whole vectors.
#[inline(always)]
fn dot<V: V8>(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [V::splat(0.0); 2];
    let (x2, y2) = (x.chunks_exact(16), y.chunks_exact(16));
    let (xr, yr) = (x2.remainder(), y2.remainder());
    for (xc, yc) in x2.zip(y2) {
        acc[0] = V::load(xc).mul_add(V::load(yc), acc[0]);
        acc[1] = V::load(&xc[8..]).mul_add(V::load(&yc[8..]), acc[1]);
    }
    if !xr.is_empty() {
        acc[0] = V::load(xr).mul_add(V::load(yr), acc[0]);
    }
    hsum(acc[0] + acc[1])
}

/// One head's keys and values transposed to `[channel, key]` rows of `lk_padded` values
/// (zero past `lk`).
struct HeadKv {
    kt: Vec<f32>,
    vt: Vec<f32>,
}

impl HeadKv {
    fn new(dm: Dims, k: &[f32], v: &[f32]) -> HeadKv {
        let lp = dm.lk_padded();
        let mut kt = vec![0.0; dm.d * lp];
        let mut vt = vec![0.0; dm.dv * lp];
        transpose_into(k, dm.lk, dm.d, &mut kt, lp);
        transpose_into(v, dm.lk, dm.dv, &mut vt, lp);
        HeadKv { kt, vt }
    }
}

/// `s_j = scale q . k_j` for the first `lk` keys, and -inf in the padding lanes past them.
#[inline(always)]
fn scores<V: V8>(q: &[f32], scale: f32, kt: &[f32], lk: usize, s: &mut [f32]) {
    let lp = s.len();
    s.fill(0.0);
    for (&qd, kd) in q.iter().zip(kt.chunks_exact(lp)) {
        axpy::<V>(scale * qd, kd, s);
    }
    s[lk..].fill(f32::NEG_INFINITY);
}

/// `p_j = e^(s_j - m)` in place (exactly 0 in the -inf padding lanes); returns the sum.
#[inline(always)]
fn exp_shifted<V: V8>(s: &mut [f32], m: f32) -> f32 {
    let mv = V::splat(m);
    let mut acc = V::splat(0.0);
    for c in s.chunks_exact_mut(8) {
        let e = vmath::exp(V::load(c) - mv);
        e.store(c);
        acc = acc + e;
    }
    hsum(acc)
}

/// Forward rows `rows` of one head: writes `o` (those rows, `[rows, dv]`) and `lse`.
#[inline(always)]
fn forward_rows<V: V8>(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let lp = dm.lk_padded();
    let mut s = vec![0.0f32; lp];
    for (r, i) in rows.enumerate() {
        scores::<V>(&q[i * dm.d..(i + 1) * dm.d], scale, &kv.kt, dm.lk, &mut s);
        let m = s[..dm.lk].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let l = exp_shifted::<V>(&mut s, m);
        let inv = 1.0 / l;
        for (oe, ve) in o[r * dm.dv..(r + 1) * dm.dv]
            .iter_mut()
            .zip(kv.vt.chunks_exact(lp))
        {
            *oe = dot::<V>(&s, ve) * inv;
        }
        lse[r] = m + l.ln();
    }
}

/// One block of query rows' contributions to the key and value gradients, transposed
/// (`[d, lk_padded]` and `[dv, lk_padded]`).
struct BlockGrads {
    dkt: Vec<f32>,
    dvt: Vec<f32>,
}

/// Backward over rows `rows` of one head: writes `dq` for those rows and returns the block's
/// contributions to the key and value gradients.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_rows<V: V8>(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    o: &[f32],
    lse: &[f32],
    g: &[f32],
    scale: f32,
    dq: &mut [f32],
) -> BlockGrads {
    let lp = dm.lk_padded();
    let mut grads = BlockGrads {
        dkt: vec![0.0; dm.d * lp],
        dvt: vec![0.0; dm.dv * lp],
    };
    let (mut p, mut ds) = (vec![0.0f32; lp], vec![0.0f32; lp]);
    for (r, i) in rows.enumerate() {
        let qi = &q[i * dm.d..(i + 1) * dm.d];
        let gi = &g[i * dm.dv..(i + 1) * dm.dv];
        let oi = &o[i * dm.dv..(i + 1) * dm.dv];
        scores::<V>(qi, scale, &kv.kt, dm.lk, &mut p);
        exp_shifted::<V>(&mut p, lse[i]);
        // dp_j = g_i . v_j, then ds_j = p_j (dp_j - D_i).
        ds.fill(0.0);
        for (&ge, ve) in gi.iter().zip(kv.vt.chunks_exact(lp)) {
            axpy::<V>(ge, ve, &mut ds);
        }
        let di: f32 = gi.iter().zip(oi).map(|(a, b)| a * b).sum();
        let dv = V::splat(di);
        for (dc, pc) in ds.chunks_exact_mut(8).zip(p.chunks_exact(8)) {
            (V::load(pc) * (V::load(dc) - dv)).store(dc);
        }
        for (dqd, kd) in dq[r * dm.d..(r + 1) * dm.d]
            .iter_mut()
            .zip(kv.kt.chunks_exact(lp))
        {
            *dqd = scale * dot::<V>(&ds, kd);
        }
        for (&qd, dkd) in qi.iter().zip(grads.dkt.chunks_exact_mut(lp)) {
            axpy::<V>(scale * qd, &ds, dkd);
        }
        for (&ge, dvd) in gi.iter().zip(grads.dvt.chunks_exact_mut(lp)) {
            axpy::<V>(ge, &p, dvd);
        }
    }
    grads
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_rows_avx2(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    o: &mut [f32],
    lse: &mut [f32],
) {
    forward_rows::<simd::Avx2>(dm, rows, q, kv, scale, o, lse);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_rows_avx2(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    o: &[f32],
    lse: &[f32],
    g: &[f32],
    scale: f32,
    dq: &mut [f32],
) -> BlockGrads {
    backward_rows::<simd::Avx2>(dm, rows, q, kv, o, lse, g, scale, dq)
}

/// [`forward_rows`] on the best implementation for this CPU.
#[allow(clippy::too_many_arguments)]
fn forward_rows_best(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    o: &mut [f32],
    lse: &mut [f32],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` comes from `simd::use_avx2`.
        unsafe { forward_rows_avx2(dm, rows, q, kv, scale, o, lse) };
        return;
    }
    let _ = avx2;
    forward_rows::<f32x8>(dm, rows, q, kv, scale, o, lse);
}

/// [`backward_rows`] on the best implementation for this CPU.
#[allow(clippy::too_many_arguments)]
fn backward_rows_best(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    o: &[f32],
    lse: &[f32],
    g: &[f32],
    scale: f32,
    dq: &mut [f32],
    avx2: bool,
) -> BlockGrads {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` comes from `simd::use_avx2`.
        return unsafe { backward_rows_avx2(dm, rows, q, kv, o, lse, g, scale, dq) };
    }
    let _ = avx2;
    backward_rows::<f32x8>(dm, rows, q, kv, o, lse, g, scale, dq)
}

/// Attention over the last two axes of `q [.., Lq, d]`, `k [.., Lk, d]`, `v [.., Lk, dv]`
/// (equal leading axes, each a separate head): returns `O = softmax(scale Q K^T) V`
/// `[.., Lq, dv]` and the log-sum-exp of each row of scaled scores `[.., Lq]`, which
/// [`attention_backward`] needs. Adds the work of the two products, `2 Lq Lk (d + dv)` per
/// head, to the FLOP counter. Panics if the shapes disagree.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> (Tensor, Tensor) {
    let dm = dims("attention", q, k, v);
    attention_with(dm, q, k, v, scale, simd::use_avx2())
}

fn attention_with(
    dm: Dims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    avx2: bool,
) -> (Tensor, Tensor) {
    let lead = &q.shape()[..q.shape().len() - 2];
    let mut o_shape = lead.to_vec();
    o_shape.extend([dm.lq, dm.dv]);
    let mut lse_shape = lead.to_vec();
    lse_shape.push(dm.lq);
    let mut o = vec![0.0f32; dm.n * dm.lq * dm.dv];
    let mut lse = vec![0.0f32; dm.n * dm.lq];
    if dm.lq > 0 {
        super::flops::add((2 * dm.n * dm.lq * dm.lk * (dm.d + dm.dv)) as u64);
        let (qd, kd, vd) = (q.data(), k.data(), v.data());
        o.par_chunks_mut(dm.lq * dm.dv)
            .zip(lse.par_chunks_mut(dm.lq))
            .enumerate()
            .for_each(|(h, (oh, lh))| {
                let kv = HeadKv::new(
                    dm,
                    &kd[h * dm.lk * dm.d..(h + 1) * dm.lk * dm.d],
                    &vd[h * dm.lk * dm.dv..(h + 1) * dm.lk * dm.dv],
                );
                let qh = &qd[h * dm.lq * dm.d..(h + 1) * dm.lq * dm.d];
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
                        forward_rows_best(dm, rows, qh, &kv, scale, ob, lb, avx2);
                    });
            });
    }
    (
        Tensor::from_vec(o, &o_shape),
        Tensor::from_vec(lse, &lse_shape),
    )
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
    attention_backward_with(q, k, v, o, lse, g, scale, simd::use_avx2())
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
    avx2: bool,
) -> (Tensor, Tensor, Tensor) {
    let dm = dims("attention_backward", q, k, v);
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
    let mut dq = vec![0.0f32; dm.n * dm.lq * dm.d];
    let mut dk = vec![0.0f32; dm.n * dm.lk * dm.d];
    let mut dv = vec![0.0f32; dm.n * dm.lk * dm.dv];
    if dm.lq > 0 {
        let (qd, kd, vd, od, ld, gd) =
            (q.data(), k.data(), v.data(), o.data(), lse.data(), g.data());
        let lp = dm.lk_padded();
        dq.par_chunks_mut(dm.lq * dm.d)
            .zip(dk.par_chunks_mut(dm.lk * dm.d))
            .zip(dv.par_chunks_mut(dm.lk * dm.dv))
            .enumerate()
            .for_each(|(h, ((dqh, dkh), dvh))| {
                let kv = HeadKv::new(
                    dm,
                    &kd[h * dm.lk * dm.d..(h + 1) * dm.lk * dm.d],
                    &vd[h * dm.lk * dm.dv..(h + 1) * dm.lk * dm.dv],
                );
                let qh = &qd[h * dm.lq * dm.d..(h + 1) * dm.lq * dm.d];
                let oh = &od[h * dm.lq * dm.dv..(h + 1) * dm.lq * dm.dv];
                let gh = &gd[h * dm.lq * dm.dv..(h + 1) * dm.lq * dm.dv];
                let lh = &ld[h * dm.lq..(h + 1) * dm.lq];
                let blocks: Vec<_> = (0..dm.blocks()).map(|b| dm.rows(b)).collect();
                let mut dq_parts = Vec::new();
                let mut rest = &mut dqh[..];
                for r in &blocks {
                    let (a, b) = rest.split_at_mut(r.len() * dm.d);
                    dq_parts.push(a);
                    rest = b;
                }
                let parts: Vec<BlockGrads> = blocks
                    .into_par_iter()
                    .zip(dq_parts)
                    .map(|(rows, dqb)| {
                        backward_rows_best(dm, rows, qh, &kv, oh, lh, gh, scale, dqb, avx2)
                    })
                    .collect();
                // Block partials added in block order: independent of the thread count.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, Lcg};

    /// Attention and its gradients for one head in f64, straight from the definitions:
    /// returns (o, lse, dq, dk, dv).
    #[allow(clippy::type_complexity)]
    fn reference(
        dm: Dims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (lq, lk, d, e) = (dm.lq, dm.lk, dm.d, dm.dv);
        let mut o = vec![0.0; lq * e];
        let mut lse = vec![0.0; lq];
        let mut dq = vec![0.0; lq * d];
        let mut dk = vec![0.0; lk * d];
        let mut dv = vec![0.0; lk * e];
        for i in 0..lq {
            let s: Vec<f64> = (0..lk)
                .map(|j| {
                    scale
                        * (0..d)
                            .map(|c| q[i * d + c] as f64 * k[j * d + c] as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            lse[i] = m + z.ln();
            let p: Vec<f64> = s.iter().map(|x| (x - lse[i]).exp()).collect();
            for c in 0..e {
                o[i * e + c] = (0..lk).map(|j| p[j] * v[j * e + c] as f64).sum();
            }
            // dP_ij = g_i . v_j; dS = P (dP - rowsum(P dP)).
            let dp: Vec<f64> = (0..lk)
                .map(|j| {
                    (0..e)
                        .map(|c| g[i * e + c] as f64 * v[j * e + c] as f64)
                        .sum()
                })
                .collect();
            let dot: f64 = (0..lk).map(|j| p[j] * dp[j]).sum();
            for j in 0..lk {
                let ds = p[j] * (dp[j] - dot);
                for c in 0..d {
                    dq[i * d + c] += scale * ds * k[j * d + c] as f64;
                    dk[j * d + c] += scale * ds * q[i * d + c] as f64;
                }
                for c in 0..e {
                    dv[j * e + c] += p[j] * g[i * e + c] as f64;
                }
            }
        }
        (o, lse, dq, dk, dv)
    }

    fn check(lead: &[usize], lq: usize, lk: usize, d: usize, dv: usize, avx2: bool, seed: u64) {
        let mut rng = Lcg::new(seed);
        let shape = |a: usize, b: usize| {
            let mut s = lead.to_vec();
            s.extend([a, b]);
            s
        };
        let (q, k, v) = (
            rng.tensor(&shape(lq, d)),
            rng.tensor(&shape(lk, d)),
            rng.tensor(&shape(lk, dv)),
        );
        let g = rng.tensor(&shape(lq, dv));
        let scale = 1.0 / (d as f32).sqrt();
        let dm = dims("test", &q, &k, &v);
        let (o, lse) = attention_with(dm, &q, &k, &v, scale, avx2);
        let (dq, dk, dvv) = attention_backward_with(&q, &k, &v, &o, &lse, &g, scale, avx2);
        let what = format!("lead {lead:?} lq {lq} lk {lk} d {d} dv {dv} avx2 {avx2}");
        let mut want = [vec![], vec![], vec![], vec![], vec![]];
        for h in 0..dm.n {
            let r = reference(
                dm,
                &q.data()[h * lq * d..(h + 1) * lq * d],
                &k.data()[h * lk * d..(h + 1) * lk * d],
                &v.data()[h * lk * dv..(h + 1) * lk * dv],
                &g.data()[h * lq * dv..(h + 1) * lq * dv],
                scale as f64,
            );
            for (w, part) in want.iter_mut().zip([r.0, r.1, r.2, r.3, r.4]) {
                w.extend(part);
            }
        }
        assert_close(
            &format!("attention o, {what}"),
            o.data(),
            &want[0],
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("attention lse, {what}"),
            lse.data(),
            &want[1],
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("attention dq, {what}"),
            dq.data(),
            &want[2],
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("attention dk, {what}"),
            dk.data(),
            &want[3],
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("attention dv, {what}"),
            dvv.data(),
            &want[4],
            1e-4,
            1e-4,
        );
    }

    #[test]
    fn matches_f64_reference_on_awkward_sizes_on_both_paths() {
        let _guard = super::super::testutil::isa_lock();
        let mut seed = 0;
        for avx2 in [simd::use_avx2(), false] {
            for &(lq, lk) in &[(1, 1), (3, 7), (17, 129), (129, 17), (70, 9)] {
                for &(d, dv) in &[(1, 1), (3, 5), (8, 8), (33, 17)] {
                    seed += 1;
                    check(&[2], lq, lk, d, dv, avx2, seed);
                }
            }
        }
        // Many heads (one task each) with two leading axes.
        check(&[3, 4], 20, 20, 8, 8, simd::use_avx2(), 99);
    }

    #[test]
    fn large_scores_stay_finite() {
        let q = Tensor::from_vec(vec![100.0, -100.0], &[1, 2, 1]);
        let k = Tensor::from_vec(vec![100.0, 99.0, -3.0], &[1, 3, 1]);
        let v = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[1, 3, 1]);
        let (o, lse) = attention(&q, &k, &v, 1.0);
        // Row 0: scores 1e4, 9900, -300: all weight on key 0. Row 1: -1e4, -9900, 300: key 2.
        assert_eq!(o.data(), &[1.0, 3.0]);
        assert_eq!(lse.data(), &[10000.0, 300.0]);
    }

    #[test]
    fn bitwise_identical_on_1_and_2_threads() {
        let _guard = super::super::testutil::isa_lock();
        let mut rng = Lcg::new(7);
        // Few heads (rows split into blocks) and many heads (one task per head).
        for lead in [vec![2usize], vec![4, 4]] {
            let mut shape = lead.clone();
            shape.extend([150, 16]);
            let (q, k, v, g) = (
                rng.tensor(&shape),
                rng.tensor(&shape),
                rng.tensor(&shape),
                rng.tensor(&shape),
            );
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let (o, lse) = attention(&q, &k, &v, 0.25);
                    let grads = attention_backward(&q, &k, &v, &o, &lse, &g, 0.25);
                    (o, lse, grads)
                })
            };
            let (a, b) = (run(1), run(2));
            assert_eq!(a.0.data(), b.0.data());
            assert_eq!(a.1.data(), b.1.data());
            assert_eq!(a.2 .0.data(), b.2 .0.data());
            assert_eq!(a.2 .1.data(), b.2 .1.data());
            assert_eq!(a.2 .2.data(), b.2 .2.data());
        }
    }

    #[test]
    #[should_panic(expected = "attention: expected q [.., Lq, d], k [.., Lk, d], v [.., Lk, dv]")]
    fn mismatched_shapes_panic_with_the_op_and_shapes() {
        let q = Tensor::zeros(&[2, 3, 4]);
        let k = Tensor::zeros(&[2, 5, 3]);
        let v = Tensor::zeros(&[2, 5, 6]);
        let _ = attention(&q, &k, &v, 1.0);
    }
}
