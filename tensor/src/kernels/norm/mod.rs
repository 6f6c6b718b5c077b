//! Group normalisation over NCHW activations (`x` seen as `[n, c, hw]`).
//!
//! The `c` channels are split into `groups` groups of `cpg = c / groups` consecutive channels;
//! every (image, group) block of `m = cpg * hw` values is normalised by its own statistics:
//!
//! ```text
//! mean = (1/m) sum x,   var = (1/m) sum (x - mean)^2,   rstd = 1 / sqrt(var + eps)
//! xhat = (x - mean) * rstd,   y[n, ch, i] = gamma[ch] * xhat + beta[ch]
//! ```
//!
//! Statistics are accumulated in f64 over values shifted by one sample of their group, so a
//! large common offset does not cancel the variance away. Work is spread over (image, group)
//! blocks with rayon; the gamma/beta gradients are per-(image, channel) partials added over the
//! images in order, so every result is bitwise identical for any number of threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::ops::alloc::{as_uninit, assume_init};

mod rows;

use rows::rows_of;
pub use rows::{out_rows_of_parts, rows_of_parts, OutRow, Prior};

/// Runs `f` compiled for AVX-512 or AVX2 when the CPU has it (and the portable path is not
/// forced), so that the f64 accumulations vectorise eight or four lanes wide; otherwise as is.
/// All give the same bits (the accumulators are separate lanes in every form, and Rust never
/// fuses a multiply and an add on its own).
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::cpu::{isa, Isa};
        #[target_feature(enable = "avx512f,avx2")]
        unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match isa() {
            // SAFETY: the CPU supports AVX-512F (and AVX2).
            Isa::Avx512 => return unsafe { with_avx512(f) },
            // SAFETY: the CPU supports AVX2.
            Isa::Avx2Fma => return unsafe { with_avx2(f) },
            _ => {}
        }
    }
    f()
}

/// Declares `$name(args) -> (f64, f64)`, which runs `$body(args)` compiled for AVX-512 or
/// AVX2 when the CPU has it (a function per instruction set, not a closure handed to [`simd`]:
/// a closure's body does not inherit the target features, and left alone these sums compiled
/// to scalar code). The same bits on every path, as with [`simd`].
macro_rules! sums_on {
    ($name:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        fn $name($($a: $t),*) -> (f64, f64) {
            #[cfg(target_arch = "x86_64")]
            {
                use crate::kernels::cpu::{isa, Isa};
                #[target_feature(enable = "avx512f,avx2")]
                unsafe fn avx512($($a: $t),*) -> (f64, f64) {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) -> (f64, f64) {
                    $body($($a),*)
                }
                match isa() {
                    // SAFETY: the CPU supports AVX-512F (and AVX2).
                    Isa::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: the CPU supports AVX2.
                    Isa::Avx2Fma => return unsafe { avx2($($a),*) },
                    _ => {}
                }
            }
            $body($($a),*)
        }
    };
}

sums_on!(mean_var_on, mean_var, (rows: &[&[f32]]));
sums_on!(grad_sums_on, grad_sums, (dy: &[f32], x: &[f32], mu: f64));

fn check_sizes(op: &str, rows: usize, n: usize, c: usize, hw: usize, groups: usize) {
    assert!(
        groups > 0 && c / groups * groups == c,
        "{op}: {c} channels do not split into {groups} groups (x [{n}, {c}, {hw}])"
    );
    assert_eq!(
        rows,
        n * c,
        "{op}: x has {rows} rows of {hw} values, expected [{n}, {c}] = {} rows",
        n * c
    );
}

fn check_len(op: &str, what: &str, len: usize, want: usize) {
    assert_eq!(len, want, "{op}: {what} has {len} values, expected {want}");
}

