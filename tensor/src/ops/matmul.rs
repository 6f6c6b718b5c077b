//! Matrix products through [`crate::kernels::gemm`]: `matmul` (as `torch.matmul` for operands
//! of two or more dimensions) and `matmul_t`, which multiplies transposed operands without
//! materialising the transposes.
//!
//! `a.matmul_t(&b, transa, transb)` treats the last two axes of each operand as a matrix and the
//! leading axes as batch axes, which broadcast as NumPy does. With `op(X) = X^T` when the flag
//! is set, `op(a)` is `[.., m, k]`, `op(b)` is `[.., k, n]` and the result is `[.., m, n]` with
//! `out[.., i, j] = sum_p op(a)[.., i, p] * op(b)[.., p, j]`. A 2-D right operand under a
//! batched left one (a linear layer) is run as one large GEMM; other batches use
//! `sgemm_batched` (with stride 0 for a shared operand) or, for mixed broadcasts, one GEMM per
//! output matrix. Inner dimensions that disagree panic with both shapes.
//!
//! ```
//! use tensor::Tensor;
//! let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
//! let b = Tensor::from_vec(vec![5.0, 6.0, 7.0, 8.0], &[2, 2]);
//! assert_eq!(a.matmul(&b).data(), &[19.0, 22.0, 43.0, 50.0]);
//! assert_eq!(a.matmul_t(&b, true, false).data(), &[26.0, 30.0, 38.0, 44.0]);
//! ```

use super::alloc;
use crate::kernels::gemm::{sgemm, sgemm_batched, Trans};
use crate::shape::{numel, try_broadcast_shapes};
use crate::Tensor;

/// `op(a) @ op(b)`; the same as [`Tensor::matmul_t`].
pub fn matmul_t(a: &Tensor, b: &Tensor, transa: bool, transb: bool) -> Tensor {
    a.matmul_t(b, transa, transb)
}

/// The flat index into a batch of shape `shape`, broadcast to `out`, of output batch `index`.
fn batch_index(shape: &[usize], out: &[usize], mut index: usize) -> usize {
    let (mut at, mut stride) = (0, 1);
    for d in (0..out.len()).rev() {
        let i = index % out[d];
        index /= out[d];
        if let Some(k) = (d + shape.len()).checked_sub(out.len()) {
            if shape[k] != 1 {
                at += i * stride;
            }
            stride *= shape[k];
        }
    }
    at
}

