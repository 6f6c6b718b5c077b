//! The portable micro-kernel: plain Rust the compiler vectorises for the baseline target.

/// Rows of the tile.
const MR: usize = 4;
/// Columns of the tile.
const NR: usize = 8;

/// The portable 4 x 8 micro-kernel; contract in [`super::MicroKernel`].
///
/// # Safety
/// As for [`super::MicroKernel`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_portable_4x8(
    kc: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    m: usize,
    n: usize,
) {
    // SAFETY: the caller guarantees `kc * MR` packed values of A and `kc * NR` of B.
    let a = unsafe { std::slice::from_raw_parts(a, kc * MR) };
    let b = unsafe { std::slice::from_raw_parts(b, kc * NR) };
    let mut acc = [[0.0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(m) {
        for (j, &x) in row.iter().enumerate().take(n) {
            // SAFETY: (i, j) is inside the m x n tile the caller owns.
            let out = unsafe { &mut *c.add(i * ldc + j) };
            *out = if beta == 0.0 {
                alpha * x
            } else {
                alpha * x + beta * *out
            };
        }
    }
}