/// Group-norm forward: `out = gamma[ch] * (x - mean[n, g]) * rstd[n, g] + beta[ch]` (gamma = 1
/// and beta = 0 when absent), where `mean` and `rstd = 1 / sqrt(var + eps)` are the (biased)
/// statistics of the `cpg * hw` values of image `n`, group `g`.
///
/// `x` and `out` are `[n, c, hw]`, `gamma` and `beta` `[c]`, `mean_out` and `rstd_out`
/// `[n * groups]` (saved for the backward pass). Panics, naming the op and the sizes, on a
/// mismatch or when `groups` does not divide `c`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_forward(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    out: &mut [f32],
    mean_out: &mut [f32],
    rstd_out: &mut [f32],
) {
    forward_impl(
        "group_norm_forward",
        &rows_of("group_norm_forward", x, (n, c, hw)),
        (n, c, hw, groups),
        eps,
        gamma,
        beta,
        as_uninit(out),
        mean_out,
        rstd_out,
        false,
    );
}

/// [`group_norm_forward`] followed by SiLU, `out = silu(z)` with `z` the group norm's output,
/// in the same pass over each block (while it is in cache). The statistics saved are those
/// of the normalisation.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_forward(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    out: &mut [f32],
    mean_out: &mut [f32],
    rstd_out: &mut [f32],
) {
    forward_impl(
        "group_norm_silu_forward",
        &rows_of("group_norm_silu_forward", x, (n, c, hw)),
        (n, c, hw, groups),
        eps,
        gamma,
        beta,
        as_uninit(out),
        mean_out,
        rstd_out,
        true,
    );
}

/// The group norm (with SiLU if `silu`) of the rows `x` (from [`rows_of`] or
/// [`rows_of_parts`]) into `out` (`[n, c, hw]`), every element of which is written (so it may
/// start uninitialised).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_impl(
    op: &str,
    x: &[&[f32]],
    (n, c, hw, groups): (usize, usize, usize, usize),
    eps: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
    mean_out: &mut [f32],
    rstd_out: &mut [f32],
    silu: bool,
) {
    let isa = crate::kernels::cpu::isa();
    check_sizes(op, x.len(), n, c, hw, groups);
    check_len(op, "out", out.len(), n * c * hw);
    check_len(op, "mean_out", mean_out.len(), n * groups);
    check_len(op, "rstd_out", rstd_out.len(), n * groups);
    if let Some(g) = gamma {
        check_len(op, "gamma", g.len(), c);
    }
    if let Some(b) = beta {
        check_len(op, "beta", b.len(), c);
    }
    let cpg = c / groups;
    let block = cpg * hw;
    if block == 0 {
        mean_out.fill(0.0);
        rstd_out.fill(1.0 / eps.sqrt());
        return;
    }
    out.par_chunks_exact_mut(block)
        .zip(x.par_chunks_exact(cpg))
        .zip(mean_out.par_iter_mut().zip(rstd_out.par_iter_mut()))
        .enumerate()
        .for_each(|(idx, ((yb, xb), (mean_o, rstd_o)))| {
            let (mean, var) = mean_var_on(xb);
            let rstd = 1.0 / (var + eps as f64).sqrt();
            *mean_o = mean as f32;
            *rstd_o = rstd as f32;
            let g0 = (idx % groups) * cpg;
            for (ch, (yr, xr)) in yb.chunks_exact_mut(hw).zip(xb).enumerate() {
                check_len(op, "a row of x", xr.len(), hw);
                let gm = gamma.map_or(1.0, |g| g[g0 + ch] as f64);
                let bt = beta.map_or(0.0, |b| b[g0 + ch] as f64);
                // y = (x - mean) * scale + beta with scale = gamma * rstd; subtracting the mean
                // first keeps the precision when it is large compared to the spread.
                let scale = (gm * rstd) as f32;
                let (mean, bt) = (mean as f32, bt as f32);
                simd(|| {
                    for (y, &v) in yr.iter_mut().zip(*xr) {
                        y.write((v - mean) * scale + bt);
                    }
                });
                // SAFETY: every element of the row was just written.
                let yr = unsafe { assume_init(yr) };
                if silu {
                    crate::ops::simd::silu_inplace(yr, isa);
                }
            }
        });
}

