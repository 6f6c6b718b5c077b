//! [`SimdF32`] on one AVX-512 register (16 lanes), using AVX-512F instructions only.
//! Every method is `#[inline(always)]` and must only run inside a function compiled with
//! `#[target_feature(enable = "avx512f,avx2,fma")]` on a CPU that has AVX-512F (checked by
//! the callers through `cpu::isa`). Masks are kept as vectors (all bits set where true), as the
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
    #[inline(always)]
    fn ldexp_(self, n: Self) -> Self {
        // One instruction, rounded once (also into the subnormals).
        Avx512(unsafe { _mm512_scalef_ps(self.0, n.0) })
    }
    #[inline(always)]
    fn lane_sums8(v: [Self; 8]) -> [f32; 8] {
        let mut out = [0.0; 8];
        unsafe {
            // Each vector's two 256-bit halves added, then the eight-lane reduction (a loop,
            // not a closure: a closure would not inherit the caller's target features).
            let mut halves = [_mm256_setzero_ps(); 8];
            for (h, x) in halves.iter_mut().zip(v) {
                let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x.0));
                *h = _mm256_add_ps(_mm512_castps512_ps256(x.0), _mm256_castpd_ps(hi));
            }
            _mm256_storeu_ps(out.as_mut_ptr(), super::avx2::sums8(halves));
        }
        out
    }
}
