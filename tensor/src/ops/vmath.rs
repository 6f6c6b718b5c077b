//! Transcendental functions on 8 lanes, written once against [`SimdF32`] (so the portable and the
//! AVX2 paths run the same algorithm). Measured against f64 (tests in `unary.rs`) each stays
//! within about 3e-7 relative error, a few ulp.

use super::simd::SimdF32;

/// The range reduction and polynomial shared by the exponentials: for `x` (already clamped to
/// where 2^n is representable), `(n, e^r - 1)` with `x = n ln2 + r`, `|r| <= ln2/2` (ln2 split
/// in two parts so that `n ln2_hi` is exact) and `e^r - 1` by its Taylor series to degree 7.
#[inline(always)]
pub(crate) fn exp_reduced<V: SimdF32>(x: V) -> (V, V) {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let n = (x * V::splat(std::f32::consts::LOG2_E)).round_();
    let r = n.mul_add(V::splat(-LN2_HI), x);
    let r = n.mul_add(V::splat(-LN2_LO), r);
    let mut p = V::splat(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
        p = p.mul_add(r, V::splat(c));
    }
    (n, p.mul_add(r * r, r))
}

/// e^x. Range reduction x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts so that
/// n*ln2_hi is exact), e^r - 1 by its Taylor series to degree 7 (truncation below 1e-8), and
/// 2^n applied by [`SimdF32::ldexp_`], so that results reach down into the subnormal range and
/// up to f32::MAX. Above 88.72 the result is +inf (the scaling overflows); NaN stays NaN (the
/// clamps return their second operand on NaN).
#[inline(always)]
pub(crate) fn exp<V: SimdF32>(x: V) -> V {
    let xc = V::splat(89.0).min_(V::splat(-104.0).max_(x));
    let (n, em1) = exp_reduced(xc);
    (em1 + V::splat(1.0)).ldexp_(n)
}

/// `2^t` for `t <= 0`: the softmax exponentials, with the scores turned into base 2 by the
/// fused multiply-add that shifts them (`t = s log2(e) - m log2(e)`), so that the range
/// reduction is exact and needs no multiplication: `t = n + f` with `n` the nearest integer and
/// `|f| <= 1/2`, `2^f` by its Taylor series `sum (f ln 2)^k / k!` to degree 7 (truncation below
/// 6e-9, relative), and `2^n` applied by [`SimdF32::ldexp_`]. Two operations fewer per vector
/// than `e^x` ([`exp`]). Relative error within 2 ulp down to the smallest normal f32, a
/// subnormal's ulp below; `-inf` (and anything below -151) gives 0; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp2_nonpositive<V: SimdF32>(t: V) -> V {
    // Operand order keeps a NaN lane NaN (the max returns its second operand on NaN).
    let tc = V::splat(-151.0).max_(t);
    let n = tc.round_();
    let f = tc - n;
    let mut p = V::splat(EXP2_TAYLOR[7]);
    for &c in EXP2_TAYLOR[..7].iter().rev() {
        p = p.mul_add(f, V::splat(c));
    }
    p.ldexp_(n)
}

/// `(ln 2)^k / k!` for `k = 0..=7`, the Taylor coefficients of `2^f` (rounded to f32).
const EXP2_TAYLOR: [f32; 8] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
    0.000_015_252_734,
];

/// ln x. With x = m 2^e and m scaled into [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) where
/// s = (m - 1) / (m + 1), |s| <= 0.172, by its odd series to s^13 (truncation below 1e-10);
/// e ln2 is added in two parts. ln 0 (and of subnormals) is -inf, of negatives NaN, of +inf +inf.
#[inline(always)]
pub(crate) fn ln<V: SimdF32>(x: V) -> V {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let (e, m) = x.exponent_mantissa();
    let big = m.gt(V::splat(std::f32::consts::SQRT_2));
    let m = V::select(big, m * V::splat(0.5), m);
    let e = V::select(big, e + V::splat(1.0), e);
    let f = m - V::splat(1.0);
    let s = f / (m + V::splat(1.0));
    let s2 = s * s;
    let mut p = V::splat(1.0 / 13.0);
    for c in [1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0] {
        p = p.mul_add(s2, V::splat(c));
    }
    // 2 atanh(s) = 2s + 2s * s^2 * p
    let two_s = s + s;
    let lnm = (two_s * s2).mul_add(p, two_s);
    let y = e.mul_add(V::splat(LN2_HI), e.mul_add(V::splat(LN2_LO), lnm));
    let y = V::select(
        x.lt(V::splat(f32::MIN_POSITIVE)),
        V::splat(f32::NEG_INFINITY),
        y,
    );
    let y = V::select(x.gt(V::splat(f32::MAX)), x, y);
    V::select(x.lt(V::splat(0.0)) | x.is_nan_(), V::splat(f32::NAN), y)
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub(crate) fn sigmoid<V: SimdF32>(x: V) -> V {
    V::splat(1.0) / (V::splat(1.0) + exp(-x))
}

/// tanh x. For |x| < 0.4 its odd Taylor series to x^13 (truncation below 1e-8 relative);
/// above, sign(x) (1 - e) / (1 + e) with e = e^(-2|x|), where 1 - e no longer cancels.
#[inline(always)]
pub(crate) fn tanh<V: SimdF32>(x: V) -> V {
    let a = x.abs_();
    let e = exp(a * V::splat(-2.0));
    let big = ((V::splat(1.0) - e) / (V::splat(1.0) + e)).copysign_(x);
    let x2 = x * x;
    let mut p = V::splat(21844.0 / 6081075.0);
    for c in [
        -1382.0 / 155925.0,
        62.0 / 2835.0,
        -17.0 / 315.0,
        2.0 / 15.0,
        -1.0 / 3.0,
    ] {
        p = p.mul_add(x2, V::splat(c));
    }
    let small = (x * x2).mul_add(p, x);
    V::select(a.lt(V::splat(0.4)), small, big)
}
