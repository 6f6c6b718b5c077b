//! [`SimdF32`] on two vectors of another implementation side by side: `Pair<V>` has twice
//! `V`'s lanes, and every operation is `V`'s on each half.
//!
//! Kernels that multiply a vector by a broadcast scalar (one query per lane against one
//! entry of a key, say) load that scalar once per FMA when written for `V`; written for
//! `Pair<V>`, `splat` broadcasts it once into a register that serves both halves. On the
//! AVX-512 machine of the benchmarks an FMA that broadcasts its own operand from memory ran
//! at 1.23 per cycle against 1.8 for FMAs on registers (a loop of eight accumulators), so
//! halving the broadcasts is worth the wider lanes.

use std::mem::MaybeUninit;
use std::ops::{Add, BitOr, Div, Mul, Neg, Sub};

use super::SimdF32;

/// Two vectors: lanes `0..V::LANES` in the first, the rest in the second.
#[derive(Clone, Copy)]
pub(crate) struct Pair<V>(V, V);

macro_rules! binop {
    ($tr:ident, $m:ident) => {
        impl<V: SimdF32> $tr for Pair<V> {
            type Output = Pair<V>;
            #[inline(always)]
            fn $m(self, o: Pair<V>) -> Pair<V> {
                Pair(self.0.$m(o.0), self.1.$m(o.1))
            }
        }
    };
}
binop!(Add, add);
binop!(Sub, sub);
binop!(Mul, mul);
binop!(Div, div);
binop!(BitOr, bitor);

impl<V: SimdF32> Neg for Pair<V> {
    type Output = Pair<V>;
    #[inline(always)]
    fn neg(self) -> Pair<V> {
        Pair(-self.0, -self.1)
    }
}

impl<V: SimdF32> Pair<V> {
    /// `f` on each half.
    #[inline(always)]
    fn map(self, f: impl Fn(V) -> V) -> Pair<V> {
        Pair(f(self.0), f(self.1))
    }
}

