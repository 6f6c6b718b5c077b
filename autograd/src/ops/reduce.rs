//! Reductions over axes: `sum`, `mean`, `max`, `var`.
//!
//! Each reduces `x` over `axes` to `y`; the gradient `g` has `y`'s shape and reaches every
//! reduced element through broadcasting: `expand` puts back the reduced axes as size 1 and
//! broadcasts `g` over them.

use tensor::shape::normalize_axis;
use tensor::Tensor;

use crate::{Backward, Var};

/// `g` (shaped like the reduction of `shape` over `axes`, with or without `keepdim`)
/// broadcast back to `shape`.
fn expand(g: &Tensor, shape: &[usize], axes: &[usize]) -> Tensor {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    g.reshape(&kept).broadcast_to(shape)
}

fn resolve(op: &str, axes: &[isize], ndim: usize) -> Vec<usize> {
    axes.iter().map(|&a| normalize_axis(op, a, ndim)).collect()
}

/// Which reduction a [`ReduceRule`] differentiates.
#[derive(Clone, Copy)]
enum Reduce {
    Sum,
    Mean,
    Max,
    Var { correction: usize },
}

/// The backward rules, with `n` the number of elements reduced into each output:
///
/// - sum: `dx = g`
/// - mean: `dx = g / n`
/// - max: `dx = g [x = y] / (number of ties)`: the maxima share the gradient evenly (as
///   PyTorch's `amax`)
/// - var with correction c: `y = sum (x - m)^2 / (n - c)`, and since `sum (x - m) = 0` the
///   dependence through the mean m vanishes: `dx = g 2 (x - m) / (n - c)`
///
/// each broadcast over the reduced axes.
struct ReduceRule {
    kind: Reduce,
    x: Tensor,
    y: Tensor,
    axes: Vec<usize>,
}

impl Backward for ReduceRule {
    fn name(&self) -> &'static str {
        match self.kind {
            Reduce::Sum => "sum",
            Reduce::Mean => "mean",
            Reduce::Max => "max",
            Reduce::Var { .. } => "var",
        }
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        let (x, shape, axes) = (&self.x, self.x.shape(), &self.axes);
        let n: usize = axes.iter().map(|&a| shape[a]).product();
        let iaxes: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
        let dx = match self.kind {
            Reduce::Sum => expand(g, shape, axes),
            Reduce::Mean => expand(&g.mul_scalar(1.0 / n as f32), shape, axes),
            Reduce::Max => {
                let y = expand(&self.y, shape, axes);
                let is_max = x.sub(&y).map(|d| if d == 0.0 { 1.0 } else { 0.0 });
                let ties = is_max.sum(&iaxes, true);
                is_max.mul(&expand(g, shape, axes)).div(&ties)
            }
            Reduce::Var { correction } => {
                let mean = x.mean(&iaxes, true);
                let scale = 2.0 / (n as f32 - correction as f32);
                x.sub(&mean).mul(&expand(g, shape, axes)).mul_scalar(scale)
            }
        };
        vec![Some(dx)]
    }
}

fn reduce(kind: Reduce, x: &Var, axes: &[isize], keepdim: bool) -> Var {
    let v = x.value();
    let y = match kind {
        Reduce::Sum => v.sum(axes, keepdim),
        Reduce::Mean => v.mean(axes, keepdim),
        Reduce::Max => v.max(axes, keepdim),
        Reduce::Var { correction } => v.var(axes, correction, keepdim),
    };
    let axes = resolve("reduce", axes, v.ndim());
    let rule = ReduceRule {
        kind,
        x: v.clone(),
        y: y.clone(),
        axes,
    };
    Var::from_op(y, rule, &[x])
}

fn all_axes(x: &Var) -> Vec<isize> {
    (0..x.shape().len() as isize).collect()
}

impl Var {
    /// The sum over `axes` (negative axes count from the end), keeping them as size 1 if
    /// `keepdim`.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Var {
        reduce(Reduce::Sum, self, axes, keepdim)
    }
    /// The sum of every element, as a 0-d value.
    pub fn sum_all(&self) -> Var {
        self.sum(&all_axes(self), false)
    }
    /// The mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Var {
        reduce(Reduce::Mean, self, axes, keepdim)
    }
    /// The mean of every element, as a 0-d value.
    pub fn mean_all(&self) -> Var {
        self.mean(&all_axes(self), false)
    }
    /// The maximum over `axes`.
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Var {
        reduce(Reduce::Max, self, axes, keepdim)
    }
    /// The variance over `axes`, dividing by `n - correction`.
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Var {
        reduce(Reduce::Var { correction }, self, axes, keepdim)
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;
    use crate::{Graph, Var};
    use tensor::Tensor;

    /// Sums, means and variances are polynomials of degree <= 2 in x, so central differences
    /// are exact up to f32 rounding: the default tolerances leave a wide margin.
    #[test]
    fn smooth_reductions_pass_gradcheck() {
        let x = randn(&[3, 4, 5], 1);
        let tol = Tolerance::default();
        for (axes, keepdim) in [
            (&[1isize][..], false),
            (&[0, 2][..], true),
            (&[-1][..], false),
            (&[0, 1, 2][..], false),
        ] {
            gradcheck(|v| v[0].sum(axes, keepdim), std::slice::from_ref(&x), tol).unwrap();
            gradcheck(|v| v[0].mean(axes, keepdim), std::slice::from_ref(&x), tol).unwrap();
            gradcheck(
                |v| v[0].var(axes, 1, keepdim),
                std::slice::from_ref(&x),
                tol,
            )
            .unwrap();
            gradcheck(
                |v| v[0].var(axes, 0, keepdim),
                std::slice::from_ref(&x),
                tol,
            )
            .unwrap();
        }
        gradcheck(|v| v[0].sum_all(), std::slice::from_ref(&x), tol).unwrap();
        gradcheck(|v| v[0].mean_all(), &[x], tol).unwrap();
    }

    /// max is piecewise linear with kinks where two inputs tie: the inputs are a permutation
    /// of a grid with spacing 0.1, so steps of h = 1e-2 never cross a kink.
    #[test]
    fn max_passes_gradcheck_and_splits_ties() {
        let x = Tensor::from_vec(
            (0..24).map(|i| ((i * 7) % 24) as f32 * 0.1).collect(),
            &[2, 3, 4],
        );
        gradcheck(
            |v| v[0].max(&[2], false),
            std::slice::from_ref(&x),
            Tolerance::default(),
        )
        .unwrap();
        gradcheck(|v| v[0].max(&[0, 1], true), &[x], Tolerance::default()).unwrap();

        let g = Graph::new();
        let x = g.leaf(Tensor::from_vec(vec![1.0, 3.0, 3.0], &[3]));
        Var::max(&x, &[0], false).backward();
        assert_eq!(x.grad().unwrap().data(), &[0.0, 0.5, 0.5]);
    }
}
