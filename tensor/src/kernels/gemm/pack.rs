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
#[cfg(target_arch = "x86_64")]
use crate::kernels::cpu::{self, Isa};

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

/// Writes `dst[p * width + j] = X(p, j)` for `j < w` and zero for `w <= j < width`, for
/// `p < dst.len() / width`, where `X` reads `src` as `walk` says.
fn pack(src: &[f32], ld: usize, walk: Walk, w: usize, width: usize, dst: &mut [f32]) {
    debug_assert!(w >= 1 && w <= width && dst.chunks_exact(width).remainder().is_empty());
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
            let steps = dst.len() / width;
            // Every source element read below lies before this bound.
            assert!((w - 1) * ld + steps <= src.len(), "pack: source too short");
            // A strided gather is a transpose. With AVX, 8 x 8 blocks go through registers;
            // whatever is left (or everything, without AVX) in strips of `STRIP` K steps,
            // so that the strip of `dst` being scattered into stays in L1 while each source
            // line is read contiguously.
            let (j_done, p_done) = transpose_blocks(src, ld, w, width, dst);
            for (s, strip) in dst.chunks_mut(STRIP * width).enumerate() {
                let p0 = s * STRIP;
                let strip_steps = strip.len() / width;
                for j in 0..w {
                    // Columns below j_done are done for steps below p_done.
                    let from = if j < j_done {
                        p_done.clamp(p0, p0 + strip_steps)
                    } else {
                        p0
                    };
                    let line = &src[j * ld + from..j * ld + p0 + strip_steps];
                    let groups = strip[(from - p0) * width..].chunks_exact_mut(width);
                    for (group, &v) in groups.zip(line) {
                        group[j] = v;
                    }
                }
            }
        }
    }
}

/// Does the part of a strided gather (see [`pack`]) that 8 x 8 register transposes can:
/// rows `0 .. j_done` for steps `0 .. p_done`, which it returns. Needs AVX (and the portable
/// path not forced, see [`cpu::force_portable`]) and a panel width that is a multiple of 8;
/// does nothing otherwise.
fn transpose_blocks(
    src: &[f32],
    ld: usize,
    w: usize,
    width: usize,
    dst: &mut [f32],
) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if width & 7 == 0 && cpu::isa() >= Isa::Avx2Fma {
        let (j_done, p_done) = (w / 8 * 8, dst.len() / width / 8 * 8);
        for j in (0..j_done).step_by(8) {
            for p in (0..p_done).step_by(8) {
                // SAFETY: rows j..j+8 < w and steps p..p+8 <= dst.len() / width are inside
                // `src` (asserted by the caller) and inside `dst`; the CPU has AVX.
                unsafe {
                    crate::ops::transpose::x86::transpose_8x8(
                        src.as_ptr().add(j * ld + p),
                        ld,
                        dst.as_mut_ptr().add(p * width + j),
                        width,
                    )
                };
            }
        }
        return (j_done, p_done);
    }
    let _ = (src, ld, w, width, dst);
    (0, 0)
}

/// K steps per strip of a strided gather.
const STRIP: usize = 64;

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

    #[test]
    fn gemm_pack_gather_matches_definition() {
        // Widths 8 and 32 (8 x 8 blocks plus leftovers), partial panels, odd depths.
        for (width, w, steps, ld) in [
            (8, 8, 19, 23),
            (32, 32, 70, 75),
            (32, 13, 9, 10),
            (4, 3, 5, 6),
        ] {
            let src: Vec<f32> = (0..w * ld).map(|x| x as f32).collect();
            let mut dst = vec![f32::NAN; steps * width];
            pack(&src, ld, Walk::Across, w, width, &mut dst);
            for p in 0..steps {
                for j in 0..width {
                    let want = if j < w { src[j * ld + p] } else { 0.0 };
                    assert_eq!(dst[p * width + j], want, "width {width} w {w} p {p} j {j}");
                }
            }
        }
    }
}
