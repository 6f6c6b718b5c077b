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
use crate::shape::{broadcast_shapes, numel};
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

fn binary<F>(op: &str, a: &Tensor, b: &Tensor, f: F) -> Tensor
where
    F: Fn(f32x8, f32x8) -> f32x8 + Sync + Send,
{
    let shape = broadcast_shapes(op, a.shape(), b.shape());
    let mut out = vec![0.0f32; numel(&shape)];
    if !out.is_empty() {
        Plan::new(a.shape(), b.shape(), &shape).run(a.data(), b.data(), &mut out, f);
    }
    Tensor::from_vec(out, &shape)
}

fn binary_inplace<F>(op: &str, a: &mut Tensor, b: &Tensor, f: F)
where
    F: Fn(f32x8, f32x8) -> f32x8 + Sync + Send,
{
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

    /// `self += other`, with `other` broadcast to `self`'s shape (which must be the broadcast
    /// shape). Copies the storage first if it is shared.
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