/// Mean and biased variance of the values of `rows`, in f64, in one pass over shifted values:
/// with `K` the first value, `s1 = sum (v - K)` and `s2 = sum (v - K)^2` over the `m` values,
/// `mean = K + s1 / m` and `var = (s2 - s1^2 / m) / m`. Shifting by a sample keeps the sums
/// small when the values share a large offset, so the subtraction loses at most a few of f64's
/// 16 digits.
#[inline(always)]
fn mean_var(rows: &[&[f32]]) -> (f64, f64) {
    let m = rows.iter().map(|r| r.len()).sum::<usize>() as f64;
    let shift = rows[0][0] as f64;
    let (s1, s2) = shifted_sums(rows, shift);
    let var = ((s2 - s1 * s1 / m) / m).max(0.0);
    (shift + s1 / m, var)
}

/// `(sum (v - shift), sum (v - shift)^2)` over the rows with eight interleaved accumulators
/// (a fixed order, so deterministic, and vectorisable): each row's values go to lanes 0, 1, ..
/// 7, 0, .. in turn, so rows whose length is a multiple of eight give the bits of one
/// contiguous block.
#[inline(always)]
fn shifted_sums(rows: &[&[f32]], shift: f64) -> (f64, f64) {
    let (mut a1, mut a2) = ([0.0f64; 8], [0.0f64; 8]);
    for v in rows {
        let mut chunks = v.chunks_exact(8);
        for ch in &mut chunks {
            for l in 0..8 {
                let d = ch[l] as f64 - shift;
                a1[l] += d;
                a2[l] += d * d;
            }
        }
        for (l, &x) in chunks.remainder().iter().enumerate() {
            let d = x as f64 - shift;
            a1[l] += d;
            a2[l] += d * d;
        }
    }
    (a1.iter().sum(), a2.iter().sum())
}

/// `(sum dy, sum dy * (x - mu))` with eight interleaved accumulators (fixed order, so
/// deterministic, and vectorisable).
#[inline(always)]
fn grad_sums(dy: &[f32], x: &[f32], mu: f64) -> (f64, f64) {
    use wide::f64x4;
    // Lane l of the pair (low four, high four) accumulates elements l, l + 8, ..: the same
    // eight interleaved sums in vectors (the compiler does not vectorise the plain form).
    let widen = |v: &[f32]| {
        let lo = f64x4::from([v[0] as f64, v[1] as f64, v[2] as f64, v[3] as f64]);
        let hi = f64x4::from([v[4] as f64, v[5] as f64, v[6] as f64, v[7] as f64]);
        (lo, hi)
    };
    let (mut s1, mut s2) = ([f64x4::ZERO; 2], [f64x4::ZERO; 2]);
    let muv = f64x4::splat(mu);
    let mut d8 = dy.chunks_exact(8);
    let mut x8 = x.chunks_exact(8);
    for (dc, xc) in (&mut d8).zip(&mut x8) {
        let (d, xv) = (widen(dc), widen(xc));
        for (h, (dh, xh)) in [(d.0, xv.0), (d.1, xv.1)].into_iter().enumerate() {
            s1[h] += dh;
            s2[h] += dh * (xh - muv);
        }
    }
    let (mut a1, mut a2) = ([0.0f64; 8], [0.0f64; 8]);
    for h in 0..2 {
        a1[4 * h..4 * h + 4].copy_from_slice(&s1[h].to_array());
        a2[4 * h..4 * h + 4].copy_from_slice(&s2[h].to_array());
    }
    for (l, (&d, &v)) in d8.remainder().iter().zip(x8.remainder()).enumerate() {
        a1[l] += d as f64;
        a2[l] += d as f64 * (v as f64 - mu);
    }
    (a1.iter().sum(), a2.iter().sum())
}

