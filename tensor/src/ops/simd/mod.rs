//! An f32 vector interface, [`SimdF32`], with three implementations: `wide::f32x8` (portable;
//! SSE2 on the x86-64 baseline, NEON on aarch64), [`Avx2`] (one 256-bit register, with FMA)
//! and [`Avx512`] (one 512-bit register, 16 lanes), chosen at run time by
//! [`crate::kernels::cpu::isa`]; and [`Pair`], two vectors of any of them side by side (the
//! attention kernels' lanes on AVX-512). The transcendental functions in
//! `vmath.rs` are written once against [`SimdF32`]; an op is a [`Lanes`] value, and [`unary`] runs
//! it over a slice with the best implementation the CPU has.

use std::mem::MaybeUninit;
use std::ops::{Add, BitOr, Div, Mul, Neg, Sub};

use wide::{f32x8, i32x8, CmpGt, CmpLt};

use crate::kernels::cpu::Isa;

/// `LANES` f32 lanes (8 or 16). Comparisons return masks (all bits set where true) as
/// vectors. Most ops use only the 8-lane implementations; code that also runs on [`Avx512`]
/// steps by `LANES`.
pub(crate) trait SimdF32:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + BitOr<Output = Self>
{
    /// Lanes per vector.
    const LANES: usize;
    fn splat(v: f32) -> Self;
    /// The first `LANES` values of `s`.
    fn load(s: &[f32]) -> Self;
    /// Writes the lanes to the first `LANES` values of `d`.
    fn store(self, d: &mut [f32]);
    /// Writes the lanes to the first `LANES` slots of `d`, which may be uninitialised.
    fn store_u(self, d: &mut [MaybeUninit<f32>]);
    /// `self * m + a` (fused where the instruction set has FMA).
    fn mul_add(self, m: Self, a: Self) -> Self;
    /// max/min with the x86 rule: the second operand when either is NaN.
    fn max_(self, o: Self) -> Self;
    fn min_(self, o: Self) -> Self;
    /// Round to nearest integer (ties to even).
    fn round_(self) -> Self;
    /// 2^n for lanes holding integers n in [-126, 127].
    fn pow2i(self) -> Self;
    /// For positive normal lanes `x = m 2^e` with m in [1, 2): `(e, m)`.
    fn exponent_mantissa(self) -> (Self, Self);
    fn lt(self, o: Self) -> Self;
    fn gt(self, o: Self) -> Self;
    fn is_nan_(self) -> Self;
    /// Lanes of `t` where `mask` is set, else of `f`.
    fn select(mask: Self, t: Self, f: Self) -> Self;
    fn abs_(self) -> Self;
    /// `self` with the sign of `s`.
    fn copysign_(self, s: Self) -> Self;
    /// `self * 2^n` for lanes of `n` holding integers in [-252, 254], rounded once where the
    /// result is a normal number; overflow gives infinity and underflow goes through the
    /// subnormals to 0. By default two exact power-of-two factors, `2^h` then `2^(n - h)` with
    /// `h = floor(n / 2)`, each within the range of [`SimdF32::pow2i`].
    #[inline(always)]
    fn ldexp_(self, n: Self) -> Self {
        let h = (n * Self::splat(0.5) - Self::splat(0.25)).round_();
        self * h.pow2i() * (n - h).pow2i()
    }
    /// The sum of the lanes, added pairwise in a fixed tree.
    #[inline(always)]
    fn lane_sum(self) -> f32 {
        let mut buf = [0.0f32; 16];
        self.store(&mut buf);
        let mut n = Self::LANES;
        while n > 1 {
            n /= 2;
            for i in 0..n {
                buf[i] += buf[i + n];
            }
        }
        buf[0]
    }
    /// The sum of each vector's lanes, for eight vectors at once. Each sum is added in a
    /// fixed order (a tree that may differ between implementations).
    #[inline(always)]
    fn lane_sums8(v: [Self; 8]) -> [f32; 8] {
        let mut out = [0.0; 8];
        for (o, x) in out.iter_mut().zip(v) {
            *o = x.lane_sum();
        }
        out
    }
}

