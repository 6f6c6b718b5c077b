//! Layout ops, all materialised into new contiguous tensors: `permute`, `transpose`, `concat`,
//! `split`, `slice` / `slice_step`, and nearest-neighbour 2x upsampling of NCHW images with its
//! adjoint `sum_pool2x`. (`reshape` lives on [`Tensor`] itself and shares storage.)
//!
//! `permute(dims)` gives `out.shape[i] = x.shape[dims[i]]` and
//! `out[i_0, .., i_{n-1}] = x[j]` with `j[dims[k]] = i_k`. Before copying, axes of size 1 are
//! dropped and output axes that stay adjacent in the input are merged, so a permutation is run
//! either as contiguous row copies (when the last axis stays last) or as a batch of 2-D
//! transposes done in tiles (`transpose.rs`), so both reads and writes touch whole cache lines.
//!
//! ```
//! use tensor::Tensor;
//! let x = Tensor::arange(0.0, 6.0, 1.0).reshape(&[2, 3]);
//! assert_eq!(x.transpose(0, 1).data(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
//! let parts = x.split(&[1, 2], 1);
//! assert_eq!(parts[1].data(), &[1.0, 2.0, 4.0, 5.0]);
//! assert_eq!(Tensor::concat(&[&parts[0], &parts[1]], 1).data(), x.data());
//! assert_eq!(x.slice_step(1, 0, 3, 2).data(), &[0.0, 2.0, 3.0, 5.0]);
//! ```

use std::mem::MaybeUninit;

use super::alloc;
use super::par::{self, SendPtr};
use super::transpose::transpose_batched;
use crate::shape::{normalize_axis, numel, strides};
use crate::Tensor;

/// Input offset of each "row" (all merged axes but the ones handled inside a task).
pub(super) struct Walker {
    pub(super) dims: Vec<usize>,
    pub(super) strides: Vec<usize>,
}

impl Walker {
    pub(super) fn offset(&self, mut index: usize) -> usize {
        let mut off = 0;
        for d in (0..self.dims.len()).rev() {
            off += (index % self.dims[d]) * self.strides[d];
            index /= self.dims[d];
        }
        off
    }
}

/// The permuted tensor when the last merged output axis is contiguous in the input: output row
/// `i` (of `len` values) is the input run at `walker.offset(i)`. Rows are grouped into pieces
/// of about a chunk, written once (never zeroed first).
fn copy_rows(src: &[f32], n: usize, len: usize, walker: &Walker) -> Vec<f32> {
    let rows_per_piece = (par::CHUNK / len).max(1);
    let body = |start: usize, piece: &mut [MaybeUninit<f32>]| {
        for (r, row) in piece.chunks_mut(len).enumerate() {
            let o = walker.offset(start / len + r);
            row.write_copy_of_slice(&src[o..o + len]);
        }
    };
    // SAFETY: pieces are whole rows, and every row is copied in full.
    unsafe { alloc::output_uninit_in(n, rows_per_piece * len, body) }
}

fn check_axes_perm(x: &Tensor, dims: &[usize]) {
    let mut seen = vec![false; x.ndim()];
    let ok = dims.len() == x.ndim()
        && dims
            .iter()
            .all(|&d| d < seen.len() && !std::mem::replace(&mut seen[d], true));
    assert!(
        ok,
        "permute: {dims:?} is not a permutation of the axes of shape {:?}",
        x.shape()
    );
}

