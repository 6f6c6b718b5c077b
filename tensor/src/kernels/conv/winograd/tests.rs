//! The tile transforms on every instruction set the CPU has, against the matrices of the
//! module docs applied in f64.

use super::transforms::{transform_grad_output_on, transform_input_on, transform_output_on};
use crate::kernels::conv::reference::TestRng;
use crate::kernels::cpu::{detected_isa, Isa};

const B_T: [[f64; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const A_T: [[f64; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// `L x R^T` for row-major `x` (`L`: `r x n`, `x`: `n x n`, `R`: `r x n`).
fn sandwich<const R: usize, const N: usize>(l: &[[f64; N]; R], x: &[[f64; N]; N]) -> Vec<f64> {
    let mut out = Vec::with_capacity(R * R);
    for i in 0..R {
        for j in 0..R {
            let mut s = 0.0;
            for a in 0..N {
                for b in 0..N {
                    s += l[i][a] * x[a][b] * l[j][b];
                }
            }
            out.push(s);
        }
    }
    out
}

/// The instruction sets this CPU can run.
fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2Fma, Isa::Avx512]
        .into_iter()
        .filter(|&isa| isa <= detected_isa())
        .collect()
}

/// Runs `transform` on 36 rows of `len` random columns (the first `inputs` rows meaningful) on
/// every instruction set and checks the first `outputs` rows against `want(column values)`.
fn check(
    name: &str,
    inputs: usize,
    outputs: usize,
    transform: fn(Isa, &mut [&mut [f32]], usize),
    want: impl Fn(&[f64]) -> Vec<f64>,
) {
    let len = 48;
    let mut rng = TestRng::new(7);
    let data: Vec<Vec<f32>> = (0..36).map(|_| rng.vec(len)).collect();
    for isa in isas() {
        let mut rows = data.clone();
        let mut refs: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[..]).collect();
        transform(isa, &mut refs, len);
        for c in 0..len {
            let column: Vec<f64> = (0..inputs).map(|r| f64::from(data[r][c])).collect();
            for (r, w) in want(&column).into_iter().enumerate().take(outputs) {
                let got = f64::from(rows[r][c]);
                assert!(
                    (got - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{name} on {}: row {r} column {c}: got {got}, want {w}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn input_transform_is_bt_d_b() {
    check("input", 36, 36, transform_input_on, |d| {
        let d: [[f64; 6]; 6] = std::array::from_fn(|i| std::array::from_fn(|j| d[i * 6 + j]));
        sandwich(&B_T, &d)
    });
}

#[test]
fn output_transform_is_at_m_a() {
    check("output", 36, 16, transform_output_on, |m| {
        let m: [[f64; 6]; 6] = std::array::from_fn(|i| std::array::from_fn(|j| m[i * 6 + j]));
        sandwich(&A_T, &m)
    });
}

#[test]
fn grad_output_transform_is_a_dy_at() {
    // A dY A^T = (A^T)^T dY A^T: sum over a, b of A_T[a][i] dY[a][b] A_T[b][j].
    check("grad_output", 16, 36, transform_grad_output_on, |y| {
        (0..36)
            .map(|xi| {
                let (i, j) = (xi / 6, xi % 6);
                let mut s = 0.0;
                for a in 0..4 {
                    for b in 0..4 {
                        s += A_T[a][i] * y[a * 4 + b] * A_T[b][j];
                    }
                }
                s
            })
            .collect()
    });
}

/// How the forward pass runs a batch (`(whole chunks in parallel, images per chunk)`), for
/// the UNet's shapes at batch 16 and at the edges of each rule.
#[test]
fn parallel_chunks_by_shape_and_threads() {
    use super::parallel_chunks;
    // 64 channels at 32x32 (64 tiles an image, chunks of one image): 16 chunks.
    assert_eq!(parallel_chunks(16, 64, 1, 1), (true, 1));
    assert_eq!(parallel_chunks(16, 64, 1, 2), (true, 1));
    // 128 channels at 16x16 (16 tiles, chunks of 4 images): halved on 2 threads.
    assert_eq!(parallel_chunks(16, 16, 4, 1), (true, 4));
    assert_eq!(parallel_chunks(16, 16, 4, 2), (true, 2));
    // 128 channels at 8x8 (4 tiles, the batch in one chunk): one chunk per thread on 2.
    assert_eq!(parallel_chunks(16, 4, 16, 1), (false, 16));
    assert_eq!(parallel_chunks(16, 4, 16, 2), (true, 8));
    assert_eq!(parallel_chunks(17, 4, 17, 2), (true, 9));
    // Fewer than 32 tiles a thread: one chunk, each step in parallel.
    assert_eq!(parallel_chunks(15, 4, 15, 2), (false, 15));
    assert_eq!(parallel_chunks(16, 4, 16, 3), (false, 16));
    // Two or three chunks on 2 threads: chunk by chunk.
    assert_eq!(parallel_chunks(16, 25, 13, 2), (false, 13));
    assert_eq!(parallel_chunks(16, 16, 6, 2), (false, 6));
}

/// The register gather of a channel of every image at once gives the rows of the portable
/// gather image by image (with the plane upsampled first where the input is held at half the
/// resolution), for the 6x6 patches and the 4x4 blocks, upsampled or not (even sizes), one
/// image or several: every count of permutations per vector (1, 2, 3, 4 and 8: images 4 to
/// 32 wide), tile rows that do not fill a vector, groups that span images and a last group
/// that stops short, sizes that are not a multiple of 4, and a last group that runs past the
/// end of the rows (63 tiles in rows of 64: its store masked). Only where the CPU has the
/// register gather (AVX-512).
#[test]
fn register_gather_matches_the_portable_gather() {
    use super::super::source::upsample_plane;
    use super::layout::{gather, gather_channel, gathers_upsampled, GatherPlan};
    use super::{tiles, Conv2dParams, ROW_ALIGN};

    fn check<const N: usize, const OFF: usize>(p: &Conv2dParams, up: usize, rng: &mut TestRng) {
        let (th, tw) = tiles(p);
        let splane = p.h * p.w / (up * up);
        // Two channels, gathering the second.
        let image_len = 2 * splane;
        let images = rng.vec(p.batch * image_len);
        let cols = p.batch * th * tw;
        let stride = cols.next_multiple_of(ROW_ALIGN);
        let mut fast = vec![0.0f32; N * N * stride];
        let mut slow = vec![0.0f32; N * N * stride];
        let mut rows: Vec<&mut [f32]> = fast.chunks_exact_mut(stride).collect();
        let plan = GatherPlan::new::<N, OFF>(p, up);
        gather_channel::<N, OFF>(p, (&images, image_len, splane), up, &plan, &mut rows);
        let mut rows: Vec<&mut [f32]> = slow.chunks_exact_mut(stride).collect();
        let mut phases = vec![0.0f32; (4 * th + 2) * 4 * (tw + 1)];
        let mut full = vec![0.0f32; p.h * p.w];
        for (n, image) in images.chunks_exact(image_len).enumerate() {
            let x = &image[splane..];
            let x = if up == 2 {
                upsample_plane(p, x, &mut full);
                &full[..]
            } else {
                x
            };
            gather::<N, OFF>(p, x, &mut rows, n * th * tw, &mut phases);
        }
        for (r, (f, s)) in fast
            .chunks_exact(stride)
            .zip(slow.chunks_exact(stride))
            .enumerate()
        {
            assert_eq!(&f[..cols], &s[..cols], "{p:?} up {up}: row {r}");
        }
    }

    let mut rng = TestRng::new(41);
    let cases = [
        (1, 8, 8),
        (5, 8, 8),
        (3, 12, 12),
        (7, 12, 12),
        (2, 16, 16),
        (3, 32, 32),
        (2, 4, 4),
        (2, 9, 10),
        (2, 7, 13),
        (2, 8, 20),
        (2, 5, 17),
        (2, 24, 24),
    ];
    for (batch, h, w) in cases {
        for up in [1, 2] {
            if up == 2 && (h % 2 == 1 || w % 2 == 1) {
                continue;
            }
            let p = Conv2dParams {
                batch,
                c_in: 16,
                c_out: 16,
                h,
                w,
                kh: 3,
                kw: 3,
                stride: 1,
                padding: 1,
            };
            if !gathers_upsampled(&p) {
                return;
            }
            check::<6, 1>(&p, up, &mut rng);
            check::<4, 0>(&p, up, &mut rng);
        }
    }
}