impl SimdF32 for f32x8 {
    const LANES: usize = 8;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        f32x8::splat(v)
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        super::par::load(s)
    }
    #[inline(always)]
    fn store(self, d: &mut [f32]) {
        super::par::store(self, d)
    }
    #[inline(always)]
    fn store_u(self, d: &mut [MaybeUninit<f32>]) {
        super::par::store_u(self, d)
    }
    #[inline(always)]
    fn mul_add(self, m: Self, a: Self) -> Self {
        self * m + a
    }
    #[inline(always)]
    fn max_(self, o: Self) -> Self {
        self.fast_max(o)
    }
    #[inline(always)]
    fn min_(self, o: Self) -> Self {
        self.fast_min(o)
    }
    #[inline(always)]
    fn round_(self) -> Self {
        self.round()
    }
    #[inline(always)]
    fn pow2i(self) -> Self {
        let bits: i32x8 = (self.round_int() + i32x8::splat(127)) << 23;
        bytemuck::cast(bits)
    }
    #[inline(always)]
    fn exponent_mantissa(self) -> (Self, Self) {
        let bits: i32x8 = bytemuck::cast(self);
        let shifted: i32x8 = bits >> 23;
        let e: i32x8 = (shifted & i32x8::splat(0xff)) - i32x8::splat(127);
        let m: i32x8 = (bits & i32x8::splat(0x007f_ffff)) | i32x8::splat(0x3f80_0000);
        (e.round_float(), bytemuck::cast(m))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Self {
        self.cmp_lt(o)
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Self {
        self.cmp_gt(o)
    }
    #[inline(always)]
    fn is_nan_(self) -> Self {
        self.is_nan()
    }
    #[inline(always)]
    fn select(mask: Self, t: Self, f: Self) -> Self {
        mask.blend(t, f)
    }
    #[inline(always)]
    fn abs_(self) -> Self {
        self.abs()
    }
    #[inline(always)]
    fn copysign_(self, s: Self) -> Self {
        self.copysign(s)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512;

pub(crate) use pair::Pair;

mod pair;

/// An element-wise function written once for any [`SimdF32`].
pub(crate) trait Lanes: Sync + Send {
    /// The op's name (for the profiler).
    const NAME: &'static str;
    fn apply<V: SimdF32>(&self, x: V) -> V;
}

/// `dst[i] = op(src[i])` (initialising all of `dst`) with the implementation `V`; a tail
/// shorter than a vector goes through a padded buffer, so every element sees the same
/// arithmetic.
#[inline(always)]
fn unary_with<V: SimdF32, L: Lanes>(src: &[f32], dst: &mut [MaybeUninit<f32>], op: &L) {
    let n = dst.len();
    let l = V::LANES;
    let main = n - n % l;
    for (s, d) in src[..main]
        .chunks_exact(l)
        .zip(dst[..main].chunks_exact_mut(l))
    {
        op.apply(V::load(s)).store_u(d);
    }
    if main < n {
        let mut buf = [1.0f32; 16];
        buf[..n - main].copy_from_slice(&src[main..n]);
        let mut out = [0.0f32; 16];
        op.apply(V::load(&buf)).store(&mut out);
        for (d, &v) in dst[main..].iter_mut().zip(&out) {
            d.write(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn unary_avx512<L: Lanes>(src: &[f32], dst: &mut [MaybeUninit<f32>], op: &L) {
    unary_with::<Avx512, L>(src, dst, op);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unary_avx2<L: Lanes>(src: &[f32], dst: &mut [MaybeUninit<f32>], op: &L) {
    unary_with::<Avx2, L>(src, dst, op);
}

/// `dst[i] = op(src[i])` with the implementation for `isa` (the CPU's, from
/// [`crate::kernels::cpu::isa`], read once per op by the caller).
#[inline]
pub(crate) fn unary<L: Lanes>(src: &[f32], dst: &mut [MaybeUninit<f32>], op: &L, isa: Isa) {
    match isa {
        // SAFETY: `isa` is the CPU's, so it has AVX-512F (and AVX2, FMA).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { unary_avx512(src, dst, op) },
        // SAFETY: as above, with AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { unary_avx2(src, dst, op) },
        _ => unary_with::<f32x8, L>(src, dst, op),
    }
}

/// `silu(v) = v / (1 + e^-v)` (functions, not closures: a closure would not inherit the
/// caller's target features).
#[inline(always)]
fn silu_v<V: SimdF32>(v: V) -> V {
    v / (V::splat(1.0) + super::vmath::exp(-v))
}

/// `d * silu'(z)` with `z = (v - mean) * scale + shift`, `a = (mean, scale, shift)`.
#[inline(always)]
fn silu_grad_v<V: SimdF32>(d: V, v: V, a: (V, V, V)) -> V {
    let one = V::splat(1.0);
    let z = (v - a.0) * a.1 + a.2;
    let s = one / (one + super::vmath::exp(-z));
    d * (s * (one + z * (one - s)))
}

/// `x = silu(x) = x / (1 + e^-x)` in place, a vector at a time (the tail through a padded
/// buffer, so every element sees the same arithmetic).
#[inline(always)]
fn silu_inplace_with<V: SimdF32>(x: &mut [f32]) {
    let l = V::LANES;
    let main = x.len() - x.len() % l;
    let (body, tail) = x.split_at_mut(main);
    for c in body.chunks_exact_mut(l) {
        silu_v(V::load(c)).store(c);
    }
    if !tail.is_empty() {
        let mut buf = [0.0f32; 16];
        buf[..tail.len()].copy_from_slice(tail);
        silu_v(V::load(&buf)).store(&mut buf);
        let n = tail.len();
        tail.copy_from_slice(&buf[..n]);
    }
}

/// `out = dy * silu'(z)` with `z = (x - mean) * scale + shift` recomputed from `x` (the
/// affine map of a group norm, rounded as the forward pass rounds it) and
/// `silu'(z) = s (1 + z (1 - s))`, `s = 1 / (1 + e^-z)`.
#[inline(always)]
fn silu_grad_affine_with<V: SimdF32>(
    dy: &[f32],
    x: &[f32],
    (mean, scale, shift): (f32, f32, f32),
    out: &mut [f32],
) {
    let l = V::LANES;
    let a = (V::splat(mean), V::splat(scale), V::splat(shift));
    let n = out.len();
    let main = n - n % l;
    for ((o, d), v) in out[..main]
        .chunks_exact_mut(l)
        .zip(dy[..main].chunks_exact(l))
        .zip(x[..main].chunks_exact(l))
    {
        silu_grad_v(V::load(d), V::load(v), a).store(o);
    }
    if main < n {
        let (mut db, mut xb) = ([0.0f32; 16], [0.0f32; 16]);
        db[..n - main].copy_from_slice(&dy[main..n]);
        xb[..n - main].copy_from_slice(&x[main..n]);
        silu_grad_v(V::load(&db), V::load(&xb), a).store(&mut db);
        out[main..].copy_from_slice(&db[..n - main]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_inplace_avx512(x: &mut [f32]) {
    silu_inplace_with::<Avx512>(x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_inplace_avx2(x: &mut [f32]) {
    silu_inplace_with::<Avx2>(x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_grad_affine_avx512(dy: &[f32], x: &[f32], a: (f32, f32, f32), out: &mut [f32]) {
    silu_grad_affine_with::<Avx512>(dy, x, a, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_grad_affine_avx2(dy: &[f32], x: &[f32], a: (f32, f32, f32), out: &mut [f32]) {
    silu_grad_affine_with::<Avx2>(dy, x, a, out);
}

/// `x = silu(x)` in place on the implementation for `isa` (the CPU's).
pub(crate) fn silu_inplace(x: &mut [f32], isa: Isa) {
    match isa {
        // SAFETY: `isa` is the CPU's.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { silu_inplace_avx512(x) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { silu_inplace_avx2(x) },
        _ => silu_inplace_with::<f32x8>(x),
    }
}

/// `out = dy * silu'((x - mean) * scale + shift)` on the implementation for `isa` (the
/// CPU's); `affine` is `(mean, scale, shift)`. All slices have the same length.
pub(crate) fn silu_grad_affine(
    dy: &[f32],
    x: &[f32],
    affine: (f32, f32, f32),
    out: &mut [f32],
    isa: Isa,
) {
    assert!(dy.len() == out.len() && x.len() == out.len());
    match isa {
        // SAFETY: `isa` is the CPU's.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { silu_grad_affine_avx512(dy, x, affine, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { silu_grad_affine_avx2(dy, x, affine, out) },
        _ => silu_grad_affine_with::<f32x8>(dy, x, affine, out),
    }
}
