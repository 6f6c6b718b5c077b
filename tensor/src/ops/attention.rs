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

use super::simd::{self, SimdF32};
use crate::kernels::cpu::{isa, Isa};
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
    /// Lanes of the vectors the kernels run on (8 or 16): rows are padded to whole vectors.
    lanes: usize,
}

impl Dims {
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

/// Query rows handled together: each load of a key or value vector feeds this many FMAs.
const ROWS: usize = 4;

/// `x [rows, cols]` copied into `out [rows, stride]` (`transpose` false) or transposed into
/// `out [cols, stride]` (`transpose` true); entries past `cols` (or `rows`) stay as they are.
fn layout_into(x: &[f32], cols: usize, out: &mut [f32], stride: usize, transpose: bool) {
    for (r, row) in x.chunks_exact(cols).enumerate() {
        if transpose {
            for (c, &val) in row.iter().enumerate() {
                out[c * stride + r] = val;
            }
        } else {
            out[r * stride..r * stride + cols].copy_from_slice(row);
        }
    }
}

/// The sum of the lanes, added pairwise in a fixed tree.
fn hsum<V: SimdF32>(v: V) -> f32 {
    let mut buf = [0.0f32; 16];
    v.store(&mut buf);
    let mut n = V::LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            buf[i] += buf[i + n];
        }
    }
    buf[0]
}

/// `out_r = a_r M` for `R` rows at once: `a_r` has `C` coefficients, `M` is `[C, stride]`
/// (stride a whole number of vectors) and each `out_r` has `stride` values. The register tile
/// is `R` rows by two vectors, so each vector of `M` is loaded once for `R` FMAs.
#[inline(always)]
fn rows_times<V: SimdF32, const R: usize>(
    a: [&[f32]; R],
    m: &[f32],
    stride: usize,
    out: &mut [Vec<f32>; R],
) {
    let c_len = a[0].len();
    let mut x = 0;
    let l = V::LANES;
    while x + 2 * l <= stride {
        let mut acc = [[V::splat(0.0); 2]; R];
        for c in 0..c_len {
            let row = &m[c * stride + x..];
            let (m0, m1) = (V::load(row), V::load(&row[l..]));
            for r in 0..R {
                let ar = V::splat(a[r][c]);
                acc[r][0] = ar.mul_add(m0, acc[r][0]);
                acc[r][1] = ar.mul_add(m1, acc[r][1]);
            }
        }
        for r in 0..R {
            acc[r][0].store(&mut out[r][x..]);
            acc[r][1].store(&mut out[r][x + l..]);
        }
        x += 2 * l;
    }
    if x < stride {
        // One vector of columns: two accumulators per row over alternate coefficients, so
        // that 2R FMA chains are in flight (a long sum over keys would otherwise wait on
        // the FMA latency).
        let mut acc = [[V::splat(0.0); 2]; R];
        let pairs = c_len / 2 * 2;
        for c in (0..pairs).step_by(2) {
            let m0 = V::load(&m[c * stride + x..]);
            let m1 = V::load(&m[(c + 1) * stride + x..]);
            for r in 0..R {
                acc[r][0] = V::splat(a[r][c]).mul_add(m0, acc[r][0]);
                acc[r][1] = V::splat(a[r][c + 1]).mul_add(m1, acc[r][1]);
            }
        }
        if pairs < c_len {
            let m0 = V::load(&m[pairs * stride + x..]);
            for r in 0..R {
                acc[r][0] = V::splat(a[r][pairs]).mul_add(m0, acc[r][0]);
            }
        }
        for r in 0..R {
            (acc[r][0] + acc[r][1]).store(&mut out[r][x..]);
        }
    }
}

/// `M += sum_r a_r b_r^T` for `R` rows at once: `a_r` has `C` values, each `b_r` and each row
/// of `M` (`[C, stride]`) has `stride` values (a whole number of vectors).
#[inline(always)]
fn add_outer<V: SimdF32, const R: usize>(
    a: [&[f32]; R],
    b: [&[f32]; R],
    m: &mut [f32],
    stride: usize,
) {
    for (c, row) in m.chunks_exact_mut(stride).enumerate().take(a[0].len()) {
        // Loops, not closures: a closure would not inherit the caller's target features.
        let mut ac = [V::splat(0.0); R];
        for r in 0..R {
            ac[r] = V::splat(a[r][c]);
        }
        for x in (0..stride).step_by(V::LANES) {
            let mut acc = V::load(&row[x..]);
            for r in 0..R {
                acc = ac[r].mul_add(V::load(&b[r][x..]), acc);
            }
            acc.store(&mut row[x..]);
        }
    }
}