impl Tensor {
    /// The axes reordered: `out.shape[i] = self.shape[dims[i]]` (see the module docs).
    pub fn permute(&self, dims: &[usize]) -> Tensor {
        let _prof = crate::profile::scope("permute", || format!("{:?} to {dims:?}", self.shape()));
        check_axes_perm(self, dims);
        let shape = self.shape();
        let out_shape: Vec<usize> = dims.iter().map(|&d| shape[d]).collect();
        let in_strides = strides(shape);
        // Merged output axes: (size, input stride), size-1 axes dropped.
        let mut axes: Vec<(usize, usize)> = Vec::new();
        for &d in dims {
            if shape[d] == 1 {
                continue;
            }
            match axes.last_mut() {
                Some(last) if last.1 == in_strides[d] * shape[d] => {
                    *last = (last.0 * shape[d], in_strides[d]);
                }
                _ => axes.push((shape[d], in_strides[d])),
            }
        }
        if axes.len() <= 1 || self.numel() == 0 {
            return self.reshape(&out_shape); // the order of the elements is unchanged
        }
        let n = self.numel();
        let src = self.data();
        let (last, last_stride) = *axes.last().unwrap();
        let out = if last_stride == 1 {
            let outer = &axes[..axes.len() - 1];
            let walker = Walker {
                dims: outer.iter().map(|a| a.0).collect(),
                strides: outer.iter().map(|a| a.1).collect(),
            };
            copy_rows(src, n, last, &walker)
        } else {
            let mut out = alloc::with_capacity(n);
            transpose_batched(src, SendPtr(out.as_mut_ptr()), n, &axes);
            // SAFETY: `transpose_batched` wrote all n elements.
            unsafe { out.set_len(n) };
            out
        };
        Tensor::from_vec(out, &out_shape)
    }

