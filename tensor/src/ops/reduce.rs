//! Reductions: `sum`, `mean`, `max`, `min`, `var` over one axis, several axes or all of them,
//! and `sum_to` (the adjoint of broadcasting).
//!
//! `x.sum(&[a, b], keepdim)` adds the elements over axes `a` and `b` (negative axes count from
//! the end; an empty list reduces nothing, as NumPy's `axis=()`); the result drops those axes,
//! or keeps them with size 1 when `keepdim`. `mean` divides by the number of elements reduced,
//! `max`/`min` take the extreme (NaN if any element is NaN; an empty reduction panics), and
//! `var(axes, correction, keepdim)` is `sum((x - mean)^2) / (n - correction)` (two passes;
//! `correction = 0` is the population variance, `1` the unbiased estimate, as PyTorch's
//! `correction`). The `*_all` forms reduce every axis to a 0-d tensor.
//!
//! Determinism and accuracy: a reduced row is cut into blocks of 64K elements (and, when the
//! reduced axes are not the last ones, into fixed tiles of rows and columns). Each block sums
//! in 32 f32 lanes over runs of 1024 elements, the runs are added in f64, and the block
//! partials are added in f64 in block order. None of this depends on the number of threads, so
//! results are bitwise identical on any pool; a 16M-element sum has a relative error near 1e-7.
//!
//! ```
//! use tensor::Tensor;
//! let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
//! assert_eq!(x.sum(&[1], false).data(), &[6.0, 15.0]);
//! assert_eq!(x.max(&[0], true).shape(), &[1, 3]);
//! assert_eq!(x.mean_all().item(), 3.5);
//! assert_eq!(x.var(&[1], 1, false).data(), &[1.0, 1.0]);
//! ```

use super::reduce_kernel::{reduce_3d, Kind};
use crate::shape::{normalize_axis, numel};
use crate::Tensor;

/// What a reduction over `axes` of a tensor looks like.
struct Reduction {
    /// The input arranged so the reduced elements form the middle axis of `[outer, r, inner]`.
    input: Tensor,
    outer: usize,
    r: usize,
    inner: usize,
    /// The result's shape with and without the reduced axes.
    keep_shape: Vec<usize>,
    drop_shape: Vec<usize>,
}

impl Reduction {
    fn new(op: &str, x: &Tensor, axes: &[isize]) -> Reduction {
        let nd = x.ndim();
        let mut reduced = vec![false; nd];
        for &a in axes {
            let a = normalize_axis(op, a, nd);
            assert!(
                !reduced[a],
                "{op}: axis {a} repeated in {axes:?} for shape {:?}",
                x.shape()
            );
            reduced[a] = true;
        }
        let shape = x.shape();
        let keep_shape: Vec<usize> = (0..nd)
            .map(|i| if reduced[i] { 1 } else { shape[i] })
            .collect();
        let drop_shape: Vec<usize> = (0..nd).filter(|&i| !reduced[i]).map(|i| shape[i]).collect();
        let first = reduced.iter().position(|&r| r).unwrap_or(nd);
        let last = reduced.iter().rposition(|&r| r).map_or(nd, |i| i + 1);
        // Axes of size 1 may sit anywhere without breaking contiguity.
        let contiguous = (first..last).all(|i| reduced[i] || shape[i] == 1);
        if contiguous {
            let outer = numel(&shape[..first]);
            let r = (first..last)
                .filter(|&i| reduced[i])
                .map(|i| shape[i])
                .product();
            let inner = numel(&shape[last.max(first)..]);
            Reduction {
                input: x.clone(),
                outer,
                r,
                inner,
                keep_shape,
                drop_shape,
            }
        } else {
            let mut perm: Vec<usize> = (0..nd).filter(|&i| !reduced[i]).collect();
            perm.extend((0..nd).filter(|&i| reduced[i]));
            let r = (0..nd).filter(|&i| reduced[i]).map(|i| shape[i]).product();
            let input = x.permute(&perm);
            Reduction {
                input,
                outer: numel(&drop_shape),
                r,
                inner: 1,
                keep_shape,
                drop_shape,
            }
        }
    }

    fn run(&self, kind: Kind, centre: &[f32]) -> Vec<f32> {
        reduce_3d(
            kind,
            self.input.data(),
            self.outer,
            self.r,
            self.inner,
            centre,
        )
    }

