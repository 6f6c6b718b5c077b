//! 8-lane transcendental functions built on `wide::f32x8`, where `wide`'s own are missing or
//! mishandle edge cases (`wide`'s `exp` returns 0 for arguments above 87.3, its `ln` returns
//! +inf at 0). Each keeps the relative error within a few ulp (about 3e-7) of the exact value;
//! the tests in `unary.rs` check this against f64.

use wide::{f32x8, i32x8, CmpGt, CmpLt};

/// 2^n for integer lanes `n` in [-126, 127], built from the exponent bits.
#[inline(always)]
fn pow2i(n: i32x8) -> f32x8 {
    let bits: i32x8 = (n + i32x8::splat(127)) << 23;
    bytemuck::cast(bits)
}

/// e^x. Range reduction x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts so that
/// n*ln2_hi is exact), e^r by its Taylor series to degree 7 (truncation below 1e-8), and
/// 2^n applied as two factors so that results down into the subnormal range and up to
/// f32::MAX come out right. Overflow gives +inf, NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32x8) -> f32x8 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x
        .fast_max(f32x8::splat(-104.0))
        .fast_min(f32x8::splat(89.0));
    let n = (xc * f32x8::splat(std::f32::consts::LOG2_E)).round();
    let r = xc - n * f32x8::splat(LN2_HI) - n * f32x8::splat(LN2_LO);
    // e^r - 1 = r + r^2 (1/2 + r/6 + ... + r^5/5040)
    let mut p = f32x8::splat(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
        p = p * r + f32x8::splat(c);
    }
    let em1 = p * (r * r) + r;
    let ni = n.round_int();
    let half = ni >> 1;
    let y = (em1 + f32x8::splat(1.0)) * pow2i(half) * pow2i(ni - half);
    let y = x
        .cmp_gt(f32x8::splat(88.722_84))
        .blend(f32x8::splat(f32::INFINITY), y);
    x.is_nan().blend(x, y)
}

/// ln x: `wide`'s polynomial for positive normal x, with ln 0 = -inf, ln of a negative = NaN,
/// ln inf = inf. Subnormal inputs are treated as 0.
#[inline(always)]
pub(crate) fn ln(x: f32x8) -> f32x8 {
    let y = x.ln();
    let tiny = x.cmp_lt(f32x8::splat(f32::MIN_POSITIVE));
    let y = tiny.blend(f32x8::splat(f32::NEG_INFINITY), y);
    let neg = x.cmp_lt(f32x8::ZERO) | x.is_nan();
    neg.blend(f32x8::splat(f32::NAN), y)
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub(crate) fn sigmoid(x: f32x8) -> f32x8 {
    f32x8::splat(1.0) / (f32x8::splat(1.0) + exp(-x))
}

/// tanh x. For |x| < 0.4 its odd Taylor series to x^13 (truncation below 1e-8 relative);
/// above, sign(x) (1 - e) / (1 + e) with e = e^(-2|x|), where 1 - e no longer cancels.
#[inline(always)]
pub(crate) fn tanh(x: f32x8) -> f32x8 {
    let a = x.abs();
    let e = exp(a * f32x8::splat(-2.0));
    let big = (f32x8::splat(1.0) - e) / (f32x8::splat(1.0) + e);
    let big = big.copysign(x);
    let x2 = x * x;
    let mut p = f32x8::splat(21844.0 / 6081075.0);
    for c in [
        -1382.0 / 155925.0,
        62.0 / 2835.0,
        -17.0 / 315.0,
        2.0 / 15.0,
        -1.0 / 3.0,
    ] {
        p = p * x2 + f32x8::splat(c);
    }
    let small = x + x * x2 * p;
    a.cmp_lt(f32x8::splat(0.4)).blend(small, big)
}
