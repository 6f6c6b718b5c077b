//! An f32 vector interface, [`SimdF32`], with three implementations: `wide::f32x8` (portable;
//! SSE2 on the x86-64 baseline, NEON on aarch64), [`Avx2`] (one 256-bit register, with FMA)
//! and [`Avx512`] (one 512-bit register, 16 lanes), chosen at run time by
//! [`crate::kernels::cpu::isa`]. The transcendental functions in
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
mod avx2 {
    //! [`SimdF32`] on one AVX2 register. Every method is `#[inline(always)]` and must only run
    //! inside a function compiled with `#[target_feature(enable = "avx2,fma")]` on a CPU that
    //! has both (which [`super::unary`] checks through `cpu::isa`).
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::{Add, BitOr, Div, Mul, Neg, Sub};

    use super::SimdF32;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    macro_rules! binop {
        ($tr:ident, $m:ident, $intr:ident) => {
            impl $tr for Avx2 {
                type Output = Avx2;
                #[inline(always)]
                fn $m(self, o: Avx2) -> Avx2 {
                    // SAFETY: only reached on AVX2 CPUs (see the module docs).
                    Avx2(unsafe { $intr(self.0, o.0) })
                }
            }
        };
    }
    binop!(Add, add, _mm256_add_ps);
    binop!(Sub, sub, _mm256_sub_ps);
    binop!(Mul, mul, _mm256_mul_ps);
    binop!(Div, div, _mm256_div_ps);
    binop!(BitOr, bitor, _mm256_or_ps);

    impl Neg for Avx2 {
        type Output = Avx2;
        #[inline(always)]
        fn neg(self) -> Avx2 {
            // SAFETY: as above.
            Avx2(unsafe { _mm256_xor_ps(self.0, _mm256_set1_ps(-0.0)) })
        }
    }

