//! The per-head row kernels of [`super`]: query rows in register tiles of [`ROWS`], keys
//! and values laid out once per head, the softmax-range exponential, and the forward and
//! backward passes over a block of query rows, written once for any [`SimdF32`].

use std::cell::RefCell;

use super::Dims;
use crate::ops::simd::SimdF32;
use crate::ops::vmath;

/// Query rows handled together: each load of a key or value vector feeds this many FMAs.
pub(super) const ROWS: usize = 4;

/// `x [rows, cols]` copied into `out [rows, stride]` (`transpose` false) or transposed into
/// `out [cols, stride]` (`transpose` true); entries past `cols` (or `rows`) stay as they are.
pub(super) fn layout_into(x: &[f32], cols: usize, out: &mut [f32], stride: usize, transpose: bool) {
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
pub(super) fn hsum<V: SimdF32>(v: V) -> f32 {
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
pub(super) fn rows_times<V: SimdF32, const R: usize>(
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
pub(super) fn add_outer<V: SimdF32, const R: usize>(
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
/// polynomial of [`vmath::exp_reduced`] with one power-of-two scaling, since `x` never
/// overflows, and 0 below -87 (where `e^x` is below the smallest normal f32; the general
/// version returns subnormals there). Relative error within 2 ulp; NaN stays NaN; `-inf`
/// gives 0.
#[inline(always)]
pub(super) fn exp_nonpositive<V: SimdF32>(x: V) -> V {
    // Operand order keeps a NaN lane NaN (the max returns its second operand on NaN).
    let xc = V::splat(-87.0).max_(x);
    let (n, em1) = vmath::exp_reduced(xc);
    let y = (em1 + V::splat(1.0)) * n.pow2i();
    V::select(x.lt(V::splat(-87.0)), V::splat(0.0), y)
}

/// `p = e^(s - m)` in place (exactly 0 in the -inf padding lanes); returns the sum.
#[inline(always)]
pub(super) fn exp_shifted<V: SimdF32>(s: &mut [f32], m: f32) -> f32 {
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
pub(super) fn vmax<V: SimdF32>(s: &[f32]) -> f32 {
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
pub(super) struct HeadKv {
    kt: Vec<f32>,
    vt: Vec<f32>,
    kp: Vec<f32>,
    vp: Vec<f32>,
}

impl HeadKv {
    /// Zeroed buffers for heads of `dm`.
    fn zeros(dm: Dims) -> HeadKv {
        let (lp, dp, dvp) = (dm.pad(dm.lk), dm.pad(dm.d), dm.pad(dm.dv));
        HeadKv {
            kt: vec![0.0; dm.d * lp],
            vt: vec![0.0; dm.dv * lp],
            kp: vec![0.0; dm.lk * dp],
            vp: vec![0.0; dm.lk * dvp],
        }
    }

    /// Lays out one head's keys and values (the padding entries, never written, stay 0).
    fn load(&mut self, dm: Dims, k: &[f32], v: &[f32]) {
        let (lp, dp, dvp) = (dm.pad(dm.lk), dm.pad(dm.d), dm.pad(dm.dv));
        layout_into(k, dm.d, &mut self.kt, lp, true);
        layout_into(v, dm.dv, &mut self.vt, lp, true);
        layout_into(k, dm.d, &mut self.kp, dp, false);
        layout_into(v, dm.dv, &mut self.vp, dvp, false);
    }
}

/// Per-thread buffers reused from head to head (and call to call) while the sizes stay the
/// same: a head's key and value layouts and the row scratch of both tile heights.
struct Workspace {
    dims: Dims,
    kv: HeadKv,
    wide: Scratch<ROWS>,
    one: Scratch<1>,
}

thread_local! {
    static WORKSPACE: RefCell<Option<Workspace>> = const { RefCell::new(None) };
}

/// Runs `f` with one head's keys and values laid out, and row scratch for `dm`, from this
/// thread's workspace (rebuilt when the sizes change; a fresh one if it is in use higher up the
/// stack, as when rayon runs another head while this one waits).
pub(super) fn with_head<T>(
    dm: Dims,
    k: &[f32],
    v: &[f32],
    f: impl FnOnce(&HeadKv, &mut Scratch<ROWS>, &mut Scratch<1>) -> T,
) -> T {
    let run = |slot: &mut Option<Workspace>| {
        if slot.as_ref().is_none_or(|w| w.dims != dm) {
            *slot = Some(Workspace {
                dims: dm,
                kv: HeadKv::zeros(dm),
                wide: Scratch::new(dm),
                one: Scratch::new(dm),
            });
        }
        let w = slot.as_mut().expect("just filled");
        w.kv.load(dm, k, v);
        f(&w.kv, &mut w.wide, &mut w.one)
    };
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => run(&mut slot),
        Err(_) => run(&mut None),
    })
}

/// Scratch rows for `R` query rows: the scaled queries, scores or probabilities and a second
/// row of the same length (`lkp` long), and a row of up to `max(d, dv)` channels.
pub(super) struct Scratch<const R: usize> {
    qs: [Vec<f32>; R],
    p: [Vec<f32>; R],
    t: [Vec<f32>; R],
    small: [Vec<f32>; R],
}

impl<const R: usize> Scratch<R> {
    pub(super) fn new(dm: Dims) -> Scratch<R> {
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
pub(super) fn probabilities<V: SimdF32, const R: usize>(
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
pub(super) fn forward_group<V: SimdF32, const R: usize>(
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
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn forward_rows<V: SimdF32>(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    scale: f32,
    o: &mut [f32],
    lse: &mut [f32],
    (wide, one): (&mut Scratch<ROWS>, &mut Scratch<1>),
) {
    let mut r0 = 0;
    while r0 < rows.len() {
        if r0 + ROWS <= rows.len() {
            forward_group::<V, ROWS>(dm, rows.start + r0, r0, q, kv, scale, o, lse, wide);
            r0 += ROWS;
        } else {
            forward_group::<V, 1>(dm, rows.start + r0, r0, q, kv, scale, o, lse, one);
            r0 += 1;
        }
    }
}

/// One block of query rows' contributions to the key and value gradients, transposed
/// (`[d, lkp]` and `[dv, lkp]`).
pub(super) struct BlockGrads {
    pub(super) dkt: Vec<f32>,
    pub(super) dvt: Vec<f32>,
}

/// Backward over query rows `i0..i0 + R` of one head: writes their `dq` (rows `r0..` of the
/// block's `dq`) and adds their key and value gradients into `grads`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn backward_group<V: SimdF32, const R: usize>(
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
pub(super) fn backward_rows<V: SimdF32>(
    dm: Dims,
    rows: std::ops::Range<usize>,
    q: &[f32],
    kv: &HeadKv,
    o: &[f32],
    lse: &[f32],
    g: &[f32],
    scale: f32,
    dq: &mut [f32],
    (wide, one): (&mut Scratch<ROWS>, &mut Scratch<1>),
) -> BlockGrads {
    let lp = dm.pad(dm.lk);
    let mut grads = BlockGrads {
        dkt: vec![0.0; dm.d * lp],
        dvt: vec![0.0; dm.dv * lp],
    };
    let mut r0 = 0;
    while r0 < rows.len() {
        let i0 = rows.start + r0;
        if r0 + ROWS <= rows.len() {
            backward_group::<V, ROWS>(dm, i0, r0, q, kv, o, lse, g, scale, dq, &mut grads, wide);
            r0 += ROWS;
        } else {
            backward_group::<V, 1>(dm, i0, r0, q, kv, o, lse, g, scale, dq, &mut grads, one);
            r0 += 1;
        }
    }
    grads
}