    /// `self` with axes `a` and `b` swapped (negative axes count from the end).
    pub fn transpose(&self, a: isize, b: isize) -> Tensor {
        let a = normalize_axis("transpose", a, self.ndim());
        let b = normalize_axis("transpose", b, self.ndim());
        let mut dims: Vec<usize> = (0..self.ndim()).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    /// The tensors joined along `axis`; all must have the same shape except along `axis`.
    pub fn concat(tensors: &[&Tensor], axis: isize) -> Tensor {
        let _prof = crate::profile::scope("concat", || {
            format!(
                "{:?} axis {axis}",
                tensors.iter().map(|t| t.shape()).collect::<Vec<_>>()
            )
        });
        assert!(!tensors.is_empty(), "concat: no tensors given");
        let first = tensors[0].shape();
        let ax = normalize_axis("concat", axis, first.len());
        for t in tensors {
            let same = t.ndim() == first.len()
                && (0..first.len()).all(|i| i == ax || t.shape()[i] == first[i]);
            assert!(
                same,
                "concat: shapes {first:?} and {:?} differ outside axis {ax}",
                t.shape()
            );
        }
        let outer = numel(&first[..ax]);
        let inner = numel(&first[ax + 1..]);
        let runs: Vec<usize> = tensors.iter().map(|t| t.shape()[ax] * inner).collect();
        let row: usize = runs.iter().sum();
        let mut shape = first.to_vec();
        shape[ax] = tensors.iter().map(|t| t.shape()[ax]).sum();
        if row == 0 {
            return Tensor::zeros(&shape);
        }
        // Whole output rows per piece: each row is the tensors' runs one after another.
        let body = |start: usize, piece: &mut [MaybeUninit<f32>]| {
            for (r, dst) in piece.chunks_mut(row).enumerate() {
                let o = start / row + r;
                let mut at = 0;
                for (t, &run) in tensors.iter().zip(&runs) {
                    dst[at..at + run].write_copy_of_slice(&t.data()[o * run..(o + 1) * run]);
                    at += run;
                }
            }
        };
        let piece = (par::CHUNK / row).max(1) * row;
        // SAFETY: pieces are whole rows, and the runs of each row add up to the row.
        let out = unsafe { alloc::output_uninit_in(outer * row, piece, body) };
        Tensor::from_vec(out, &shape)
    }

    /// Cuts `self` along `axis` into consecutive pieces of the given sizes, which must add up
    /// to the axis's length.
    pub fn split(&self, sizes: &[usize], axis: isize) -> Vec<Tensor> {
        let _prof = crate::profile::scope("split", || {
            format!("{:?} into {sizes:?} axis {axis}", self.shape())
        });
        let ax = normalize_axis("split", axis, self.ndim());
        let ranges = crate::shape::split_ranges(sizes, ax, self.shape());
        ranges
            .into_iter()
            .map(|(start, end)| self.slice(axis, start, end))
            .collect()
    }

    /// The elements with index `start..end` along `axis`.
    pub fn slice(&self, axis: isize, start: usize, end: usize) -> Tensor {
        self.slice_step(axis, start, end, 1)
    }

    /// The elements with index `start, start + step, ...` below `end` along `axis`
    /// (`step >= 1`). Panics if the range does not fit the axis.
    pub fn slice_step(&self, axis: isize, start: usize, end: usize, step: usize) -> Tensor {
        let _prof = crate::profile::scope("slice", || format!("{:?} axis {axis}", self.shape()));
        let ax = normalize_axis("slice", axis, self.ndim());
        let len = self.shape()[ax];
        assert!(
            start <= end && end <= len && step >= 1,
            "slice: range {start}..{end} (step {step}) does not fit axis {ax} of shape {:?}",
            self.shape()
        );
        let count = (end - start).div_ceil(step);
        let mut shape = self.shape().to_vec();
        shape[ax] = count;
        let inner = numel(&self.shape()[ax + 1..]);
        let outer = numel(&self.shape()[..ax]);
        let n = outer * count * inner;
        if n == 0 {
            return Tensor::zeros(&shape);
        }
        let src = &self.data()[start * inner..];
        let out = if step == 1 {
            let walker = Walker {
                dims: vec![outer],
                strides: vec![len * inner],
            };
            copy_rows(src, n, count * inner, &walker)
        } else {
            let walker = Walker {
                dims: vec![outer, count],
                strides: vec![len * inner, step * inner],
            };
            copy_rows(src, n, inner, &walker)
        };
        Tensor::from_vec(out, &shape)
    }

    /// Nearest-neighbour 2x upsampling of an NCHW tensor: `[N, C, H, W] -> [N, C, 2H, 2W]` with
    /// `out[n, c, y, x] = self[n, c, y / 2, x / 2]`.
    pub fn upsample_nearest2x(&self) -> Tensor {
        let _prof =
            crate::profile::scope("upsample_nearest2x", || crate::profile::shape(self.shape()));
        assert_eq!(
            self.ndim(),
            4,
            "upsample_nearest2x: expected NCHW, got shape {:?}",
            self.shape()
        );
        let (n, c, h, w) = (
            self.shape()[0],
            self.shape()[1],
            self.shape()[2],
            self.shape()[3],
        );
        let len = n * c * 4 * h * w;
        if len == 0 {
            return Tensor::zeros(&[n, c, 2 * h, 2 * w]);
        }
        let src = self.data();
        // Pieces of whole input lines, each the two output rows `4 w` values long.
        let body = |start: usize, piece: &mut [MaybeUninit<f32>]| {
            for (i, rows) in piece.chunks_mut(4 * w).enumerate() {
                let r = start / (4 * w) + i;
                let line = &src[r * w..(r + 1) * w];
                let (top, bottom) = rows.split_at_mut(2 * w);
                for (pair, &v) in top.chunks_exact_mut(2).zip(line) {
                    pair[0].write(v);
                    pair[1].write(v);
                }
                for (b, t) in bottom.iter_mut().zip(top.iter()) {
                    // SAFETY: every element of `top` was written just above.
                    b.write(unsafe { t.assume_init() });
                }
            }
        };
        let piece = (par::CHUNK / (4 * w)).max(1) * 4 * w;
        // SAFETY: pieces are whole pairs of output rows, each written in full.
        let out = unsafe { alloc::output_uninit_in(len, piece, body) };
        Tensor::from_vec(out, &[n, c, 2 * h, 2 * w])
    }

    /// The adjoint of [`Tensor::upsample_nearest2x`]: `[N, C, 2H, 2W] -> [N, C, H, W]` with each
    /// output the sum of its 2x2 block. Panics unless the input is NCHW with even H and W.
    pub fn sum_pool2x(&self) -> Tensor {
        let _prof = crate::profile::scope("sum_pool2x", || crate::profile::shape(self.shape()));
        let s = self.shape();
        assert!(
            s.len() == 4 && (s[2] | s[3]) & 1 == 0,
            "sum_pool2x: expected NCHW with even H and W, got shape {s:?}"
        );
        let (n, c, h, w) = (s[0], s[1], s[2] / 2, s[3] / 2);
        let len = n * c * h * w;
        if len == 0 {
            return Tensor::zeros(&[n, c, h, w]);
        }
        let src = self.data();
        // Plane by plane, with the kernel the convolution of an upsampled input sums its
        // gradient with (so the two give the same bits).
        let plane = h * w;
        let body = |start: usize, piece: &mut [MaybeUninit<f32>]| {
            let at = start / plane;
            for (i, out) in piece.chunks_mut(plane).enumerate() {
                let full = &src[(at + i) * 4 * plane..][..4 * plane];
                crate::kernels::conv::sum_pool_plane(full, 2 * w, out);
            }
        };
        let piece = (par::CHUNK / plane).max(1) * plane;
        // SAFETY: pieces are whole output planes, each written in full.
        let out = unsafe { alloc::output_uninit_in(len, piece, body) };
        Tensor::from_vec(out, &[n, c, h, w])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::Lcg;
    use crate::shape::{numel, strides};
    use crate::Tensor;
    use proptest::prelude::*;

    /// Naive permute: every output element from its multi-index.
    fn permute_ref(x: &Tensor, dims: &[usize]) -> Vec<f32> {
        let out_shape: Vec<usize> = dims.iter().map(|&d| x.shape()[d]).collect();
        let (os, is) = (strides(&out_shape), strides(x.shape()));
        (0..x.numel())
            .map(|flat| {
                let src: usize = (0..dims.len())
                    .map(|k| (flat / os[k] % out_shape[k]) * is[dims[k]])
                    .sum();
                x.data()[src]
            })
            .collect()
    }

    #[test]
    fn permute_matches_reference() {
        let mut rng = Lcg::new(30);
        let cases: &[(&[usize], &[usize])] = &[
            (&[7, 17], &[1, 0]),
            (&[129, 65], &[1, 0]),
            (&[1, 5], &[1, 0]),
            (&[3, 4, 5], &[0, 2, 1]),
            (&[3, 4, 5], &[2, 0, 1]),
            (&[3, 4, 5], &[1, 0, 2]),
            (&[2, 3, 4, 5], &[0, 2, 3, 1]),
            (&[2, 3, 4, 5], &[3, 2, 1, 0]),
            (&[2, 1, 4, 1], &[3, 2, 1, 0]),
            (&[0, 3], &[1, 0]),
            (&[600, 700], &[1, 0]),
            (&[3, 530, 9], &[0, 2, 1]),
            // Large enough for non-temporal stores, rows not 16-byte aligned.
            (&[2049, 2050], &[1, 0]),
            (&[4, 64, 32, 33], &[0, 2, 3, 1]),
        ];
        for (shape, dims) in cases {
            let x = rng.tensor(shape);
            let y = x.permute(dims);
            let want: Vec<usize> = dims.iter().map(|&d| shape[d]).collect();
            assert_eq!(y.shape(), &want[..]);
            assert_eq!(y.data(), &permute_ref(&x, dims)[..], "{shape:?} {dims:?}");
        }
    }

    #[test]
    fn slices_concat_and_upsampling() {
        let mut rng = Lcg::new(31);
        let x = rng.tensor(&[3, 10, 4]);
        let s = x.slice_step(1, 1, 10, 3);
        assert_eq!(s.shape(), &[3, 3, 4]);
        for (o, i) in [(0, 0), (2, 1), (1, 2)] {
            let got = &s.data()[(o * 3 + i) * 4..][..4];
            let want = &x.data()[(o * 10 + 1 + 3 * i) * 4..][..4];
            assert_eq!(got, want);
        }
        assert_eq!(x.slice(-1, 2, 2).shape(), &[3, 10, 0]);
        let c = Tensor::concat(&[&x, &x.slice(1, 0, 2)], 1);
        assert_eq!(c.shape(), &[3, 12, 4]);
        assert_eq!(c.slice(1, 10, 12).data(), x.slice(1, 0, 2).data());

        let img = rng.tensor(&[2, 3, 5, 7]);
        let up = img.upsample_nearest2x();
        assert_eq!(up.shape(), &[2, 3, 10, 14]);
        for (n, c, y, xx) in [(0, 0, 0, 0), (1, 2, 9, 13), (1, 1, 4, 7)] {
            let got = up.data()[((n * 3 + c) * 10 + y) * 14 + xx];
            assert_eq!(got, img.data()[((n * 3 + c) * 5 + y / 2) * 7 + xx / 2]);
        }
        let pooled = up.sum_pool2x();
        assert_eq!(pooled.data(), img.mul_scalar(4.0).data());
        let big = rng.tensor(&[2, 64, 64, 64]);
        assert_eq!(
            big.upsample_nearest2x().sum_pool2x().data(),
            big.mul_scalar(4.0).data()
        );
    }

    #[test]
    fn large_transpose_runs_in_parallel_and_matches() {
        let mut rng = Lcg::new(32);
        let x = rng.tensor(&[1000, 1003]);
        let t = x.transpose(0, 1);
        assert_eq!(t.transpose(-1, -2).data(), x.data());
        assert_eq!(t.data()[5 * 1000 + 7], x.data()[7 * 1003 + 5]);
    }

    #[test]
    #[should_panic(expected = "permute: [0, 0] is not a permutation of the axes of shape [2, 3]")]
    fn permute_rejects_repeated_axes() {
        Tensor::zeros(&[2, 3]).permute(&[0, 0]);
    }

    #[test]
    #[should_panic(expected = "concat: shapes [2, 3] and [3, 3] differ outside axis 1")]
    fn concat_rejects_mismatch() {
        Tensor::concat(&[&Tensor::zeros(&[2, 3]), &Tensor::zeros(&[3, 3])], 1);
    }

    #[test]
    #[should_panic(expected = "slice: range 2..5 (step 1) does not fit axis 1 of shape [3, 4]")]
    fn slice_rejects_out_of_range() {
        Tensor::zeros(&[3, 4]).slice(1, 2, 5);
    }

    #[test]
    #[should_panic(expected = "split: sizes [1, 1] do not add up to axis 0 of shape [3]")]
    fn split_rejects_bad_sizes() {
        Tensor::zeros(&[3]).split(&[1, 1], 0);
    }

    fn shape_and_perm() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        prop::collection::vec(0usize..6, 1..5).prop_flat_map(|shape| {
            let n = shape.len();
            (Just(shape), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
    }

    proptest! {
        #[test]
        fn permute_then_inverse_is_identity((shape, perm) in shape_and_perm()) {
            let x = Lcg::new(5).tensor(&shape);
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            let y = x.permute(&perm);
            prop_assert_eq!(y.data(), &permute_ref(&x, &perm)[..]);
            let back = y.permute(&inverse);
            prop_assert_eq!(back.shape(), x.shape());
            prop_assert_eq!(back.data(), x.data());
        }

        #[test]
        fn concat_of_split_is_identity(
            (shape, axis) in prop::collection::vec(1usize..7, 1..4)
                .prop_flat_map(|s| { let n = s.len(); (Just(s), 0..n) }),
            cut in 0usize..7,
        ) {
            let x = Lcg::new(6).tensor(&shape);
            let cut = cut.min(shape[axis]);
            let parts = x.split(&[cut, shape[axis] - cut], axis as isize);
            prop_assert_eq!(parts[0].shape()[axis], cut);
            let joined = Tensor::concat(&[&parts[0], &parts[1]], axis as isize);
            prop_assert_eq!(joined.data(), x.data());
        }

        #[test]
        fn slice_shapes_follow_the_range(
            len in 0usize..20, a in 0usize..20, b in 0usize..20, step in 1usize..5
        ) {
            let (start, end) = (a.min(b).min(len), a.max(b).min(len));
            let x = Tensor::arange(0.0, (2 * len) as f32, 1.0).reshape(&[2, len]);
            let s = x.slice_step(1, start, end, step);
            let want: Vec<f32> = (start..end).step_by(step).map(|i| i as f32).collect();
            prop_assert_eq!(s.shape(), &[2, want.len()]);
            prop_assert_eq!(&s.data()[..want.len()], &want[..]);
            prop_assert_eq!(numel(s.shape()), 2 * want.len());
        }
    }
}
