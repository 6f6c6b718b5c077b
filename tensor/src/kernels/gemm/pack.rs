//! Packing: copying a slice of an operand into the order the micro-kernel reads it.
//!
//! Both operands are packed the same way. A *micro-panel* of width `w` (`MR` for A, `NR` for B)
//! and depth `kc` is stored as `kc` consecutive groups of `w` values: group `p` holds element
//! `p` along K of each of the `w` rows of op(A) (or columns of op(B)). Rows or columns past the
//! edge of the matrix are filled with zeros, so the micro-kernel always runs a full tile and
//! the padding only ever multiplies zeros.
//!
//! Whether the source is read along its rows or across them depends on the operand and its
//! transpose flag:
//!
//! | operand | flag | element `(p, j)` of the micro-panel | source walk |
//! |---------|------|--------------------------------------|-------------|
//! | A       | No   | `a[(i0 + j) * lda + p0 + p]`         | across (gather) |
//! | A       | Yes  | `a[(p0 + p) * lda + i0 + j]`         | along (copy) |
//! | B       | No   | `b[(p0 + p) * ldb + j0 + j]`         | along (copy) |
//! | B       | Yes  | `b[(j0 + j) * ldb + p0 + p]`         | across (gather) |

use super::Trans;

/// How the `w` values of one K step lie in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// Contiguous: element `(p, j)` is `src[p * ld + j]`.
    Along,
    /// Strided: element `(p, j)` is `src[j * ld + p]`.
    Across,
}

/// Packs the micro-panel of op(A) holding rows `i0 .. i0 + rows` and K range
/// `p0 .. p0 + dst.len() / mr` into `dst` (zero-padding rows `rows .. mr`).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_a(
    transa: Trans,
    a: &[f32],
    lda: usize,
    i0: usize,
    rows: usize,
    p0: usize,
    mr: usize,
    dst: &mut [f32],
) {
    match transa {
        Trans::No => pack(&a[i0 * lda + p0..], lda, Walk::Across, rows, mr, dst),
        Trans::Yes => pack(&a[p0 * lda + i0..], lda, Walk::Along, rows, mr, dst),
    }
}

/// Packs the micro-panel of op(B) holding columns `j0 .. j0 + cols` and K range
/// `p0 .. p0 + dst.len() / nr` into `dst` (zero-padding columns `cols .. nr`).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b(
    transb: Trans,
    b: &[f32],
    ldb: usize,
    j0: usize,
    cols: usize,
    p0: usize,
    nr: usize,
    dst: &mut [f32],
) {
    match transb {
        Trans::No => pack(&b[p0 * ldb + j0..], ldb, Walk::Along, cols, nr, dst),
        Trans::Yes => pack(&b[j0 * ldb + p0..], ldb, Walk::Across, cols, nr, dst),
    }
}

/// Writes `dst[p * width + j] = X(p, j)` for `j < w` and zero for `w <= j < width`, where
/// `kc = dst.len() / width` and `X` reads `src` as `walk` says.
fn pack(src: &[f32], ld: usize, walk: Walk, w: usize, width: usize, dst: &mut [f32]) {
    debug_assert!(w >= 1 && w <= width && dst.len() % width == 0);
    let kc = dst.len() / width;
    match walk {
        Walk::Along => {
            for (p, group) in dst.chunks_exact_mut(width).enumerate() {
                group[..w].copy_from_slice(&src[p * ld..p * ld + w]);
                group[w..].fill(0.0);
            }
        }
        Walk::Across => {
            if w < width {
                for group in dst.chunks_exact_mut(width) {
                    group[w..].fill(0.0);
                }
            }
            // Read each source line contiguously; the scattered writes land in `dst`, which is
            // small enough to sit in L1.
            for j in 0..w {
                let line = &src[j * ld..j * ld + kc];
                for (group, &v) in dst.chunks_exact_mut(width).zip(line) {
                    group[j] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_pack_layouts_and_padding() {
        // A is 3 x 4 (row-major, lda 5): A[i][p] = 10 i + p.
        let a: Vec<f32> = (0..15).map(|x| (10 * (x / 5) + x % 5) as f32).collect();
        let mut dst = vec![f32::NAN; 2 * 4];
        pack_a(Trans::No, &a, 5, 1, 2, 1, 4, &mut dst);
        assert_eq!(dst, [11.0, 21.0, 0.0, 0.0, 12.0, 22.0, 0.0, 0.0]);
        // The same A stored transposed (4 x 3, lda 3): At[p][i] = 10 i + p.
        let at: Vec<f32> = (0..12).map(|x| (10 * (x % 3) + x / 3) as f32).collect();
        let mut dst2 = vec![f32::NAN; 2 * 4];
        pack_a(Trans::Yes, &at, 3, 1, 2, 1, 4, &mut dst2);
        assert_eq!(dst, dst2);
        // B = A viewed as op(B) (k x n) stored transposed is the same gather.
        let mut dst3 = vec![f32::NAN; 2 * 4];
        pack_b(Trans::No, &at, 3, 1, 2, 1, 4, &mut dst3);
        assert_eq!(dst, dst3);
    }
}