/// Group-norm backward. With `xhat = (x - mean) * rstd` and `g = grad_out * gamma[ch]` (gamma = 1
/// when absent), over each (image, group) block of `m` values:
///
/// ```text
/// grad_x     = rstd * (g - mean_m(g) - xhat * mean_m(g * xhat))
/// grad_gamma[ch] = sum_{n, i} grad_out * xhat        grad_beta[ch] = sum_{n, i} grad_out
/// ```
///
/// `x`, `grad_out` and `grad_x` are `[n, c, hw]`, `mean` and `rstd` `[n * groups]` (as saved by
/// [`group_norm_forward`]), `gamma`, `grad_gamma` and `grad_beta` `[c]`; the gradients are
/// overwritten. Panics, naming the op and the sizes, on a mismatch.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    x: &[f32],
    grad_out: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    mean: &[f32],
    rstd: &[f32],
    gamma: Option<&[f32]>,
    grad_x: &mut [f32],
    grad_gamma: Option<&mut [f32]>,
    grad_beta: Option<&mut [f32]>,
) {
    backward_impl(
        "group_norm_backward",
        &rows_of("group_norm_backward", x, (n, c, hw)),
        grad_out,
        (n, c, hw, groups),
        (mean, rstd),
        gamma,
        None,
        out_rows_of_parts(
            "group_norm_backward",
            vec![(as_uninit(grad_x), c, Prior::Nothing)],
            n,
            hw,
        ),
        grad_gamma,
        grad_beta,
    );
}

/// The backward pass of [`group_norm_silu_forward`]: `grad_out` is the gradient of the SiLU's
/// output; the normalised values `z` are recomputed from `x`, the saved statistics, `gamma`
/// and `beta`, turned into `dz = grad_out * silu'(z)` one block at a time, and passed through
/// the group norm's backward pass as in [`group_norm_backward`].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_backward(
    x: &[f32],
    grad_out: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    mean: &[f32],
    rstd: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    grad_x: &mut [f32],
    grad_gamma: Option<&mut [f32]>,
    grad_beta: Option<&mut [f32]>,
) {
    backward_impl(
        "group_norm_silu_backward",
        &rows_of("group_norm_silu_backward", x, (n, c, hw)),
        grad_out,
        (n, c, hw, groups),
        (mean, rstd),
        gamma,
        Some(beta),
        out_rows_of_parts(
            "group_norm_silu_backward",
            vec![(as_uninit(grad_x), c, Prior::Nothing)],
            n,
            hw,
        ),
        grad_gamma,
        grad_beta,
    );
}