/// `e^x` for the shifted scores `x <= 0` of a softmax: the range reduction and degree-7
/// polynomial of [`vmath::exp`] with one power-of-two scaling, since `x` never overflows, and
/// 0 below -87 (where `e^x` is below the smallest normal f32; the general version returns
/// subnormals there). Relative error within 2 ulp; NaN stays NaN; `-inf` gives 0.
#[inline(always)]
fn exp_nonpositive<V: SimdF32>(x: V) -> V {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Operand order keeps a NaN lane NaN (the max returns its second operand on NaN).
    let xc = V::splat(-87.0).max_(x);
    let n = (xc * V::splat(std::f32::consts::LOG2_E)).round_();
    let r = n.mul_add(V::splat(-LN2_HI), xc);
    let r = n.mul_add(V::splat(-LN2_LO), r);
    let mut p = V::splat(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
        p = p.mul_add(r, V::splat(c));
    }
    let y = (p.mul_add(r * r, r) + V::splat(1.0)) * n.pow2i();
    V::select(x.lt(V::splat(-87.0)), V::splat(0.0), y)
}

/// `p = e^(s - m)` in place (exactly 0 in the -inf padding lanes); returns the sum.
#[inline(always)]
fn exp_shifted<V: SimdF32>(s: &mut [f32], m: f32) -> f32 {
    let mv = V::splat(m);
    let mut acc = V::splat(0.0);
    for c in s.chunks_exact_mut(V::LANES) {
        let e = exp_nonpositive(V::load(c) - mv);
        e.store(c);
        acc = acc + e;
    }
    hsum(acc)
}

