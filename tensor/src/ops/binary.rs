//! Element-wise binary ops with NumPy broadcasting: `add`, `sub`, `mul`, `div`, `maximum`,
//! `minimum`, `pow`, their scalar forms, and in-place forms for optimizers.
//!
//! `a.op(&b)` has the shape [`crate::shape::broadcast_shapes`] gives for the two shapes
//! (align trailing axes; sizes equal or one of them 1) and element `out[i] = op(a[i'], b[i''])`
//! where `i'`, `i''` are `i` with the broadcast axes of each operand set to 0. Shapes that do
//! not broadcast panic with the op's name and both shapes:
//! `add: shapes [2, 3] and [4] do not broadcast`.
//!
//! Same-shape operands take one flat 8-lane loop; broadcasts are walked in contiguous runs (see
//! `broadcast.rs`), so a row vector, a column vector or a per-channel `[1, C, 1, 1]` operand
//! costs no per-element index arithmetic. Outputs of 128K elements or more are computed in
//! parallel in fixed 64K-element chunks.
//!
//! ```
//! use tensor::Tensor;
//! let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
//! let bias = Tensor::from_vec(vec![10.0, 20.0, 30.0], &[3]);
//! assert_eq!(x.add(&bias).data(), &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
//! assert_eq!(x.mul_scalar(2.0).data(), &[2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
//! ```

use wide::f32x8;

use super::broadcast::Plan;
use crate::shape::{broadcast_shapes, numel, try_broadcast_shapes};
use crate::Tensor;

/// max(a, b) per lane, NaN if either is NaN (as `torch.maximum`).
#[inline(always)]
fn max_nan(a: f32x8, b: f32x8) -> f32x8 {
    (a.is_nan() | b.is_nan()).blend(a + b, a.fast_max(b))
}

/// min(a, b) per lane, NaN if either is NaN (as `torch.minimum`).
#[inline(always)]
fn min_nan(a: f32x8, b: f32x8) -> f32x8 {
    (a.is_nan() | b.is_nan()).blend(a + b, a.fast_min(b))
}

/// a^b per lane with `f32::powf` (exact to std's accuracy; not a hot op).
#[inline(always)]
fn pow_lanes(a: f32x8, b: f32x8) -> f32x8 {
    let (a, b) = (a.to_array(), b.to_array());
    f32x8::new(std::array::from_fn(|i| a[i].powf(b[i])))
}

