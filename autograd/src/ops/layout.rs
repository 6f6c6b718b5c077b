//! Ops that move elements without changing them: `reshape`, `permute`, `transpose`, `concat`,
//! `split`, `slice` and nearest-neighbour 2x upsampling. Each gradient moves `g` back.

use tensor::shape::normalize_axis;
use tensor::Tensor;

use crate::{Backward, Var};

/// How a [`LayoutRule`] moved the elements, and so how to move the gradient back.
enum Layout {
    /// `dx = g` reshaped to the input's shape.
    Reshape { input_shape: Vec<usize> },
    /// `dx = g` permuted by the inverse permutation.
    Permute { inverse: Vec<usize> },
    /// `dx_i` = the i-th piece of `g` cut along `axis`.
    Concat { axis: usize, sizes: Vec<usize> },
    /// `dx` = zeros with `g` placed at `start..start + len` along `axis`.
    Slice {
        axis: usize,
        start: usize,
        input_shape: Vec<usize>,
    },
    /// `dx = sum_pool2x(g)`: each input pixel fed a 2x2 block of the output.
    Upsample2x,
}

struct LayoutRule(Layout);

impl Backward for LayoutRule {
    fn name(&self) -> &'static str {
        match self.0 {
            Layout::Reshape { .. } => "reshape",
            Layout::Permute { .. } => "permute",
            Layout::Concat { .. } => "concat",
            Layout::Slice { .. } => "slice",
            Layout::Upsample2x => "upsample_nearest2x",
        }
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        match &self.0 {
            Layout::Reshape { input_shape } => vec![Some(g.reshape(input_shape))],
            Layout::Permute { inverse } => vec![Some(g.permute(inverse))],
            Layout::Concat { axis, sizes } => g
                .split(sizes, *axis as isize)
                .into_iter()
                .map(Some)
                .collect(),
            Layout::Slice {
                axis,
                start,
                input_shape,
            } => {
                let mut before = input_shape.clone();
                before[*axis] = *start;
                let mut after = input_shape.clone();
                after[*axis] = input_shape[*axis] - start - g.shape()[*axis];
                let (before, after) = (Tensor::zeros(&before), Tensor::zeros(&after));
                vec![Some(Tensor::concat(&[&before, g, &after], *axis as isize))]
            }
            Layout::Upsample2x => vec![Some(g.sum_pool2x())],
        }
    }
}

impl Var {
    /// The same elements in a new shape (one dimension may be `usize::MAX`, inferred).
    pub fn reshape(&self, shape: &[usize]) -> Var {
        let y = self.value().reshape(shape);
        Var::from_op(
            y,
            LayoutRule(Layout::Reshape {
                input_shape: self.shape().to_vec(),
            }),
            &[self],
        )
    }

    /// Axes reordered: output axis i is input axis `dims[i]`.
    pub fn permute(&self, dims: &[usize]) -> Var {
        let y = self.value().permute(dims);
        let mut inverse = vec![0; dims.len()];
        for (i, &d) in dims.iter().enumerate() {
            inverse[d] = i;
        }
        Var::from_op(y, LayoutRule(Layout::Permute { inverse }), &[self])
    }

    /// Axes `a` and `b` swapped.
    pub fn transpose(&self, a: isize, b: isize) -> Var {
        let n = self.shape().len();
        let (a, b) = (
            normalize_axis("transpose", a, n),
            normalize_axis("transpose", b, n),
        );
        let mut dims: Vec<usize> = (0..n).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    /// The values joined along `axis`.
    pub fn concat(values: &[&Var], axis: isize) -> Var {
        assert!(!values.is_empty(), "concat: no values given");
        let tensors: Vec<&Tensor> = values.iter().map(|v| v.value()).collect();
        let y = Tensor::concat(&tensors, axis);
        let axis = normalize_axis("concat", axis, y.ndim());
        let sizes = values.iter().map(|v| v.shape()[axis]).collect();
        Var::from_op(y, LayoutRule(Layout::Concat { axis, sizes }), values)
    }

    /// Elements `start..end` along `axis`.
    pub fn slice(&self, axis: isize, start: usize, end: usize) -> Var {
        let y = self.value().slice(axis, start, end);
        let axis = normalize_axis("slice", axis, self.shape().len());
        let rule = LayoutRule(Layout::Slice {
            axis,
            start,
            input_shape: self.shape().to_vec(),
        });
        Var::from_op(y, rule, &[self])
    }

    /// Consecutive pieces of the given sizes along `axis` (each a [`Var::slice`]).
    pub fn split(&self, sizes: &[usize], axis: isize) -> Vec<Var> {
        let ax = normalize_axis("split", axis, self.shape().len());
        let ranges = tensor::shape::split_ranges(sizes, ax, self.shape());
        ranges
            .into_iter()
            .map(|(start, end)| self.slice(axis, start, end))
            .collect()
    }

    /// Nearest-neighbour 2x upsampling of NCHW: `[N, C, H, W] -> [N, C, 2H, 2W]`.
    pub fn upsample_nearest2x(&self) -> Var {
        let y = self.value().upsample_nearest2x();
        Var::from_op(y, LayoutRule(Layout::Upsample2x), &[self])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;
    use crate::Var;

    /// Layout ops only move values: they are linear with 0/1 Jacobians, so the checks are
    /// exact up to f32 rounding and the default tolerances are loose for them. gradcheck
    /// weights every output element differently, so a misplaced gradient shows.
    #[test]
    fn layout_ops_pass_gradcheck() {
        let x = randn(&[2, 3, 4], 1);
        let tol = Tolerance::default();
        gradcheck(
            |v| v[0].reshape(&[6, usize::MAX]),
            std::slice::from_ref(&x),
            tol,
        )
        .unwrap();
        gradcheck(|v| v[0].permute(&[2, 0, 1]), std::slice::from_ref(&x), tol).unwrap();
        gradcheck(|v| v[0].transpose(0, -1), std::slice::from_ref(&x), tol).unwrap();
        gradcheck(|v| v[0].slice(1, 1, 3), std::slice::from_ref(&x), tol).unwrap();
        gradcheck(
            |v| v[0].split(&[1, 3], -1)[1].clone(),
            std::slice::from_ref(&x),
            tol,
        )
        .unwrap();
        let y = randn(&[2, 5, 4], 2);
        gradcheck(
            |v| Var::concat(&[&v[0], &v[1], &v[0]], 1),
            &[x.clone(), y],
            tol,
        )
        .unwrap();
        let image = randn(&[2, 3, 3, 5], 3);
        gradcheck(|v| v[0].upsample_nearest2x(), &[image], tol).unwrap();
    }
}