/// The group norm's backward pass on the rows `x` (from [`rows_of`] or [`rows_of_parts`]);
/// with `silu_beta` `Some(beta)`, `grad_out` (`[n, c, hw]`) is first mapped through the SiLU's
/// derivative at the recomputed normalised values. Every element of each row of `grad_x`
/// (one per row of `x`) is written (so it may start uninitialised, unless the row's `prior` is
/// `Held`). With a prior each element becomes `grad_x + dx` (`Held`) or `g + dx` (`From(g)`):
/// one rounding, as adding the two tensors afterwards would give, without that pass over
/// memory.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_impl(
    op: &str,
    x: &[&[f32]],
    grad_out: &[f32],
    (n, c, hw, groups): (usize, usize, usize, usize),
    (mean, rstd): (&[f32], &[f32]),
    gamma: Option<&[f32]>,
    silu_beta: Option<Option<&[f32]>>,
    mut grad_x: Vec<OutRow>,
    grad_gamma: Option<&mut [f32]>,
    grad_beta: Option<&mut [f32]>,
) {
    let isa = crate::kernels::cpu::isa();
    check_sizes(op, x.len(), n, c, hw, groups);
    check_len(op, "grad_out", grad_out.len(), n * c * hw);
    check_len(op, "rows of grad_x", grad_x.len(), n * c);
    check_len(op, "mean", mean.len(), n * groups);
    check_len(op, "rstd", rstd.len(), n * groups);
    if let Some(g) = gamma {
        check_len(op, "gamma", g.len(), c);
    }
    let cpg = c / groups;
    let block = cpg * hw;
    // Per (image, channel) sums of grad_out * xhat and of grad_out, reduced over images below.
    let mut partial_gamma = vec![0.0f64; n * c];
    let mut partial_beta = vec![0.0f64; n * c];
    if block > 0 {
        grad_x
            .par_chunks_exact_mut(cpg)
            .zip(
                x.par_chunks_exact(cpg)
                    .zip(grad_out.par_chunks_exact(block)),
            )
            .zip(
                partial_gamma
                    .par_chunks_exact_mut(cpg)
                    .zip(partial_beta.par_chunks_exact_mut(cpg)),
            )
            .enumerate()
            // `dz` is per task, reused from block to block (every value is written before it
            // is read, so it is grown but never cleared).
            .for_each_init(Vec::new, |dz, (idx, ((dxb, (xb, dyb)), (pg, pb)))| {
                let mu = mean[idx] as f64;
                let rs = rstd[idx] as f64;
                let g0 = (idx % groups) * cpg;
                for (xr, dxr) in xb.iter().zip(dxb.iter()) {
                    check_len(op, "a row of x", xr.len(), hw);
                    check_len(op, "a row of grad_x", dxr.values.len(), hw);
                }
                // With SiLU after the norm: dz = dy * silu'(z) for this block, z rounded as
                // the forward pass rounds it.
                let dyb = match silu_beta {
                    None => dyb,
                    Some(beta) => {
                        if dz.len() < dyb.len() {
                            dz.resize(dyb.len(), 0.0);
                        }
                        let d = &mut dz[..dyb.len()];
                        for ch in 0..cpg {
                            let gm = gamma.map_or(1.0, |g| g[g0 + ch] as f64);
                            let bt = beta.map_or(0.0, |b| b[g0 + ch]);
                            let affine = (mu as f32, (gm * rs) as f32, bt);
                            let r = ch * hw..(ch + 1) * hw;
                            crate::ops::simd::silu_grad_affine(
                                &dyb[r.clone()],
                                xb[ch],
                                affine,
                                &mut d[r],
                                isa,
                            );
                        }
                        &*d
                    }
                };
                // Pass 1: per-channel sums, and the two group means of the formula.
                let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
                for ch in 0..cpg {
                    let dr = &dyb[ch * hw..][..hw];
                    let (sdy, sdyx) = grad_sums_on(dr, xb[ch], mu);
                    let sdyx = sdyx * rs;
                    pb[ch] = sdy;
                    pg[ch] = sdyx;
                    let gm = gamma.map_or(1.0, |g| g[g0 + ch] as f64);
                    sum_g += gm * sdy;
                    sum_gx += gm * sdyx;
                }
                let m = block as f64;
                let (mean_g, mean_gx) = (sum_g / m, sum_gx / m);
                // Pass 2: grad_x = rstd * (gamma * dy - mean_g - xhat * mean_gx), written as
                // dy * a + (x - mean) * b + c per channel.
                let b = (-rs * rs * mean_gx) as f32;
                let c0 = (-rs * mean_g) as f32;
                let mu = mu as f32;
                for (ch, out) in dxb.iter_mut().enumerate() {
                    let gm = gamma.map_or(1.0, |g| g[g0 + ch] as f64);
                    let a = (rs * gm) as f32;
                    let xr = xb[ch];
                    let dr = &dyb[ch * hw..][..hw];
                    match out.prior {
                        Prior::Held => simd(|| {
                            for ((o, &d), &v) in out.values.iter_mut().zip(dr).zip(xr) {
                                // SAFETY: a row marked `Held` was initialised by the caller.
                                let old = unsafe { o.assume_init_read() };
                                o.write(old + (d * a + (v - mu) * b + c0));
                            }
                        }),
                        Prior::From(from) => simd(|| {
                            let rows = out.values.iter_mut().zip(dr).zip(xr).zip(from);
                            for (((o, &d), &v), &old) in rows {
                                o.write(old + (d * a + (v - mu) * b + c0));
                            }
                        }),
                        Prior::Nothing => simd(|| {
                            for ((o, &d), &v) in out.values.iter_mut().zip(dr).zip(xr) {
                                o.write(d * a + (v - mu) * b + c0);
                            }
                        }),
                    }
                }
            });
    }
    let reduce = |partials: &[f64], dst: &mut [f32], what: &str| {
        check_len(op, what, dst.len(), c);
        for (ch, d) in dst.iter_mut().enumerate() {
            let mut sum = 0.0f64;
            for img in 0..n {
                sum += partials[img * c + ch];
            }
            *d = sum as f32;
        }
    };
    if let Some(dg) = grad_gamma {
        reduce(&partial_gamma, dg, "grad_gamma");
    }
    if let Some(db) = grad_beta {
        reduce(&partial_beta, db, "grad_beta");
    }
}

#[cfg(test)]
mod tests;