impl<V: SimdF32> SimdF32 for Pair<V> {
    const LANES: usize = 2 * V::LANES;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        let x = V::splat(v);
        Pair(x, x)
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        let s = &s[..Self::LANES];
        Pair(V::load(s), V::load(&s[V::LANES..]))
    }
    #[inline(always)]
    fn store(self, d: &mut [f32]) {
        let d = &mut d[..Self::LANES];
        self.0.store(d);
        self.1.store(&mut d[V::LANES..]);
    }
    #[inline(always)]
    fn store_u(self, d: &mut [MaybeUninit<f32>]) {
        let d = &mut d[..Self::LANES];
        self.0.store_u(d);
        self.1.store_u(&mut d[V::LANES..]);
    }
    #[inline(always)]
    fn mul_add(self, m: Self, a: Self) -> Self {
        Pair(self.0.mul_add(m.0, a.0), self.1.mul_add(m.1, a.1))
    }
    #[inline(always)]
    fn max_(self, o: Self) -> Self {
        Pair(self.0.max_(o.0), self.1.max_(o.1))
    }
    #[inline(always)]
    fn min_(self, o: Self) -> Self {
        Pair(self.0.min_(o.0), self.1.min_(o.1))
    }
    #[inline(always)]
    fn round_(self) -> Self {
        self.map(V::round_)
    }
    #[inline(always)]
    fn pow2i(self) -> Self {
        self.map(V::pow2i)
    }
    #[inline(always)]
    fn exponent_mantissa(self) -> (Self, Self) {
        let ((e0, m0), (e1, m1)) = (self.0.exponent_mantissa(), self.1.exponent_mantissa());
        (Pair(e0, e1), Pair(m0, m1))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Self {
        Pair(self.0.lt(o.0), self.1.lt(o.1))
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Self {
        Pair(self.0.gt(o.0), self.1.gt(o.1))
    }
    #[inline(always)]
    fn is_nan_(self) -> Self {
        self.map(V::is_nan_)
    }
    #[inline(always)]
    fn select(mask: Self, t: Self, f: Self) -> Self {
        Pair(V::select(mask.0, t.0, f.0), V::select(mask.1, t.1, f.1))
    }
    #[inline(always)]
    fn abs_(self) -> Self {
        self.map(V::abs_)
    }
    #[inline(always)]
    fn copysign_(self, s: Self) -> Self {
        Pair(self.0.copysign_(s.0), self.1.copysign_(s.1))
    }
    #[inline(always)]
    fn ldexp_(self, n: Self) -> Self {
        Pair(self.0.ldexp_(n.0), self.1.ldexp_(n.1))
    }
    /// The halves added lane by lane, then `V`'s sum of the lanes.
    #[inline(always)]
    fn lane_sum(self) -> f32 {
        (self.0 + self.1).lane_sum()
    }
    /// As [`Pair::lane_sum`], for eight vectors.
    #[inline(always)]
    fn lane_sums8(v: [Self; 8]) -> [f32; 8] {
        let mut halves = [V::splat(0.0); 8];
        for (h, p) in halves.iter_mut().zip(v) {
            *h = p.0 + p.1;
        }
        V::lane_sums8(halves)
    }
}

#[cfg(test)]
mod tests {
    use wide::f32x8;

    use super::*;

    /// Each operation of `Pair<V>` gives, lane by lane, the bits of the same operation on each
    /// half, and the lane sums add the halves first.
    #[inline(always)]
    fn check<V: SimdF32>() {
        type P<V> = Pair<V>;
        let l = V::LANES;
        let a: Vec<f32> = (0..2 * l).map(|i| i as f32 * 0.37 - 2.0).collect();
        let b: Vec<f32> = (0..2 * l).map(|i| 1.5 - i as f32 * 0.21).collect();
        let half = |v: &[f32], h: usize| V::load(&v[l * h..]);
        let (pa, pb) = (P::<V>::load(&a), P::<V>::load(&b));
        let (mut got, mut want) = (vec![0.0f32; 2 * l], vec![0.0f32; 2 * l]);
        pa.mul_add(pb, pa).store(&mut got);
        for h in 0..2 {
            let (x, y) = (half(&a, h), half(&b, h));
            x.mul_add(y, x).store(&mut want[l * h..]);
        }
        assert_eq!(got, want);
        let three = P::<V>::splat(3.0);
        P::select(
            pa.gt(pb),
            (pa / pb - pa.max_(pb)).ldexp_(three),
            pa.min_(pb),
        )
        .store(&mut got);
        for h in 0..2 {
            let (x, y) = (half(&a, h), half(&b, h));
            let z = (x / y - x.max_(y)).ldexp_(V::splat(3.0));
            V::select(x.gt(y), z, x.min_(y)).store(&mut want[l * h..]);
        }
        assert_eq!(got, want);
        assert_eq!(pa.lane_sum(), (half(&a, 0) + half(&a, 1)).lane_sum());
        let eight: [P<V>; 8] = std::array::from_fn(|k| pa * P::splat(k as f32));
        let sums = P::lane_sums8(eight);
        for (k, s) in sums.iter().enumerate() {
            assert_eq!(*s, V::lane_sums8(eight.map(|p| p.0 + p.1))[k]);
        }
        assert_eq!(P::<V>::LANES, 2 * l);
    }

    #[test]
    fn pairs_act_on_each_half() {
        check::<f32x8>();
    }

    /// The same with the AVX-512 halves the attention kernels use, where the CPU has them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn pairs_of_avx512_registers_act_on_each_half() {
        use crate::kernels::cpu::{detected_isa, Isa};
        if detected_isa() != Isa::Avx512 {
            return;
        }
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn run() {
            check::<super::super::Avx512>();
        }
        // SAFETY: the CPU has AVX-512F (checked above).
        unsafe { run() };
    }
}