/// The maximum of `s` (a whole number of vectors).
#[inline(always)]
fn vmax<V: SimdF32>(s: &[f32]) -> f32 {
    let mut acc = [V::splat(f32::NEG_INFINITY); 2];
    let l = V::LANES;
    let pairs = s.chunks_exact(2 * l);
    let rest = pairs.remainder();
    for c in pairs {
        acc[0] = acc[0].max_(V::load(c));
        acc[1] = acc[1].max_(V::load(&c[l..]));
    }
    if !rest.is_empty() {
        acc[0] = acc[0].max_(V::load(rest));
    }
    let mut buf = [f32::NEG_INFINITY; 16];
    acc[0].max_(acc[1]).store(&mut buf);
    buf.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// One head's keys and values, laid out for the row kernels: `kt [d, lkp]` and
/// `vt [dv, lkp]` (transposed), `kp [lk, dp]` and `vp [lk, dvp]` (rows padded to whole
/// vectors); every padding entry is 0.
struct HeadKv {
    kt: Vec<f32>,
    vt: Vec<f32>,
    kp: Vec<f32>,
    vp: Vec<f32>,
}

impl HeadKv {
    fn new(dm: Dims, k: &[f32], v: &[f32]) -> HeadKv {
        let (lp, dp, dvp) = (dm.pad(dm.lk), dm.pad(dm.d), dm.pad(dm.dv));
        let mut kv = HeadKv {
            kt: vec![0.0; dm.d * lp],
            vt: vec![0.0; dm.dv * lp],
            kp: vec![0.0; dm.lk * dp],
            vp: vec![0.0; dm.lk * dvp],
        };
        layout_into(k, dm.d, &mut kv.kt, lp, true);
        layout_into(v, dm.dv, &mut kv.vt, lp, true);
        layout_into(k, dm.d, &mut kv.kp, dp, false);
        layout_into(v, dm.dv, &mut kv.vp, dvp, false);
        kv
    }
}

/// Scratch rows for `R` query rows: the scaled queries, scores or probabilities and a second
/// row of the same length (`lkp` long), and a row of up to `max(d, dv)` channels.
struct Scratch<const R: usize> {
    qs: [Vec<f32>; R],
    p: [Vec<f32>; R],
    t: [Vec<f32>; R],
    small: [Vec<f32>; R],
}

impl<const R: usize> Scratch<R> {
    fn new(dm: Dims) -> Scratch<R> {
        let (lp, wide) = (dm.pad(dm.lk), dm.pad(dm.d.max(dm.dv)));
        Scratch {
            qs: std::array::from_fn(|_| vec![0.0; dm.d]),
            p: std::array::from_fn(|_| vec![0.0; lp]),
            t: std::array::from_fn(|_| vec![0.0; lp]),
            small: std::array::from_fn(|_| vec![0.0; wide]),
        }
    }
}

/// Probabilities of query rows `i0..i0 + R` into `sc.p`: the scaled scores, then
/// `e^(s - shift_r)` with `shift_r` the row maximum (`shift` `None`, forward; the sums are
/// returned) or the saved log-sum-exp (backward).
#[inline(always)]
fn probabilities<V: SimdF32, const R: usize>(
    dm: Dims,
    i0: usize,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    shift: Option<&[f32]>,
    sc: &mut Scratch<R>,
) -> [(f32, f32); R] {
    let lp = dm.pad(dm.lk);
    for (r, qs) in sc.qs.iter_mut().enumerate() {
        for (x, &y) in qs.iter_mut().zip(&q[(i0 + r) * dm.d..(i0 + r + 1) * dm.d]) {
            *x = y * scale;
        }
    }
    rows_times::<V, R>(
        std::array::from_fn(|r| &sc.qs[r][..]),
        &kv.kt,
        lp,
        &mut sc.p,
    );
    let mut out = [(0.0, 0.0); R];
    for (r, (s, res)) in sc.p.iter_mut().zip(out.iter_mut()).enumerate() {
        s[dm.lk..].fill(f32::NEG_INFINITY);
        let m = match shift {
            Some(lse) => lse[i0 + r],
            None => vmax::<V>(s),
        };
        *res = (m, exp_shifted::<V>(s, m));
    }
    out
}

/// Forward over query rows `i0..i0 + R` of one head, writing rows `r0..r0 + R` of the block's
/// `o [rows, dv]` and `lse`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_group<V: SimdF32, const R: usize>(
    dm: Dims,
    i0: usize,
    r0: usize,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    o: &mut [f32],
    lse: &mut [f32],
    sc: &mut Scratch<R>,
) {
    let ml = probabilities::<V, R>(dm, i0, q, kv, scale, None, sc);
    let dvp = dm.pad(dm.dv);
    rows_times::<V, R>(
        std::array::from_fn(|r| &sc.p[r][..dm.lk]),
        &kv.vp,
        dvp,
        &mut sc.small,
    );
    for (r, &(m, l)) in ml.iter().enumerate() {
        let inv = 1.0 / l;
        for (oe, &x) in o[(r0 + r) * dm.dv..(r0 + r + 1) * dm.dv]
            .iter_mut()
            .zip(&sc.small[r])
        {
            *oe = x * inv;
        }
        lse[r0 + r] = m + l.ln();
    }
}

/// Forward rows `rows` of one head: writes `o` (those rows, `[rows, dv]`) and `lse`.
#[inline(always)]
fn forward_rows<V: SimdF32>(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let mut wide = Scratch::<ROWS>::new(dm);
    let mut one = Scratch::<1>::new(dm);
    let mut r0 = 0;
    while r0 < rows.len() {
        if r0 + ROWS <= rows.len() {
            forward_group::<V, ROWS>(dm, rows.start + r0, r0, q, kv, scale, o, lse, &mut wide);
            r0 += ROWS;
        } else {
            forward_group::<V, 1>(dm, rows.start + r0, r0, q, kv, scale, o, lse, &mut one);
            r0 += 1;
        }
    }
}

/// One block of query rows' contributions to the key and value gradients, transposed
/// (`[d, lkp]` and `[dv, lkp]`).
struct BlockGrads {
    dkt: Vec<f32>,
    dvt: Vec<f32>,
}

