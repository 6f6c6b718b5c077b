//! `softmax` and `log_softmax` over the last axis.
//!
//! For each row `x` (the last axis), with `m = max(x)` and `s = sum_j e^(x_j - m)`:
//! `softmax(x)_i = e^(x_i - m) / s` and `log_softmax(x)_i = (x_i - m) - ln s`. Subtracting the
//! row maximum keeps every exponent at most 0, so nothing overflows. `s` is accumulated in f32
//! lanes over runs of 1024 elements and the runs added in f64. A NaN in a row makes the whole
//! row NaN. Rows shorter than 64K elements run on the CPU's widest vectors (AVX-512, AVX2, else
//! `wide::f32x8`); rows shorter than 64K elements are processed whole by one task (rows are grouped
//! into tasks of about 64K elements); longer rows are cut into 64K-element blocks whose partial
//! maxima and sums are combined in block order, so results never depend on the thread count.
//!
//! ```
//! use tensor::Tensor;
//! let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0], &[2, 3]);
//! let p = x.softmax();
//! assert!((p.data()[0..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! assert!((p.data()[4] - 1.0 / 3.0).abs() < 1e-6);
//! assert!((x.log_softmax().data()[5] + 3f32.ln()).abs() < 1e-6);
//! ```

use rayon::prelude::*;
use wide::f32x8;

use super::alloc;
use super::par::{self, CHUNK};
use super::simd::{self, SimdF32};
use super::vmath;
use crate::kernels::cpu::{self, Isa};
use crate::Tensor;

/// The lanes of `x[i..]` (up to `V::LANES` values), padded with `fill`.
#[inline(always)]
fn load_at<V: SimdF32>(x: &[f32], i: usize, fill: f32) -> V {
    if i + V::LANES <= x.len() {
        V::load(&x[i..])
    } else {
        let mut buf = [fill; 16];
        buf[..x.len() - i].copy_from_slice(&x[i..]);
        V::load(&buf)
    }
}

/// Stores `v` to `out[i..]` (up to `V::LANES` values).
#[inline(always)]
fn store_at<V: SimdF32>(v: V, out: &mut [f32], i: usize) {
    if i + V::LANES <= out.len() {
        v.store(&mut out[i..]);
    } else {
        let mut buf = [0.0f32; 16];
        v.store(&mut buf);
        let n = out.len() - i;
        out[i..].copy_from_slice(&buf[..n]);
    }
}

/// The lanes of `v` (the first `V::LANES` of the result; the rest are 0).
fn horizontal<V: SimdF32>(v: V) -> [f32; 16] {
    let mut buf = [0.0f32; 16];
    v.store(&mut buf);
    buf
}