    // SAFETY (every method below): only reached on AVX2+FMA CPUs (see the module docs); the
    // loads and stores check their slice lengths first.
    impl SimdF32 for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Avx2(unsafe { _mm256_set1_ps(v) })
        }
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 8);
            Avx2(unsafe { _mm256_loadu_ps(s.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, d: &mut [f32]) {
            assert!(d.len() >= 8);
            unsafe { _mm256_storeu_ps(d.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn store_u(self, d: &mut [MaybeUninit<f32>]) {
            assert!(d.len() >= 8);
            unsafe { _mm256_storeu_ps(d.as_mut_ptr() as *mut f32, self.0) }
        }
        #[inline(always)]
        fn mul_add(self, m: Self, a: Self) -> Self {
            Avx2(unsafe { _mm256_fmadd_ps(self.0, m.0, a.0) })
        }
        #[inline(always)]
        fn max_(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min_(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_min_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn round_(self) -> Self {
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            Avx2(unsafe { _mm256_round_ps::<NEAREST>(self.0) })
        }
        #[inline(always)]
        fn pow2i(self) -> Self {
            unsafe {
                let n = _mm256_add_epi32(_mm256_cvtps_epi32(self.0), _mm256_set1_epi32(127));
                Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(n)))
            }
        }
        #[inline(always)]
        fn exponent_mantissa(self) -> (Self, Self) {
            unsafe {
                let bits = _mm256_castps_si256(self.0);
                let e = _mm256_srli_epi32::<23>(bits);
                let e = _mm256_sub_epi32(e, _mm256_set1_epi32(127));
                let m = _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff));
                let m = _mm256_or_si256(m, _mm256_set1_epi32(0x3f80_0000));
                (Avx2(_mm256_cvtepi32_ps(e)), Avx2(_mm256_castsi256_ps(m)))
            }
        }
        #[inline(always)]
        fn lt(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn gt(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) })
        }
        #[inline(always)]
        fn is_nan_(self) -> Self {
            Avx2(unsafe { _mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0) })
        }
        #[inline(always)]
        fn select(mask: Self, t: Self, f: Self) -> Self {
            Avx2(unsafe { _mm256_blendv_ps(f.0, t.0, mask.0) })
        }
        #[inline(always)]
        fn abs_(self) -> Self {
            Avx2(unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0) })
        }
        #[inline(always)]
        fn copysign_(self, s: Self) -> Self {
            unsafe {
                let sign = _mm256_set1_ps(-0.0);
                let mag = _mm256_andnot_ps(sign, self.0);
                Avx2(_mm256_or_ps(mag, _mm256_and_ps(sign, s.0)))
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! [`SimdF32`] on one AVX-512 register (16 lanes), using AVX-512F instructions only.
    //! Every method is `#[inline(always)]` and must only run inside a function compiled with
    //! `#[target_feature(enable = "avx512f,avx2,fma")]` on a CPU that has AVX-512F (see
    //! [`super::use_avx512`]). Masks are kept as vectors (all bits set where true), as the
    //! trait wants, and turned into mask registers where an instruction needs one.
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::{Add, BitOr, Div, Mul, Neg, Sub};

    use super::SimdF32;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    macro_rules! binop {
        ($tr:ident, $m:ident, $intr:ident) => {
            impl $tr for Avx512 {
                type Output = Avx512;
                #[inline(always)]
                fn $m(self, o: Avx512) -> Avx512 {
                    // SAFETY: only reached on AVX-512F CPUs (see the module docs).
                    Avx512(unsafe { $intr(self.0, o.0) })
                }
            }
        };
    }
    binop!(Add, add, _mm512_add_ps);
    binop!(Sub, sub, _mm512_sub_ps);
    binop!(Mul, mul, _mm512_mul_ps);
    binop!(Div, div, _mm512_div_ps);

    /// The bits of `x` as integers (AVX-512F has bitwise ops on integers only).
    #[inline(always)]
    unsafe fn bits(x: __m512) -> __m512i {
        _mm512_castps_si512(x)
    }

    /// A vector mask (all bits set where `k` is set).
    #[inline(always)]
    unsafe fn from_mask(k: __mmask16) -> Avx512 {
        Avx512(_mm512_castsi512_ps(_mm512_maskz_set1_epi32(k, -1)))
    }

    impl BitOr for Avx512 {
        type Output = Avx512;
        #[inline(always)]
        fn bitor(self, o: Avx512) -> Avx512 {
            // SAFETY: as above.
            Avx512(unsafe { _mm512_castsi512_ps(_mm512_or_si512(bits(self.0), bits(o.0))) })
        }
    }

    impl Neg for Avx512 {
        type Output = Avx512;
        #[inline(always)]
        fn neg(self) -> Avx512 {
            // SAFETY: as above.
            Avx512(unsafe {
                let sign = _mm512_set1_epi32(i32::MIN);
                _mm512_castsi512_ps(_mm512_xor_si512(bits(self.0), sign))
            })
        }
    }

    // SAFETY (every method below): only reached on AVX-512F CPUs (see the module docs); the
    // loads and stores check their slice lengths first.
    impl SimdF32 for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(v) })
        }
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 16);
            Avx512(unsafe { _mm512_loadu_ps(s.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, d: &mut [f32]) {
            assert!(d.len() >= 16);
            unsafe { _mm512_storeu_ps(d.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn store_u(self, d: &mut [MaybeUninit<f32>]) {
            assert!(d.len() >= 16);
            unsafe { _mm512_storeu_ps(d.as_mut_ptr() as *mut f32, self.0) }
        }
        #[inline(always)]
        fn mul_add(self, m: Self, a: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(self.0, m.0, a.0) })
        }
        #[inline(always)]
        fn max_(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min_(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_min_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn round_(self) -> Self {
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            Avx512(unsafe { _mm512_roundscale_ps::<NEAREST>(self.0) })
        }
        #[inline(always)]
        fn pow2i(self) -> Self {
            unsafe {
                let n = _mm512_add_epi32(_mm512_cvtps_epi32(self.0), _mm512_set1_epi32(127));
                Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(n)))
            }
        }
        #[inline(always)]
        fn exponent_mantissa(self) -> (Self, Self) {
            unsafe {
                let b = bits(self.0);
                let e = _mm512_sub_epi32(_mm512_srli_epi32::<23>(b), _mm512_set1_epi32(127));
                let m = _mm512_and_si512(b, _mm512_set1_epi32(0x007f_ffff));
                let m = _mm512_or_si512(m, _mm512_set1_epi32(0x3f80_0000));
                (
                    Avx512(_mm512_cvtepi32_ps(e)),
                    Avx512(_mm512_castsi512_ps(m)),
                )
            }
        }
        #[inline(always)]
        fn lt(self, o: Self) -> Self {
            unsafe { from_mask(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0)) }
        }
        #[inline(always)]
        fn gt(self, o: Self) -> Self {
            unsafe { from_mask(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0)) }
        }
        #[inline(always)]
        fn is_nan_(self) -> Self {
            unsafe { from_mask(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(self.0, self.0)) }
        }
        #[inline(always)]
        fn select(mask: Self, t: Self, f: Self) -> Self {
            unsafe {
                let k = _mm512_test_epi32_mask(bits(mask.0), bits(mask.0));
                Avx512(_mm512_mask_blend_ps(k, f.0, t.0))
            }
        }
        #[inline(always)]
        fn abs_(self) -> Self {
            Avx512(unsafe { _mm512_abs_ps(self.0) })
        }
        #[inline(always)]
        fn copysign_(self, s: Self) -> Self {
            unsafe {
                let sign = _mm512_set1_epi32(i32::MIN);
                let mag = _mm512_andnot_si512(sign, bits(self.0));
                let sgn = _mm512_and_si512(sign, bits(s.0));
                Avx512(_mm512_castsi512_ps(_mm512_or_si512(mag, sgn)))
            }
        }
    }
}

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

/// True when the AVX2 implementation may run now.
#[inline]
pub(crate) fn use_avx2() -> bool {
    use crate::kernels::cpu::{isa, Isa};
    cfg!(target_arch = "x86_64") && isa() >= Isa::Avx2Fma
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