impl Tensor {
    /// The matrix product `self @ other` with batch broadcasting (see the module docs).
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        self.matmul_t(other, false, false)
    }

    /// `op(self) @ op(other)` where `op` transposes the last two axes when its flag is set.
    pub fn matmul_t(&self, other: &Tensor, transa: bool, transb: bool) -> Tensor {
        let (sa, sb) = (self.shape(), other.shape());
        let _prof = crate::profile::scope("matmul", || {
            let t = |f: bool| if f { "^T" } else { "" };
            format!("{sa:?}{} @ {sb:?}{}", t(transa), t(transb))
        });
        assert!(
            sa.len() >= 2 && sb.len() >= 2,
            "matmul: operands need at least 2 dimensions, got shapes {sa:?} and {sb:?}"
        );
        let (ra, ca) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (rb, cb) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        let (m, k) = if transa { (ca, ra) } else { (ra, ca) };
        let (k2, n) = if transb { (cb, rb) } else { (rb, cb) };
        assert!(
            k == k2,
            "matmul: shapes {sa:?} and {sb:?} (transa {transa}, transb {transb}) have inner \
             dimensions {k} and {k2}"
        );
        let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let batch = try_broadcast_shapes(ba, bb).unwrap_or_else(|| {
            panic!("matmul: batch dimensions of shapes {sa:?} and {sb:?} do not broadcast")
        });
        let count = numel(&batch);
        let mut shape = batch.clone();
        shape.extend([m, n]);
        let mut out = alloc::zeroed(count * m * n);
        if out.is_empty() || k == 0 {
            return Tensor::from_vec(out, &shape); // an empty sum is 0
        }
        super::flops::add(2 * (count * m * n * k) as u64);
        let ta = if transa { Trans::Yes } else { Trans::No };
        let tb = if transb { Trans::Yes } else { Trans::No };
        let (lda, ldb) = (ca, cb);
        let (a, b) = (self.data(), other.data());
        let (na, nb) = (numel(ba), numel(bb));
        if nb == 1 && !transa && na == count {
            // [.., m, k] @ [k, n]: the batch of rows is one (count * m) x k matrix.
            sgemm(
                ta,
                tb,
                count * m,
                n,
                k,
                1.0,
                a,
                lda,
                b,
                ldb,
                0.0,
                &mut out,
                n,
            );
        } else if (na == count || na == 1) && (nb == count || nb == 1) {
            let stride_a = if na == 1 { 0 } else { m * k };
            let stride_b = if nb == 1 { 0 } else { k * n };
            sgemm_batched(
                count,
                ta,
                tb,
                m,
                n,
                k,
                1.0,
                a,
                lda,
                stride_a,
                b,
                ldb,
                stride_b,
                0.0,
                &mut out,
                n,
                m * n,
            );
        } else {
            for (i, c) in out.chunks_mut(m * n).enumerate() {
                let ia = batch_index(ba, &batch, i) * m * k;
                let ib = batch_index(bb, &batch, i) * k * n;
                sgemm(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    1.0,
                    &a[ia..],
                    lda,
                    &b[ib..],
                    ldb,
                    0.0,
                    c,
                    n,
                );
            }
        }
        Tensor::from_vec(out, &shape)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, Lcg};
    use super::batch_index;
    use crate::shape::{numel, try_broadcast_shapes};
    use crate::Tensor;

    /// Naive f64 batched product with explicit transposes and batch broadcasting.
    fn reference(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Vec<f64> {
        let (sa, sb) = (a.shape(), b.shape());
        let (ra, ca) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (rb, cb) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        let (m, k) = if ta { (ca, ra) } else { (ra, ca) };
        let n = if tb { rb } else { cb };
        let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let batch = try_broadcast_shapes(ba, bb).unwrap();
        let mut out = Vec::new();
        for i in 0..numel(&batch) {
            let (oa, ob) = (
                batch_index(ba, &batch, i) * m * k,
                batch_index(bb, &batch, i) * k * n,
            );
            for r in 0..m {
                for c in 0..n {
                    let mut acc = 0.0f64;
                    for p in 0..k {
                        let x = a.data()[oa + if ta { p * m + r } else { r * k + p }] as f64;
                        let y = b.data()[ob + if tb { c * k + p } else { p * n + c }] as f64;
                        acc += x * y;
                    }
                    out.push(acc);
                }
            }
        }
        out
    }

    #[test]
    fn matmul_matches_reference_with_flags_and_batches() {
        let mut rng = Lcg::new(50);
        // (a, b) shapes as stored for transa = transb = false; transposed variants swap the
        // last two axes of the stored operand.
        let cases: &[(&[usize], &[usize])] = &[
            (&[1, 1], &[1, 1]),
            (&[3, 7], &[7, 5]),
            (&[17, 33], &[33, 9]),
            (&[4, 5, 6], &[6, 7]),
            (&[5, 6], &[4, 6, 7]),
            (&[2, 3, 4, 5], &[2, 3, 5, 6]),
            (&[2, 1, 4, 5], &[3, 5, 6]),
            (&[3, 0], &[0, 4]),
            (&[0, 3], &[3, 4]),
        ];
        for (sa, sb) in cases {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let swap = |s: &[usize], t: bool| {
                    let mut s = s.to_vec();
                    let n = s.len();
                    if t {
                        s.swap(n - 2, n - 1);
                    }
                    s
                };
                let a = rng.tensor(&swap(sa, ta));
                let b = rng.tensor(&swap(sb, tb));
                let got = a.matmul_t(&b, ta, tb);
                let want = reference(&a, &b, ta, tb);
                assert_close("matmul", got.data(), &want, 1e-5, 1e-5);
                let (m, n) = (sa[sa.len() - 2], sb[sb.len() - 1]);
                assert_eq!(got.shape()[got.ndim() - 2..], [m, n]);
            }
        }
        let a = rng.tensor(&[2, 3]);
        let b = rng.tensor(&[3, 4]);
        assert_eq!(
            a.matmul(&b).data(),
            super::matmul_t(&a, &b, false, false).data()
        );
    }

    #[test]
    #[should_panic(
        expected = "matmul: shapes [2, 3] and [4, 5] (transa false, transb false) have inner dimensions 3 and 4"
    )]
    fn matmul_rejects_inner_mismatch() {
        Tensor::zeros(&[2, 3]).matmul(&Tensor::zeros(&[4, 5]));
    }

    #[test]
    #[should_panic(
        expected = "matmul: batch dimensions of shapes [2, 3, 4] and [3, 4, 5] do not broadcast"
    )]
    fn matmul_rejects_batch_mismatch() {
        Tensor::zeros(&[2, 3, 4]).matmul(&Tensor::zeros(&[3, 4, 5]));
    }

    #[test]
    #[should_panic(
        expected = "matmul: operands need at least 2 dimensions, got shapes [3] and [3, 4]"
    )]
    fn matmul_rejects_vectors() {
        Tensor::zeros(&[3]).matmul(&Tensor::zeros(&[3, 4]));
    }
}