    fn finish(&self, data: Vec<f32>, keepdim: bool) -> Tensor {
        Tensor::from_vec(
            data,
            if keepdim {
                &self.keep_shape
            } else {
                &self.drop_shape
            },
        )
    }
}

fn all_axes(x: &Tensor) -> Vec<isize> {
    (0..x.ndim() as isize).collect()
}

fn extreme(op: &str, kind: Kind, x: &Tensor, axes: &[isize], keepdim: bool) -> Tensor {
    let red = Reduction::new(op, x, axes);
    assert!(
        red.r > 0 || red.outer * red.inner == 0,
        "{op}: cannot reduce over an empty axis (shape {:?}, axes {axes:?})",
        x.shape()
    );
    red.finish(red.run(kind, &[]), keepdim)
}

impl Tensor {
    /// The sum over `axes` (see the module docs for `axes` and `keepdim`).
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Tensor {
        let _prof = crate::profile::scope("sum", || format!("{:?} axes {axes:?}", self.shape()));
        let red = Reduction::new("sum", self, axes);
        red.finish(red.run(Kind::Sum, &[]), keepdim)
    }

    /// The sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Tensor {
        self.sum(&all_axes(self), false)
    }

    /// The mean over `axes`: the sum divided by the number of elements reduced (NaN if none).
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Tensor {
        let _prof = crate::profile::scope("mean", || format!("{:?} axes {axes:?}", self.shape()));
        let red = Reduction::new("mean", self, axes);
        let n = red.r as f32;
        let data = red.run(Kind::Sum, &[]).into_iter().map(|s| s / n).collect();
        red.finish(data, keepdim)
    }

    /// The mean of all elements, as a 0-d tensor.
    pub fn mean_all(&self) -> Tensor {
        self.mean(&all_axes(self), false)
    }

    /// The maximum over `axes`; NaN if any reduced element is NaN. Panics on an empty axis.
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Tensor {
        let _prof = crate::profile::scope("max", || format!("{:?} axes {axes:?}", self.shape()));
        extreme("max", Kind::Max, self, axes, keepdim)
    }

    /// The maximum of all elements, as a 0-d tensor.
    pub fn max_all(&self) -> Tensor {
        self.max(&all_axes(self), false)
    }

    /// The minimum over `axes`; NaN if any reduced element is NaN. Panics on an empty axis.
    pub fn min(&self, axes: &[isize], keepdim: bool) -> Tensor {
        let _prof = crate::profile::scope("min", || format!("{:?} axes {axes:?}", self.shape()));
        extreme("min", Kind::Min, self, axes, keepdim)
    }

    /// The minimum of all elements, as a 0-d tensor.
    pub fn min_all(&self) -> Tensor {
        self.min(&all_axes(self), false)
    }

    /// The variance over `axes`: `sum((x - mean)^2) / (n - correction)` with `n` the number of
    /// elements reduced (`correction` 0: population, 1: unbiased). Infinite or NaN when
    /// `n <= correction`, as in PyTorch.
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Tensor {
        let _prof = crate::profile::scope("var", || format!("{:?} axes {axes:?}", self.shape()));
        let red = Reduction::new("var", self, axes);
        let n = red.r as f32;
        let mean: Vec<f32> = red.run(Kind::Sum, &[]).into_iter().map(|s| s / n).collect();
        let denom = red.r as f32 - correction as f32;
        let data = red
            .run(Kind::SqDev, &mean)
            .into_iter()
            .map(|s| s / denom.max(0.0))
            .collect();
        red.finish(data, keepdim)
    }

    /// The variance of all elements, as a 0-d tensor.
    pub fn var_all(&self, correction: usize) -> Tensor {
        self.var(&all_axes(self), correction, false)
    }

    /// Sums `self` down to `shape`, which must broadcast to `self`'s shape: the adjoint of
    /// broadcasting (the gradient of a broadcast operand). Leading axes missing from `shape`
    /// and axes where `shape` has 1 are summed.
    pub fn sum_to(&self, shape: &[usize]) -> Tensor {
        let _prof = crate::profile::scope("sum_to", || format!("{:?} to {shape:?}", self.shape()));
        let nd = self.ndim();
        let fits = shape.len() <= nd
            && shape.iter().enumerate().all(|(i, &d)| {
                let s = self.shape()[i + nd - shape.len()];
                d == s || d == 1
            });
        assert!(
            fits,
            "sum_to: shape {:?} cannot be summed down to {shape:?}",
            self.shape()
        );
        let pad = nd - shape.len();
        let axes: Vec<isize> = (0..nd)
            .filter(|&i| i < pad || (shape[i - pad] == 1 && self.shape()[i] != 1))
            .map(|i| i as isize)
            .collect();
        self.sum(&axes, true).reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, Lcg};
    use crate::shape::{numel, strides};
    use crate::Tensor;
    use proptest::prelude::*;

    /// Naive f64 reference: (sum, max, min, mean, population var) over `axes` with keepdim.
    fn reference(x: &Tensor, axes: &[usize]) -> Vec<[f64; 5]> {
        let shape = x.shape();
        let out_shape: Vec<usize> = (0..shape.len())
            .map(|i| if axes.contains(&i) { 1 } else { shape[i] })
            .collect();
        let out_strides = strides(&out_shape);
        let mut groups: Vec<Vec<f64>> = vec![Vec::new(); numel(&out_shape)];
        let in_strides = strides(shape);
        for (flat, &v) in x.data().iter().enumerate() {
            let mut o = 0;
            for d in 0..shape.len() {
                let i = flat / in_strides[d] % shape[d];
                if !axes.contains(&d) {
                    o += i * out_strides[d];
                }
            }
            groups[o].push(v as f64);
        }
        groups
            .iter()
            .map(|g| {
                let n = g.len() as f64;
                let sum: f64 = g.iter().sum();
                let mean = sum / n;
                let var = g.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                let max = g.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let min = g.iter().cloned().fold(f64::INFINITY, f64::min);
                [sum, max, min, mean, var]
            })
            .collect()
    }

    fn check(x: &Tensor, axes: &[usize]) {
        let want = reference(x, axes);
        let ia: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
        let n: usize = axes.iter().map(|&a| x.shape()[a]).product();
        let col = |k: usize| want.iter().map(|w| w[k]).collect::<Vec<f64>>();
        let tag = format!("{:?} over {axes:?}", x.shape());
        // Sums may cancel: the error bound is relative to the sum of magnitudes (|x| <= 2).
        let abs = 4e-7 * n as f64 + 1e-6;
        assert_close(
            &format!("sum {tag}"),
            x.sum(&ia, true).data(),
            &col(0),
            1e-6,
            abs,
        );
        assert_close(
            &format!("max {tag}"),
            x.max(&ia, true).data(),
            &col(1),
            0.0,
            0.0,
        );
        assert_close(
            &format!("min {tag}"),
            x.min(&ia, true).data(),
            &col(2),
            0.0,
            0.0,
        );
        assert_close(
            &format!("mean {tag}"),
            x.mean(&ia, true).data(),
            &col(3),
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("var {tag}"),
            x.var(&ia, 0, true).data(),
            &col(4),
            1e-5,
            1e-7,
        );
        if n > 1 {
            let unbiased: Vec<f64> = col(4)
                .iter()
                .map(|v| v * n as f64 / (n - 1) as f64)
                .collect();
            assert_close(
                &format!("var1 {tag}"),
                x.var(&ia, 1, true).data(),
                &unbiased,
                1e-5,
                1e-7,
            );
        }
        let dropped: Vec<usize> = (0..x.ndim())
            .filter(|i| !axes.contains(i))
            .map(|i| x.shape()[i])
            .collect();
        assert_eq!(x.sum(&ia, false).shape(), &dropped[..]);
    }

    #[test]
    fn reductions_match_f64_reference() {
        let mut rng = Lcg::new(20);
        let cases: &[(&[usize], &[usize])] = &[
            (&[1], &[0]),
            (&[7], &[0]),
            (&[17], &[]),
            (&[129, 3], &[0]),
            (&[129, 3], &[1]),
            (&[3, 1, 5], &[0, 2]),
            (&[2, 3, 4, 5], &[1]),
            (&[2, 3, 4, 5], &[0, 2]),
            (&[2, 3, 4, 5], &[1, 3]),
            (&[2, 3, 4, 5], &[2, 3]),
            (&[2, 3, 4, 5], &[0, 1, 2, 3]),
            (&[3, 70001], &[1]),
            (&[70001, 3], &[0]),
            (&[5, 2000, 1100], &[1]),
            (&[(1 << 20) + 3], &[0]),
        ];
        for (shape, axes) in cases {
            check(&rng.tensor(shape), axes);
        }
    }

    #[test]
    fn all_reductions_give_scalars() {
        let x = Tensor::arange(1.0, 5.0, 1.0).reshape(&[2, 2]);
        assert_eq!(x.sum_all().shape(), &[] as &[usize]);
        assert_eq!(x.sum_all().item(), 10.0);
        assert_eq!(x.max_all().item(), 4.0);
        assert_eq!(x.min_all().item(), 1.0);
        assert_eq!(x.var_all(0).item(), 1.25);
        assert_eq!(Tensor::scalar(3.0).sum_all().item(), 3.0);
        assert_eq!(Tensor::zeros(&[0, 4]).sum(&[0], false).data(), &[0.0; 4]);
        assert!(Tensor::zeros(&[0]).mean_all().item().is_nan());
    }

    #[test]
    fn nan_propagates_through_max_and_min() {
        let mut x = Tensor::zeros(&[3, 40]);
        x.data_mut()[45] = f32::NAN;
        let m = x.max(&[1], false);
        assert!(
            !m.data()[0].is_nan() && m.data()[1].is_nan(),
            "{:?}",
            m.data()
        );
        assert!(x.min(&[0], false).data()[5].is_nan());
    }

    #[test]
    fn sum_of_16m_values_is_accurate() {
        let n = 1 << 24;
        let mut rng = Lcg::new(21);
        let x = Tensor::from_vec(rng.uniform_vec(n, 0.0, 1.0), &[n]);
        let exact: f64 = x.data().iter().map(|&v| v as f64).sum();
        let got = x.sum_all().item() as f64;
        assert!((got - exact).abs() / exact < 2e-7, "{got} vs {exact}");
    }

    #[test]
    fn reductions_are_bitwise_identical_on_1_and_2_threads() {
        let _guard = super::super::testutil::isa_lock();
        let mut rng = Lcg::new(22);
        let x = rng.tensor(&[3, 1_000_003]);
        let y = rng.tensor(&[700, 3001]);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                vec![
                    x.sum_all(),
                    x.sum(&[1], false),
                    x.var(&[1], 1, false),
                    x.max_all(),
                    y.sum(&[0], false),
                    y.mean(&[1], false),
                    y.var(&[0], 0, false),
                ]
            })
        };
        let (one, two) = (run(1), run(2));
        for (a, b) in one.iter().zip(&two) {
            let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b));
        }
    }

    #[test]
    fn sum_to_undoes_broadcasting() {
        let mut rng = Lcg::new(23);
        let g = rng.tensor(&[4, 3, 5]);
        let s = g.sum_to(&[3, 1]);
        assert_eq!(s.shape(), &[3, 1]);
        assert_close(
            "sum_to",
            s.data(),
            &reference(&g, &[0, 2])
                .iter()
                .map(|w| w[0])
                .collect::<Vec<_>>(),
            1e-6,
            1e-6,
        );
        assert_eq!(g.sum_to(&[4, 3, 5]).data(), g.data());
        assert_eq!(g.sum_to(&[]).shape(), &[] as &[usize]);
    }

    #[test]
    #[should_panic(expected = "max: cannot reduce over an empty axis (shape [2, 0]")]
    fn max_of_empty_axis_panics() {
        Tensor::zeros(&[2, 0]).max(&[1], false);
    }

    #[test]
    #[should_panic(expected = "sum: axis 2 is out of range for a tensor with 2 dimensions")]
    fn sum_rejects_bad_axis() {
        Tensor::zeros(&[2, 3]).sum(&[2], false);
    }

    #[test]
    #[should_panic(expected = "sum_to: shape [4, 3] cannot be summed down to [2]")]
    fn sum_to_rejects_bad_shape() {
        Tensor::zeros(&[4, 3]).sum_to(&[2]);
    }

    proptest! {
        #[test]
        fn sum_over_all_axes_equals_one_by_one(
            shape in prop::collection::vec(1usize..6, 1..5), seed in 0u64..1000
        ) {
            let x = Lcg::new(seed).tensor(&shape);
            let all = x.sum_all().item();
            let mut y = x.clone();
            while y.ndim() > 0 {
                y = y.sum(&[0], false);
            }
            prop_assert!((all - y.item()).abs() <= 1e-5 * (1.0 + all.abs()));
            let axes: Vec<isize> = (0..shape.len() as isize).rev().collect();
            prop_assert_eq!(x.sum(&axes, true).shape().to_vec(), vec![1; shape.len()]);
        }
    }
}
