//! The broadcasting engine behind the binary ops.
//!
//! Both operands are aligned to the output's rank, and adjacent axes are merged when both
//! operands either span them contiguously or repeat over them, so `[N, C, H, W] + [1, C, 1, 1]`
//! becomes `[N, C, H*W]` with strides `[0, 1, 0]` for the per-channel operand. The last merged
//! axis is the inner run: each operand is then either a contiguous run or one value repeated
//! along it, which the 8-lane slice kernels of [`super::par`] handle without per-element index
//! arithmetic. Only the start of each run is found by walking a multi-index.

use super::par::{self, Operand};

/// How to walk the output of a broadcast binary op row by row.
pub(crate) struct Plan {
    /// Merged output dimensions; the last one is the inner run (at least one dimension).
    dims: Vec<usize>,
    /// Strides of each operand over `dims` (0 where it repeats).
    a_strides: Vec<usize>,
    b_strides: Vec<usize>,
}

fn aligned_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - shape.len();
    let mut strides = vec![0; out.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        strides[i + pad] = if shape[i] == 1 { 0 } else { acc };
        acc *= shape[i];
    }
    strides
}

impl Plan {
    /// The plan for operands of shapes `a` and `b` broadcast to `out`.
    pub(crate) fn new(a: &[usize], b: &[usize], out: &[usize]) -> Plan {
        let sa = aligned_strides(a, out);
        let sb = aligned_strides(b, out);
        let mut dims: Vec<usize> = Vec::new();
        let mut a_strides: Vec<usize> = Vec::new();
        let mut b_strides: Vec<usize> = Vec::new();
        for i in 0..out.len() {
            if out[i] == 1 {
                continue;
            }
            if let Some(last) = dims.len().checked_sub(1) {
                // Mergeable if each operand continues its previous axis (contiguous) or
                // repeats over both axes.
                let fits = |s: &[usize], prev: usize| {
                    (s[i] == 0 && prev == 0) || (s[i] != 0 && prev == s[i] * out[i])
                };
                if fits(&sa, a_strides[last]) && fits(&sb, b_strides[last]) {
                    dims[last] *= out[i];
                    a_strides[last] = sa[i];
                    b_strides[last] = sb[i];
                    continue;
                }
            }
            dims.push(out[i]);
            a_strides.push(sa[i]);
            b_strides.push(sb[i]);
        }
        if dims.is_empty() {
            dims.push(1);
            a_strides.push(0);
            b_strides.push(0);
        }
        Plan {
            dims,
            a_strides,
            b_strides,
        }
    }

    fn inner(&self) -> usize {
        *self.dims.last().unwrap()
    }

    /// The operand offsets of the first element of output row `row`, and its multi-index.
    fn row_start(&self, row: usize) -> (Vec<usize>, usize, usize) {
        let nd = self.dims.len();
        let mut idx = vec![0; nd];
        let (mut oa, mut ob) = (0, 0);
        let mut rest = row;
        for d in (0..nd - 1).rev() {
            idx[d] = rest % self.dims[d];
            rest /= self.dims[d];
            oa += idx[d] * self.a_strides[d];
            ob += idx[d] * self.b_strides[d];
        }
        (idx, oa, ob)
    }

    /// Calls `piece(out_start, len, a_offset, b_offset)` for the row pieces of the output
    /// range `start..end`; `a_offset` and `b_offset` locate the operands at `out_start`.
    fn walk(&self, start: usize, end: usize, mut piece: impl FnMut(usize, usize, usize, usize)) {
        let inner = self.inner();
        let (ia, ib) = (
            self.a_strides.last().unwrap(),
            self.b_strides.last().unwrap(),
        );
        let nd = self.dims.len();
        let mut pos = start;
        let (mut idx, mut oa, mut ob) = self.row_start(start / inner);
        let mut col = start % inner;
        while pos < end {
            let len = (inner - col).min(end - pos);
            piece(pos, len, oa + col * ia, ob + col * ib);
            pos += len;
            col = 0;
            // Advance the multi-index of the row (all axes but the inner one).
            for d in (0..nd - 1).rev() {
                idx[d] += 1;
                oa += self.a_strides[d];
                ob += self.b_strides[d];
                if idx[d] < self.dims[d] {
                    break;
                }
                oa -= idx[d] * self.a_strides[d];
                ob -= idx[d] * self.b_strides[d];
                idx[d] = 0;
            }
        }
    }

    fn operand<'s>(data: &'s [f32], offset: usize, len: usize, inner_stride: usize) -> Operand<'s> {
        if inner_stride == 0 {
            Operand::Splat(data[offset])
        } else {
            Operand::Run(&data[offset..offset + len])
        }
    }

    /// `f(a, b)` with broadcasting, as a new buffer of `n` (the output's size) values.
    pub(crate) fn run<F>(&self, a: &[f32], b: &[f32], n: usize, f: F) -> Vec<f32>
    where
        F: Fn(wide::f32x8, wide::f32x8) -> wide::f32x8 + Sync + Send,
    {
        if n == 0 {
            return Vec::new();
        }
        let (ia, ib) = (
            *self.a_strides.last().unwrap(),
            *self.b_strides.last().unwrap(),
        );
        // SAFETY: the walk's pieces cover each output piece exactly, and binary_slice writes
        // every element it is given.
        unsafe {
            super::alloc::output_uninit(n, |start, dst| {
                self.walk(start, start + dst.len(), |pos, len, oa, ob| {
                    let d = &mut dst[pos - start..pos - start + len];
                    let x = Self::operand(a, oa, len, ia);
                    let y = Self::operand(b, ob, len, ib);
                    par::binary_slice(x, y, d, &f);
                });
            })
        }
    }

    /// `out = f(out, b)` with `b` broadcast to `out`'s shape (the plan's `a` is `out`).
    pub(crate) fn run_inplace<F>(&self, out: &mut [f32], b: &[f32], f: F)
    where
        F: Fn(wide::f32x8, wide::f32x8) -> wide::f32x8 + Sync + Send,
    {
        let ib = *self.b_strides.last().unwrap();
        par::for_chunks_mut(out, |start, dst| {
            self.walk(start, start + dst.len(), |pos, len, _, ob| {
                let d = &mut dst[pos - start..pos - start + len];
                par::binary_inplace(d, Self::operand(b, ob, len, ib), &f);
            });
        });
    }
}
