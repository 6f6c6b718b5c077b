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
    #[inline(always)]
    fn lane_sums8(v: [Self; 8]) -> [f32; 8] {
        let mut out = [0.0; 8];
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums8(v.map(|x| x.0))) };
        out
    }
}

/// Lane `i` of the result is the sum of the lanes of `v[i]`: two rounds of pairwise
/// horizontal adds leave each vector's two 128-bit halves summed to one value apiece, and the
/// halves are then added across.
///
/// # Safety
/// The CPU must have AVX.
#[inline(always)]
pub(super) unsafe fn sums8(v: [__m256; 8]) -> __m256 {
    let t0 = _mm256_hadd_ps(v[0], v[1]);
    let t1 = _mm256_hadd_ps(v[2], v[3]);
    let t2 = _mm256_hadd_ps(v[4], v[5]);
    let t3 = _mm256_hadd_ps(v[6], v[7]);
    // u0 = [sums of the low halves of v0..v3 | of their high halves], u1 likewise for v4..v7.
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
    let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
    _mm256_add_ps(lo, hi)
}