/// The maximum of a run (NaN-unaware; a NaN shows up later through `x - m`).
#[inline(always)]
fn run_max<V: SimdF32>(x: &[f32]) -> f32 {
    // Four independent accumulators, so the loads are not serialised behind one max chain.
    let l = V::LANES;
    let quad = x.len() / (4 * l) * (4 * l);
    let mut accs = [V::splat(f32::NEG_INFINITY); 4];
    for i in (0..quad).step_by(4 * l) {
        for (k, acc) in accs.iter_mut().enumerate() {
            *acc = acc.max_(V::load(&x[i + l * k..]));
        }
    }
    let mut acc = accs[0].max_(accs[1]).max_(accs[2].max_(accs[3]));
    let full = x.len() / l * l;
    for i in (quad..full).step_by(l) {
        acc = acc.max_(V::load(&x[i..]));
    }
    if full < x.len() {
        acc = acc.max_(load_at(x, full, f32::NEG_INFINITY));
    }
    horizontal(acc)[..l]
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `sum_j e^(x_j - m)`, also writing `e^(x_j - m)` into `out` when `WRITE`, and prefetching
/// `ahead` (the next row) at the same pace. Padding lanes hold -inf, whose exponential is
/// exactly 0 (unless m is -inf or NaN, when the row is NaN anyway).
#[inline(always)]
fn run_exp_sum<V: SimdF32, const WRITE: bool>(
    x: &[f32],
    m: f32,
    out: &mut [f32],
    ahead: &[f32],
) -> f64 {
    let mv = V::splat(m);
    let mut total = 0.0f64;
    for r in (0..x.len()).step_by(1024) {
        let end = (r + 1024).min(x.len());
        let full = r + (end - r) / V::LANES * V::LANES;
        let mut acc = V::splat(0.0);
        for i in (r..full).step_by(V::LANES) {
            prefetch(ahead, i);
            let e = vmath::exp(V::load(&x[i..]) - mv);
            acc = acc + e;
            if WRITE {
                e.store(&mut out[i..]);
            }
        }
        if full < end {
            let e = vmath::exp(load_at::<V>(x, full, f32::NEG_INFINITY) - mv);
            acc = acc + e;
            if WRITE {
                store_at(e, out, full);
            }
        }
        total += horizontal(acc)[..V::LANES]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>();
    }
    total
}

/// Finishes a row (or a block of one): `out = out * inv` (softmax, `out` holding the
/// exponentials) or `out = (x - m) - lns` (log-softmax; subtracting `m` first keeps the
/// result exact to f32 rounding when `m` is large).
#[inline(always)]
fn finish<V: SimdF32>(x: &[f32], out: &mut [f32], log: bool, inv: f32, m: f32, lns: f32) {
    let step = |v: V| {
        if log {
            (v - V::splat(m)) - V::splat(lns)
        } else {
            v * V::splat(inv)
        }
    };
    let src: &[f32] = if log { x } else { out };
    let full = out.len() / V::LANES * V::LANES;
    let tail = (full < out.len()).then(|| step(load_at::<V>(src, full, 0.0)));
    for i in (0..full).step_by(V::LANES) {
        let v = step(V::load(if log { &x[i..] } else { &out[i..] }));
        v.store(&mut out[i..]);
    }
    if let Some(v) = tail {
        store_at(v, out, full);
    }
}

/// Asks the CPU to start loading the cache line holding `x[i]` (a hint; nothing if `i` is out
/// of range or off x86-64).
#[inline(always)]
fn prefetch(x: &[f32], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = x.get(i) {
        // SAFETY: prefetching is a hint that never faults; the address lies inside `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                v as *const f32 as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, i);
}

/// Softmax of whole rows of length `l` with the implementation `V`. A row's first pass (the
/// maximum) would wait on memory with nothing else to do, so the next row is prefetched while
/// this one's exponentials are computed.
#[inline(always)]
fn softmax_rows<V: SimdF32>(x: &[f32], out: &mut [f32], l: usize, log: bool) {
    for (r, (row, o)) in x.chunks(l).zip(out.chunks_mut(l)).enumerate() {
        let next = x.get((r + 1) * l..).unwrap_or(&[]);
        let next = &next[..next.len().min(l)];
        let m = run_max::<V>(row);
        let s = if log {
            run_exp_sum::<V, false>(row, m, o, next)
        } else {
            run_exp_sum::<V, true>(row, m, o, next)
        };
        finish::<V>(row, o, log, (1.0 / s) as f32, m, s.ln() as f32);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(x: &[f32], out: &mut [f32], l: usize, log: bool) {
    softmax_rows::<simd::Avx2>(x, out, l, log);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_rows_avx512(x: &[f32], out: &mut [f32], l: usize, log: bool) {
    softmax_rows::<simd::Avx512>(x, out, l, log);
}

/// Softmax of whole rows on the implementation for `isa` (the CPU's, or a lesser one).
fn softmax_rows_on(x: &[f32], out: &mut [f32], l: usize, log: bool, isa: Isa) {
    match isa {
        // SAFETY: `isa` is the CPU's (from `cpu::isa`), so it has AVX-512F, AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { softmax_rows_avx512(x, out, l, log) },
        // SAFETY: as above, AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { softmax_rows_avx2(x, out, l, log) },
        _ => softmax_rows::<f32x8>(x, out, l, log),
    }
}

/// One row longer than a chunk: the same three passes, each split into CHUNK blocks.
fn softmax_long_row(x: &[f32], out: &mut [f32], log: bool) {
    let blocks = x.len().div_ceil(CHUNK);
    let block = |b: usize| &x[b * CHUNK..((b + 1) * CHUNK).min(x.len())];
    let m = par::map_indices(blocks, x.len(), |b| run_max::<f32x8>(block(b)))
        .into_iter()
        .fold(f32::NEG_INFINITY, f32::max);
    let partials: Vec<f64> = if log {
        par::map_indices(blocks, x.len(), |b| {
            run_exp_sum::<f32x8, false>(block(b), m, &mut [], &[])
        })
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(b, o)| run_exp_sum::<f32x8, true>(block(b), m, o, &[]))
            .collect()
    };
    let s: f64 = partials.iter().sum();
    let (inv, lns) = ((1.0 / s) as f32, s.ln() as f32);
    par::for_chunks_mut(out, |start, o| {
        finish::<f32x8>(&x[start..start + o.len()], o, log, inv, m, lns);
    });
}

fn softmax_impl(x: &Tensor, log: bool) -> Tensor {
    let op = if log { "log_softmax" } else { "softmax" };
    let _prof = crate::profile::scope(op, || crate::profile::shape(x.shape()));
    let l = *x.shape().last().unwrap_or(&1);
    let src = x.data();
    if l == 0 || src.is_empty() {
        return Tensor::zeros(x.shape());
    }
    let out = if l >= CHUNK {
        let mut out = alloc::zeroed(src.len());
        for (row, o) in src.chunks(l).zip(out.chunks_mut(l)) {
            softmax_long_row(row, o, log);
        }
        out
    } else {
        // Whole rows per task, about CHUNK elements each.
        let per_task = (CHUNK / l).max(1) * l;
        let isa = cpu::isa();
        alloc::output_in(src.len(), per_task, |start, o| {
            softmax_rows_on(&src[start..start + o.len()], o, l, log, isa);
        })
    };
    Tensor::from_vec(out, x.shape())
}

impl Tensor {
    /// Softmax over the last axis (a 0-d tensor counts as one row of one element).
    pub fn softmax(&self) -> Tensor {
        softmax_impl(self, false)
    }

    /// Log-softmax over the last axis: `x - max(x) - ln(sum(e^(x - max(x))))` per row.
    pub fn log_softmax(&self) -> Tensor {
        softmax_impl(self, true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, Lcg};
    use crate::Tensor;

    fn reference(x: &Tensor, log: bool) -> Vec<f64> {
        let l = *x.shape().last().unwrap_or(&1);
        let mut out = Vec::new();
        for row in x.data().chunks(l) {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            out.extend(row.iter().map(|&v| {
                if log {
                    v as f64 - m - s.ln()
                } else {
                    (v as f64 - m).exp() / s
                }
            }));
        }
        out
    }

    #[test]
    fn softmax_matches_f64_reference() {
        let mut rng = Lcg::new(40);
        for shape in [
            &[1][..],
            &[7],
            &[3, 17],
            &[5, 129],
            &[4, 1000],
            &[2, 3, 70000],
            &[300, 1027],
            &[],
        ] {
            let n = crate::shape::numel(shape);
            let x = Tensor::from_vec(rng.uniform_vec(n, -30.0, 30.0), shape);
            // x - m is rounded in f32 (relative error 6e-8 * |x - m|, |x - m| <= 60 here),
            // which the exponential turns into a relative error of up to 3.6e-6.
            assert_close(
                "softmax",
                x.softmax().data(),
                &reference(&x, false),
                4e-6,
                1e-30,
            );
            assert_close(
                "log_softmax",
                x.log_softmax().data(),
                &reference(&x, true),
                1e-6,
                2e-6,
            );
        }
    }

    #[test]
    fn portable_softmax_matches_f64_reference() {
        let _guard = super::super::testutil::isa_lock();
        let mut rng = Lcg::new(42);
        let x = Tensor::from_vec(rng.uniform_vec(7 * 131, -30.0, 30.0), &[7, 131]);
        let (p, lp) = crate::kernels::cpu::with_portable(|| (x.softmax(), x.log_softmax()));
        assert_close("softmax", p.data(), &reference(&x, false), 4e-6, 1e-30);
        assert_close("log_softmax", lp.data(), &reference(&x, true), 1e-6, 2e-6);
    }

    #[test]
    fn softmax_rows_match_f64_reference_on_every_instruction_set() {
        use crate::kernels::cpu::{detected_isa, Isa};
        let mut rng = Lcg::new(43);
        let (rows, l) = (5, 37);
        let x = Tensor::from_vec(rng.uniform_vec(rows * l, -30.0, 30.0), &[rows, l]);
        for isa in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
            if isa > detected_isa() {
                continue;
            }
            for log in [false, true] {
                let mut out = vec![0.0f32; rows * l];
                super::softmax_rows_on(x.data(), &mut out, l, log, isa);
                let (what, rel, abs) = if log {
                    ("log_softmax", 1e-6, 2e-6)
                } else {
                    ("softmax", 4e-6, 1e-30)
                };
                assert_close(what, &out, &reference(&x, log), rel, abs);
            }
        }
    }

    #[test]
    fn softmax_is_stable_for_large_inputs() {
        let x = Tensor::from_vec(vec![1e4, 1e4 + 1.0, -1e4, f32::NEG_INFINITY], &[4]);
        let p = x.softmax();
        assert!(p.data().iter().all(|v| v.is_finite()));
        assert!((p.data()[1] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert_eq!(p.data()[3], 0.0);
        let lp = x.log_softmax();
        assert_eq!(lp.data()[3], f32::NEG_INFINITY);
        let mut y = Tensor::zeros(&[2, 5]);
        y.data_mut()[7] = f32::NAN;
        let q = y.softmax();
        assert!(q.data()[..5].iter().all(|v| (v - 0.2).abs() < 1e-7));
        assert!(q.data()[5..].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn softmax_is_bitwise_identical_on_1_and_2_threads() {
        let _guard = super::super::testutil::isa_lock();
        let mut rng = Lcg::new(41);
        let x = Tensor::from_vec(rng.uniform_vec(300_007, -5.0, 5.0), &[300_007]);
        let y = rng.tensor(&[500, 999]);
        let run = |k: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap();
            pool.install(|| (x.softmax(), x.log_softmax(), y.softmax()))
        };
        let (a, b) = (run(1), run(2));
        assert_eq!(a.0.data(), b.0.data());
        assert_eq!(a.1.data(), b.1.data());
        assert_eq!(a.2.data(), b.2.data());
    }
}