/// Backward over query rows `i0..i0 + R` of one head: writes their `dq` (rows `r0..` of the
/// block's `dq`) and adds their key and value gradients into `grads`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_group<V: SimdF32, const R: usize>(
    dm: Dims,
    i0: usize,
    r0: usize,
    q: &[f32],
    kv: &HeadKv,
    o: &[f32],
    lse: &[f32],
    g: &[f32],
    scale: f32,
    dq: &mut [f32],
    grads: &mut BlockGrads,
    sc: &mut Scratch<R>,
) {
    let lp = dm.pad(dm.lk);
    probabilities::<V, R>(dm, i0, q, kv, scale, Some(lse), sc);
    let gs: [&[f32]; R] = std::array::from_fn(|r| &g[(i0 + r) * dm.dv..(i0 + r + 1) * dm.dv]);
    // dp_j = g_i . v_j, then ds_j = p_j (dp_j - D_i) with D_i = g_i . o_i.
    rows_times::<V, R>(gs, &kv.vt, lp, &mut sc.t);
    for r in 0..R {
        let oi = &o[(i0 + r) * dm.dv..(i0 + r + 1) * dm.dv];
        let di = V::splat(gs[r].iter().zip(oi).map(|(a, b)| a * b).sum::<f32>());
        let l = V::LANES;
        for (dc, pc) in sc.t[r].chunks_exact_mut(l).zip(sc.p[r].chunks_exact(l)) {
            (V::load(pc) * (V::load(dc) - di)).store(dc);
        }
    }
    // dq_i = scale sum_j ds_j k_j.
    let dp = dm.pad(dm.d);
    rows_times::<V, R>(
        std::array::from_fn(|r| &sc.t[r][..dm.lk]),
        &kv.kp,
        dp,
        &mut sc.small,
    );
    for r in 0..R {
        for (x, &y) in dq[(r0 + r) * dm.d..(r0 + r + 1) * dm.d]
            .iter_mut()
            .zip(&sc.small[r])
        {
            *x = scale * y;
        }
    }
    // dk_j += scale ds_j q_i and dv_j += p_j g_i, as [channel, key] outer products.
    // sc.qs still holds scale * q_i from `probabilities`.
    add_outer::<V, R>(
        std::array::from_fn(|r| &sc.qs[r][..]),
        std::array::from_fn(|r| &sc.t[r][..]),
        &mut grads.dkt,
        lp,
    );
    add_outer::<V, R>(
        gs,
        std::array::from_fn(|r| &sc.p[r][..]),
        &mut grads.dvt,
        lp,
    );
}

/// Backward over rows `rows` of one head: writes `dq` for those rows and returns the block's
/// contributions to the key and value gradients.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_rows<V: SimdF32>(
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
    let lp = dm.pad(dm.lk);
    let mut grads = BlockGrads {
        dkt: vec![0.0; dm.d * lp],
        dvt: vec![0.0; dm.dv * lp],
    };
    let mut wide = Scratch::<ROWS>::new(dm);
    let mut one = Scratch::<1>::new(dm);
    let mut r0 = 0;
    while r0 < rows.len() {
        let i0 = rows.start + r0;
        if r0 + ROWS <= rows.len() {
            backward_group::<V, ROWS>(
                dm, i0, r0, q, kv, o, lse, g, scale, dq, &mut grads, &mut wide,
            );
            r0 += ROWS;
        } else {
            backward_group::<V, 1>(
                dm, i0, r0, q, kv, o, lse, g, scale, dq, &mut grads, &mut one,
            );
            r0 += 1;
        }
    }
    grads
}

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
        ) -> Option<BlockGrads> {
            run_pass::<$v>(dm, rows, q, kv, scale, pass)
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
) -> Option<BlockGrads> {
    debug_assert_eq!(V::LANES, dm.lanes);
    match pass {
        Pass::Forward { o, lse } => {
            forward_rows::<V>(dm, rows, q, kv, scale, o, lse);
            None
        }
        Pass::Backward { o, lse, g, dq } => {
            Some(backward_rows::<V>(dm, rows, q, kv, o, lse, g, scale, dq))
        }
    }
}