fn binary<F>(op: &'static str, a: &Tensor, b: &Tensor, f: F) -> Tensor
where
    F: Fn(f32x8, f32x8) -> f32x8 + Sync + Send,
{
    let _prof = crate::profile::scope(op, || format!("{:?}, {:?}", a.shape(), b.shape()));
    let shape = broadcast_shapes(op, a.shape(), b.shape());
    let plan = Plan::new(a.shape(), b.shape(), &shape);
    let out = plan.run(a.data(), b.data(), numel(&shape), f);
    Tensor::from_vec(out, &shape)
}

fn binary_inplace<F>(op: &'static str, a: &mut Tensor, b: &Tensor, f: F)
where
    F: Fn(f32x8, f32x8) -> f32x8 + Sync + Send,
{
    let _prof = crate::profile::scope(op, || format!("{:?}, {:?}", a.shape(), b.shape()));
    let shape = broadcast_shapes(op, a.shape(), b.shape());
    assert!(
        shape == a.shape(),
        "{op}: shapes {:?} and {:?} broadcast to {shape:?}, not to the shape of the target",
        a.shape(),
        b.shape()
    );
    if a.numel() == 0 {
        return;
    }
    if a.is_shared() {
        // One pass into fresh storage rather than a copy and then a pass over it.
        *a = binary(op, a, b, f);
        return;
    }
    let plan = Plan::new(a.shape(), b.shape(), &shape);
    plan.run_inplace(a.data_mut(), b.data(), f);
}

fn scalar_op<F>(a: &Tensor, f: F) -> Tensor
where
    F: Fn(f32x8) -> f32x8 + Sync + Send,
{
    super::unary::map_lanes(a, f)
}

impl Tensor {
    /// `self + other`, broadcast.
    pub fn add(&self, other: &Tensor) -> Tensor {
        binary("add", self, other, |a, b| a + b)
    }

    /// `self - other`, broadcast.
    pub fn sub(&self, other: &Tensor) -> Tensor {
        binary("sub", self, other, |a, b| a - b)
    }

    /// `self * other` (element-wise), broadcast.
    pub fn mul(&self, other: &Tensor) -> Tensor {
        binary("mul", self, other, |a, b| a * b)
    }

    /// `self / other` (element-wise, IEEE division), broadcast.
    pub fn div(&self, other: &Tensor) -> Tensor {
        binary("div", self, other, |a, b| a / b)
    }

    /// `max(self, other)` element-wise, broadcast; NaN if either is NaN.
    pub fn maximum(&self, other: &Tensor) -> Tensor {
        binary("maximum", self, other, max_nan)
    }

    /// `min(self, other)` element-wise, broadcast; NaN if either is NaN.
    pub fn minimum(&self, other: &Tensor) -> Tensor {
        binary("minimum", self, other, min_nan)
    }

    /// `self ^ other` element-wise (`f32::powf`), broadcast.
    pub fn pow(&self, other: &Tensor) -> Tensor {
        binary("pow", self, other, pow_lanes)
    }

    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Tensor {
        scalar_op(self, move |a| a + f32x8::splat(s))
    }

    /// `self - s`.
    pub fn sub_scalar(&self, s: f32) -> Tensor {
        scalar_op(self, move |a| a - f32x8::splat(s))
    }

    /// `s - self` (PyTorch's `rsub`).
    pub fn rsub_scalar(&self, s: f32) -> Tensor {
        scalar_op(self, move |a| f32x8::splat(s) - a)
    }

    /// `self * s`.
    pub fn mul_scalar(&self, s: f32) -> Tensor {
        scalar_op(self, move |a| a * f32x8::splat(s))
    }

    /// `self / s` (a true division, not a multiplication by `1 / s`).
    pub fn div_scalar(&self, s: f32) -> Tensor {
        scalar_op(self, move |a| a / f32x8::splat(s))
    }

    /// `max(self, s)` element-wise; NaN stays NaN.
    pub fn maximum_scalar(&self, s: f32) -> Tensor {
        scalar_op(self, move |a| max_nan(a, f32x8::splat(s)))
    }

    /// `min(self, s)` element-wise; NaN stays NaN.
    pub fn minimum_scalar(&self, s: f32) -> Tensor {
        scalar_op(self, move |a| min_nan(a, f32x8::splat(s)))
    }

    /// `min(max(self, lo), hi)` element-wise; NaN stays NaN.
    pub fn clamp(&self, lo: f32, hi: f32) -> Tensor {
        scalar_op(self, move |a| {
            min_nan(max_nan(a, f32x8::splat(lo)), f32x8::splat(hi))
        })
    }

    /// `self ^ s` element-wise (`f32::powf`); `s == 2` is computed as `x * x`.
    pub fn pow_scalar(&self, s: f32) -> Tensor {
        if s == 2.0 {
            return scalar_op(self, |a| a * a);
        }
        scalar_op(self, move |a| pow_lanes(a, f32x8::splat(s)))
    }

    /// `self` repeated along broadcast axes to `shape` (NumPy's `broadcast_to`, materialised):
    /// the same as `Tensor::zeros(shape).add(self)` without reading the zeros. Panics unless
    /// `self`'s shape broadcasts to exactly `shape`.
    pub fn broadcast_to(&self, shape: &[usize]) -> Tensor {
        let _prof = crate::profile::scope("broadcast_to", || {
            format!("{:?} to {shape:?}", self.shape())
        });
        let fits = try_broadcast_shapes(self.shape(), shape).is_some_and(|s| s == shape);
        assert!(
            fits,
            "broadcast_to: shape {:?} does not broadcast to {shape:?}",
            self.shape()
        );
        let plan = Plan::new(self.shape(), &[], shape);
        let out = plan.run(self.data(), &[0.0], numel(shape), |a, _| a);
        Tensor::from_vec(out, shape)
    }

    /// `self += other`, with `other` broadcast to `self`'s shape (which must be the broadcast
    /// shape). If the storage is shared, the sum goes to fresh storage (the other holder keeps
    /// its values).
    pub fn add_assign(&mut self, other: &Tensor) {
        binary_inplace("add_assign", self, other, |a, b| a + b);
    }

    /// `self -= other`, broadcast as [`Tensor::add_assign`].
    pub fn sub_assign(&mut self, other: &Tensor) {
        binary_inplace("sub_assign", self, other, |a, b| a - b);
    }

    /// `self *= other`, broadcast as [`Tensor::add_assign`].
    pub fn mul_assign(&mut self, other: &Tensor) {
        binary_inplace("mul_assign", self, other, |a, b| a * b);
    }

    /// `self += alpha * other` (BLAS axpy), broadcast as [`Tensor::add_assign`].
    pub fn add_scaled(&mut self, other: &Tensor, alpha: f32) {
        let al = f32x8::splat(alpha);
        binary_inplace("add_scaled", self, other, move |a, b| a + al * b);
    }

    /// `self *= s`.
    pub fn mul_scalar_assign(&mut self, s: f32) {
        super::unary::map_lanes_inplace(self, move |a| a * f32x8::splat(s));
    }

    /// `self += s`.
    pub fn add_scalar_assign(&mut self, s: f32) {
        super::unary::map_lanes_inplace(self, move |a| a + f32x8::splat(s));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, broadcast_index, Lcg};
    use crate::shape::{numel, try_broadcast_shapes};
    use crate::Tensor;
    use proptest::prelude::*;

    type Op = (
        &'static str,
        fn(&Tensor, &Tensor) -> Tensor,
        fn(f64, f64) -> f64,
    );

    const OPS: &[Op] = &[
        ("add", Tensor::add, |a, b| a + b),
        ("sub", Tensor::sub, |a, b| a - b),
        ("mul", Tensor::mul, |a, b| a * b),
        ("div", Tensor::div, |a, b| a / b),
        ("maximum", Tensor::maximum, f64::max),
        ("minimum", Tensor::minimum, f64::min),
    ];

    /// The naive f64 reference: every output element from explicit broadcast indexing.
    fn reference(a: &Tensor, b: &Tensor, f: fn(f64, f64) -> f64) -> (Vec<usize>, Vec<f64>) {
        let shape = try_broadcast_shapes(a.shape(), b.shape()).unwrap();
        let out = (0..numel(&shape))
            .map(|i| {
                let x = a.data()[broadcast_index(a.shape(), &shape, i)] as f64;
                let y = b.data()[broadcast_index(b.shape(), &shape, i)] as f64;
                f(x, y)
            })
            .collect();
        (shape, out)
    }

    fn check_pair(rng: &mut Lcg, sa: &[usize], sb: &[usize]) {
        let a = rng.tensor(sa);
        let b = rng.tensor(sb);
        for (name, op, f) in OPS {
            let got = op(&a, &b);
            let (shape, want) = reference(&a, &b, *f);
            assert_eq!(got.shape(), &shape[..], "{name} {sa:?} {sb:?}");
            assert_close(name, got.data(), &want, 1e-7, 0.0);
        }
        let p = a.abs().add_scalar(0.5).pow(&b);
        let (_, want) = reference(&a, &b, |x, _| (x.abs() as f32 + 0.5) as f64);
        let want: Vec<f64> = {
            let (_, ys) = reference(&a, &b, |_, y| y);
            want.iter().zip(ys).map(|(x, y)| x.powf(y)).collect()
        };
        assert_close("pow", p.data(), &want, 1e-6, 0.0);
    }

    #[test]
    fn broadcast_shapes_match_reference() {
        let mut rng = Lcg::new(10);
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 1, 5], &[4, 1]),
            (&[2, 3], &[3]),
            (&[2, 3], &[2, 1]),
            (&[], &[4, 5]),
            (&[4, 5], &[]),
            (&[0], &[1]),
            (&[0, 3], &[3]),
            (&[1], &[7]),
            (&[17], &[17]),
            (&[129], &[1]),
            (&[2, 3, 17, 19], &[1, 3, 1, 1]),
            (&[2, 3, 17, 19], &[3, 1, 19]),
            (&[5, 1, 9], &[1, 7, 1]),
            (&[1, 1, 33], &[6, 1, 1]),
            (&[1000003], &[1000003]),
            (&[3, 500001], &[3, 1]),
            (&[2, 70000, 3], &[70000, 1]),
        ];
        for (sa, sb) in cases {
            check_pair(&mut rng, sa, sb);
        }
    }

    #[test]
    fn scalar_ops_match_reference() {
        let mut rng = Lcg::new(11);
        let x = rng.tensor(&[7, 19]);
        let s = 0.37f32;
        type Case = (&'static str, Tensor, fn(f64, f64) -> f64);
        let cases: Vec<Case> = vec![
            ("add_scalar", x.add_scalar(s), |a, b| a + b),
            ("sub_scalar", x.sub_scalar(s), |a, b| a - b),
            ("rsub_scalar", x.rsub_scalar(s), |a, b| b - a),
            ("mul_scalar", x.mul_scalar(s), |a, b| a * b),
            ("div_scalar", x.div_scalar(s), |a, b| a / b),
            ("maximum_scalar", x.maximum_scalar(s), f64::max),
            ("minimum_scalar", x.minimum_scalar(s), f64::min),
            ("pow_scalar", x.abs().pow_scalar(s), |a, b| a.abs().powf(b)),
            ("clamp", x.clamp(-s, s), |a, b| a.clamp(-b, b)),
        ];
        for (name, got, f) in cases {
            let want: Vec<f64> = x.data().iter().map(|&v| f(v as f64, s as f64)).collect();
            assert_close(name, got.data(), &want, 1e-6, 0.0);
        }
        assert_eq!(x.pow_scalar(2.0).data(), x.square().data());
    }

    #[test]
    fn in_place_ops_match_out_of_place() {
        let mut rng = Lcg::new(12);
        let a = rng.tensor(&[4, 3, 33]);
        for sb in [&[4, 3, 33][..], &[3, 1], &[33], &[]] {
            let b = rng.tensor(sb);
            let mut x = a.clone();
            x.add_assign(&b);
            assert_eq!(x.data(), a.add(&b).data());
            let mut x = a.clone();
            x.sub_assign(&b);
            assert_eq!(x.data(), a.sub(&b).data());
            let mut x = a.clone();
            x.mul_assign(&b);
            assert_eq!(x.data(), a.mul(&b).data());
            let mut x = a.clone();
            x.add_scaled(&b, -0.25);
            assert_eq!(x.data(), a.add(&b.mul_scalar(-0.25)).data());
        }
        let mut x = a.clone();
        x.mul_scalar_assign(3.0);
        x.add_scalar_assign(1.0);
        assert_eq!(x.data(), a.mul_scalar(3.0).add_scalar(1.0).data());
        assert!(
            (a.data()[0] - x.data()[0]).abs() > 0.0,
            "the original must be untouched"
        );
    }

    #[test]
    fn broadcast_to_repeats_along_new_and_unit_axes() {
        let mut rng = Lcg::new(13);
        for (from, to) in [
            (&[3, 1][..], &[2, 3, 4][..]),
            (&[], &[5]),
            (&[1, 4, 1], &[3, 4, 70000]),
            (&[2, 3], &[2, 3]),
        ] {
            let x = rng.tensor(from);
            let y = x.broadcast_to(to);
            assert_eq!(y.shape(), to);
            assert_eq!(y.data(), Tensor::zeros(to).add(&x).data());
        }
    }

    #[test]
    #[should_panic(expected = "broadcast_to: shape [2, 3] does not broadcast to [3]")]
    fn broadcast_to_rejects_shrinking() {
        Tensor::zeros(&[2, 3]).broadcast_to(&[3]);
    }

    #[test]
    fn nan_propagates_through_maximum_and_minimum() {
        let a = Tensor::from_vec(vec![f32::NAN, 1.0, 2.0], &[3]);
        let b = Tensor::from_vec(vec![0.0, f32::NAN, 1.0], &[3]);
        let m = a.maximum(&b);
        assert!(m.data()[0].is_nan() && m.data()[1].is_nan());
        assert_eq!(m.data()[2], 2.0);
        assert!(a.minimum(&b).data()[1].is_nan());
        assert!(a.maximum_scalar(0.0).data()[0].is_nan());
    }

    #[test]
    #[should_panic(expected = "add: shapes [2, 3] and [4] do not broadcast")]
    fn add_rejects_mismatched_shapes() {
        Tensor::zeros(&[2, 3]).add(&Tensor::zeros(&[4]));
    }

    #[test]
    #[should_panic(expected = "div: shapes [3, 1, 5] and [4, 2] do not broadcast")]
    fn div_rejects_mismatched_shapes() {
        Tensor::zeros(&[3, 1, 5]).div(&Tensor::zeros(&[4, 2]));
    }

    /// On shared storage the in-place ops write to fresh storage (one pass, no copy first):
    /// the same bits as on storage held alone, and the other holder keeps its values.
    #[test]
    fn in_place_ops_on_shared_storage_leave_the_other_holder_alone() {
        let a = Tensor::randn(&[3, 37], 1, 0);
        let b = Tensor::randn(&[37], 2, 0);
        let mut alone = Tensor::from_vec(a.data().to_vec(), a.shape());
        let mut shared = a.clone();
        alone.add_assign(&b);
        shared.add_assign(&b);
        assert_eq!(shared.data(), alone.data());
        assert_eq!(a.data(), Tensor::randn(&[3, 37], 1, 0).data());
        assert!(!shared.is_shared() && !a.is_shared());
    }

    #[test]
    #[should_panic(expected = "add_assign: shapes [3] and [2, 3] broadcast to [2, 3]")]
    fn add_assign_rejects_growing_the_target() {
        Tensor::zeros(&[3]).add_assign(&Tensor::zeros(&[2, 3]));
    }

    /// A pair of shapes that broadcast: a common shape, with some dims of each set to 1 and
    /// some leading dims of each dropped.
    fn broadcastable_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        prop::collection::vec((0usize..6, any::<bool>(), any::<bool>()), 0..5).prop_flat_map(
            |dims| {
                let a: Vec<usize> = dims
                    .iter()
                    .map(|&(d, x, _)| if x { 1 } else { d })
                    .collect();
                let b: Vec<usize> = dims
                    .iter()
                    .map(|&(d, _, y)| if y { 1 } else { d })
                    .collect();
                let n = dims.len();
                (Just(a), Just(b), 0..=n, 0..=n)
                    .prop_map(|(a, b, ca, cb)| (a[ca..].to_vec(), b[cb..].to_vec()))
            },
        )
    }

    proptest! {
        #[test]
        fn broadcasting_is_commutative_in_shape((sa, sb) in broadcastable_pair()) {
            prop_assert_eq!(try_broadcast_shapes(&sa, &sb), try_broadcast_shapes(&sb, &sa));
            let mut rng = Lcg::new(sa.len() as u64 * 31 + sb.len() as u64);
            let (a, b) = (rng.tensor(&sa), rng.tensor(&sb));
            prop_assert_eq!(a.add(&b).data().to_vec(), b.add(&a).data().to_vec());
            prop_assert_eq!(a.mul(&b).shape().to_vec(), b.mul(&a).shape().to_vec());
        }

        #[test]
        fn broadcast_equals_explicit_expansion((sa, sb) in broadcastable_pair()) {
            let mut rng = Lcg::new(7);
            let (a, b) = (rng.tensor(&sa), rng.tensor(&sb));
            let shape = try_broadcast_shapes(&sa, &sb).unwrap();
            let expand = |t: &Tensor| -> Tensor {
                let data = (0..numel(&shape))
                    .map(|i| t.data()[broadcast_index(t.shape(), &shape, i)])
                    .collect();
                Tensor::from_vec(data, &shape)
            };
            let (ea, eb) = (expand(&a), expand(&b));
            prop_assert_eq!(a.sub(&b).data().to_vec(), ea.sub(&eb).data().to_vec());
            prop_assert_eq!(a.div(&b).data().to_vec(), ea.div(&eb).data().to_vec());
        }
    }
}