#[cfg(target_arch = "x86_64")]
with_features!(run_pass_avx512, "avx512f,avx2,fma", simd::Avx512);
#[cfg(target_arch = "x86_64")]
with_features!(run_pass_avx2, "avx2,fma", simd::Avx2);

/// [`run_pass`] on the implementation for `isa` (which the CPU must have).
fn run_pass_on(
    isa: Isa,
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    pass: Pass<'_>,
) -> Option<BlockGrads> {
    match isa {
        // SAFETY: `isa` is the CPU's (cpu::isa) or a lesser one.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_pass_avx512(dm, rows, q, kv, scale, pass) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { run_pass_avx2(dm, rows, q, kv, scale, pass) },
        _ => run_pass::<f32x8>(dm, rows, q, kv, scale, pass),
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
    let dm = Dims {
        lanes: lanes_of(isa),
        ..dm
    };
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
                        let pass = Pass::Forward { o: ob, lse: lb };
                        run_pass_on(isa, dm, rows, qh, &kv, scale, pass);
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
    let dm = Dims {
        lanes: lanes_of(isa),
        ..dims("attention_backward", q, k, v)
    };
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
        let lp = dm.pad(dm.lk);
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
                        let pass = Pass::Backward {
                            o: oh,
                            lse: lh,
                            g: gh,
                            dq: dqb,
                        };
                        run_pass_on(isa, dm, rows, qh, &kv, scale, pass)
                            .expect("the backward pass returns gradients")
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

    /// The CPU's instruction set and every lesser one it can run.
    fn isas() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
            .into_iter()
            .filter(|&i| i <= isa())
            .collect()
    }

    fn check(lead: &[usize], lq: usize, lk: usize, d: usize, dv: usize, isa: Isa, seed: u64) {
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
        let (o, lse) = attention_with(dm, &q, &k, &v, scale, isa);
        let (dq, dk, dvv) = attention_backward_with(&q, &k, &v, &o, &lse, &g, scale, isa);
        let what = format!("lead {lead:?} lq {lq} lk {lk} d {d} dv {dv} {isa:?}");
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
        for isa in isas() {
            for &(lq, lk) in &[(1, 1), (3, 7), (17, 129), (129, 17), (70, 9)] {
                for &(d, dv) in &[(1, 1), (3, 5), (8, 8), (33, 17)] {
                    seed += 1;
                    check(&[2], lq, lk, d, dv, isa, seed);
                }
            }
        }
        // Many heads (one task each) with two leading axes.
        check(&[3, 4], 20, 20, 8, 8, isa(), 99);
    }

    #[test]
    fn exp_nonpositive_matches_f64_and_flushes_below_minus_87() {
        let _guard = super::super::testutil::isa_lock();
        let xs: Vec<f32> = (0..=20_000)
            .map(|i| -90.0 * i as f32 / 20_000.0)
            .chain([-0.0, -1e-30, -86.99, -87.0, -87.01, f32::NEG_INFINITY])
            .collect();
        fn apply<V: SimdF32>(v: &mut [f32]) {
            for c in v.chunks_exact_mut(V::LANES) {
                exp_nonpositive(V::load(c)).store(c);
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn on_avx512(v: &mut [f32]) {
            apply::<simd::Avx512>(v);
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn on_avx2(v: &mut [f32]) {
            apply::<simd::Avx2>(v);
        }
        let run = |isa: Isa| -> Vec<f32> {
            let mut out = vec![0.0f32; xs.len().div_ceil(16) * 16];
            out[..xs.len()].copy_from_slice(&xs);
            match isa {
                // SAFETY: `isas()` lists only instruction sets this CPU has.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { on_avx512(&mut out) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { on_avx2(&mut out) },
                _ => apply::<f32x8>(&mut out),
            }
            out.truncate(xs.len());
            out
        };
        for isa in isas() {
            for (&x, y) in xs.iter().zip(run(isa)) {
                if x < -87.0 {
                    assert_eq!(y, 0.0, "e^{x}");
                } else {
                    let want = (x as f64).exp();
                    assert!(
                        ((y as f64) - want).abs() <= 2.5e-7 * want,
                        "e^{x}: {y} vs {want}"
                    );
                }
            }
        }
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
