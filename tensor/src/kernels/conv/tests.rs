use super::reference::{self, TestRng};
use super::*;
use crate::kernels::cpu::with_portable;
use crate::ops::conv as ops;
use crate::ops::conv_parts as parts_ops;
use crate::Tensor;

#[allow(clippy::too_many_arguments)]
fn params(
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
) -> Conv2dParams {
    Conv2dParams {
        batch,
        c_in,
        c_out,
        h,
        w,
        kh,
        kw,
        stride,
        padding,
    }
}

/// Awkward geometries: odd channel counts and sizes, 1x1, 3x3, 5x5, 2x2, 1x3 and 3x1
/// kernels, strides 1 and 2, paddings 0, 1, 2, and images big enough to need several tiles.
fn cases() -> Vec<Conv2dParams> {
    vec![
        params(2, 1, 1, 1, 1, 1, 1, 1, 0),
        params(2, 3, 7, 5, 5, 3, 3, 1, 1),
        params(1, 7, 3, 7, 13, 5, 5, 1, 2),
        params(3, 17, 5, 13, 7, 3, 3, 2, 1),
        params(2, 3, 17, 7, 5, 1, 3, 1, 1),
        params(1, 3, 2, 5, 7, 3, 1, 2, 2),
        params(2, 3, 4, 13, 13, 1, 1, 1, 0),
        params(2, 5, 3, 13, 13, 1, 1, 2, 0),
        params(2, 3, 4, 5, 5, 1, 1, 1, 1),
        params(2, 4, 6, 7, 7, 5, 5, 2, 2),
        params(1, 2, 3, 1, 5, 1, 3, 1, 0),
        params(2, 3, 5, 6, 6, 3, 3, 1, 0),
        params(1, 3, 3, 5, 5, 3, 3, 1, 2),
        params(1, 3, 3, 5, 5, 2, 2, 2, 0),
        params(1, 1, 1, 1, 1, 3, 3, 1, 1),
        params(2, 33, 8, 43, 37, 3, 3, 1, 1),
        params(2, 33, 8, 43, 37, 3, 3, 2, 1),
        // Winograd F(4x4, 3x3) (3x3, stride 1, padding 1, at least 16 channels each way,
        // images at least 4x4): odd sizes (partial tiles, tile counts that are not a
        // multiple of the vector width), a 2-row image (direct), and several chunks of images.
        params(2, 17, 19, 9, 17, 3, 3, 1, 1),
        params(1, 16, 16, 5, 35, 3, 3, 1, 1),
        params(3, 16, 16, 2, 16, 3, 3, 1, 1),
        params(12, 16, 20, 32, 32, 3, 3, 1, 1),
        // The gather's register path (images at most 32 wide): 8x8, 16x16, and widths that
        // leave a partial tile (13, 30) with heights that do too (7, 10).
        params(2, 16, 16, 8, 8, 3, 3, 1, 1),
        params(1, 16, 17, 16, 16, 3, 3, 1, 1),
        params(2, 18, 16, 7, 13, 3, 3, 1, 1),
        params(1, 16, 16, 10, 30, 3, 3, 1, 1),
        // Its groups of tile rows that span images, the last one stopping short: 3 tiles
        // across (5 tile rows to a vector), 2 across (8 to a vector).
        params(3, 16, 16, 9, 12, 3, 3, 1, 1),
        params(5, 16, 16, 6, 6, 3, 3, 1, 1),
        // Input channels a multiple of 32: the direct weight gradient reads its columns in
        // place from the padded image (stride 1 and 2, odd widths, several tiles of rows).
        params(2, 32, 12, 9, 11, 3, 3, 1, 1),
        params(2, 64, 9, 13, 7, 3, 3, 2, 1),
        params(1, 32, 8, 40, 23, 3, 3, 1, 1),
        // Stride 1 with output rows a multiple of 32 wide: the direct forward (and the
        // backward-data through it) reads its columns in place.
        params(1, 3, 5, 6, 32, 5, 5, 1, 2),
        params(2, 3, 9, 4, 64, 1, 3, 1, 1),
    ]
}

/// Asserts `got` matches the f64 reference `want` to within f32 rounding for sums of
/// `terms` products.
fn assert_close(what: &str, p: &Conv2dParams, got: &[f32], want: &[f64], terms: usize) {
    assert_eq!(got.len(), want.len(), "{what} {p:?}: length");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    let tol = 1e-5 * (terms.max(1) as f64).sqrt() * scale;
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what} {p:?}: element {idx}: got {g}, want {w} (tol {tol})"
        );
    }
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

fn data(p: &Conv2dParams, seed: u64) -> Data {
    let mut rng = TestRng::new(seed);
    let size = |s: [usize; 4]| s.iter().product::<usize>();
    Data {
        x: rng.vec(size(p.input_shape())),
        w: rng.vec(size(p.weight_shape())),
        b: rng.vec(p.c_out),
        dy: rng.vec(size(p.output_shape())),
    }
}

/// All three passes of `p`: (y, dx, dw, db).
fn run_all(p: &Conv2dParams, d: &Data) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut y = vec![f32::NAN; d.dy.len()];
    conv2d_forward(p, &d.x, &d.w, Some(&d.b), &mut y);
    let mut dx = vec![f32::NAN; d.x.len()];
    conv2d_backward_data(p, &d.dy, &d.w, &mut dx);
    let mut dw = vec![f32::NAN; d.w.len()];
    let mut db = vec![f32::NAN; p.c_out];
    conv2d_backward_weight(p, &d.x, &d.dy, &mut dw, Some(&mut db));
    (y, dx, dw, db)
}

fn check_against_reference(portable: bool) {
    let _guard = crate::kernels::cpu::test_lock();
    check_cases(portable);
}

/// Every case of [`cases`] against the f64 reference (the caller holds the test lock).
fn check_cases(portable: bool) {
    for (seed, p) in cases().iter().enumerate() {
        let d = data(p, seed as u64 + 1);
        let (y, dx, dw, db) = if portable {
            with_portable(|| run_all(p, &d))
        } else {
            run_all(p, &d)
        };
        let taps = p.kh * p.kw;
        let y_ref = reference::forward(p, &d.x, &d.w, Some(&d.b));
        assert_close("forward", p, &y, &y_ref, p.c_in * taps);
        let dx_ref = reference::backward_data(p, &d.dy, &d.w);
        assert_close("backward_data", p, &dx, &dx_ref, p.c_out * taps);
        let (dw_ref, db_ref) = reference::backward_weight(p, &d.x, &d.dy);
        let pixels = p.batch * p.out_h() * p.out_w();
        assert_close("backward_weight", p, &dw, &dw_ref, pixels);
        assert_close("backward_bias", p, &db, &db_ref, pixels);
    }
}

#[test]
fn conv_matches_reference_simd() {
    check_against_reference(false);
}

#[test]
fn conv_matches_reference_portable() {
    check_against_reference(true);
}

#[test]
fn direct_kernels_match_reference_where_winograd_would_apply() {
    let _guard = crate::kernels::cpu::test_lock();
    let before = super::allow_winograd(false);
    check_cases(false);
    super::allow_winograd(before);
}

#[test]
fn conv_forward_without_bias() {
    let p = params(2, 3, 5, 7, 6, 3, 3, 1, 1);
    let d = data(&p, 99);
    let mut y = vec![f32::NAN; d.dy.len()];
    conv2d_forward(&p, &d.x, &d.w, None, &mut y);
    let y_ref = reference::forward(&p, &d.x, &d.w, None);
    assert_close("forward (no bias)", &p, &y, &y_ref, 27);
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn conv_bitwise_identical_for_1_and_2_threads() {
    let _guard = crate::kernels::cpu::test_lock();
    let cases = [
        // Winograd in two chunks (chunk by chunk on 1 thread, each step in parallel on 2), in
        // four (chunks in parallel on 2 threads, of half as many images there) and in eight
        // (chunks in parallel on both, half-size on 2 threads); the last chunk (shorter in
        // the batch of 15) has its steps in parallel.
        params(16, 16, 24, 20, 20, 3, 3, 1, 1),
        params(16, 128, 16, 16, 16, 3, 3, 1, 1),
        params(15, 128, 16, 16, 16, 3, 3, 1, 1),
        params(16, 64, 64, 32, 32, 3, 3, 1, 1),
        // Winograd in one chunk on 1 thread, split into one chunk per thread on 2 (of 8 and
        // 8 images; of 9 and 8 in the batch of 17).
        params(16, 128, 128, 8, 8, 3, 3, 1, 1),
        params(17, 64, 48, 8, 8, 3, 3, 1, 1),
        params(13, 16, 24, 21, 19, 3, 3, 2, 1),
        params(11, 24, 16, 12, 12, 1, 1, 1, 0),
    ];
    // With the CPU's own kernels, and with the portable ones (the Winograd products then go
    // through the GEMM, whose column count changes with the chunks).
    for portable in [false, true] {
        for (seed, p) in cases.iter().enumerate() {
            let d = data(p, 1000 + seed as u64);
            let run = || {
                if portable {
                    with_portable(|| run_all(p, &d))
                } else {
                    run_all(p, &d)
                }
            };
            let one = in_pool(1, run);
            let two = in_pool(2, run);
            let what = if portable { "portable" } else { "simd" };
            assert_eq!(bits(&one.0), bits(&two.0), "forward {p:?} {what}");
            assert_eq!(bits(&one.1), bits(&two.1), "backward_data {p:?} {what}");
            assert_eq!(bits(&one.2), bits(&two.2), "backward_weight {p:?} {what}");
            assert_eq!(bits(&one.3), bits(&two.3), "backward_bias {p:?} {what}");
        }
    }
}

/// The addends (a shift per image and channel, a residual) added as Winograd writes each tile
/// give the bits of adding them after the convolution, on one thread and on two, where the
/// chunks run in parallel and the last one (of a batch of 15) is shorter, or where a batch
/// of 17 in one chunk is split into chunks of 9 and 8 images.
#[test]
fn addends_in_parallel_chunks_have_the_bits_of_adding_afterwards() {
    let _guard = crate::kernels::cpu::test_lock();
    for p in [
        params(15, 128, 16, 16, 16, 3, 3, 1, 1),
        params(17, 64, 48, 8, 8, 3, 3, 1, 1),
    ] {
        check_addends(&p);
    }
}

/// One case of the test above.
fn check_addends(p: &Conv2dParams) {
    use crate::ops::alloc::as_uninit;
    let p = *p;
    let d = data(&p, 77);
    let shift: Vec<f32> = (0..p.batch * p.c_out)
        .map(|i| (i % 7) as f32 * 0.3 - 1.0)
        .collect();
    let residual: Vec<f32> = d.dy.iter().map(|v| v * 0.5 + 0.25).collect();
    let mut want = vec![0.0f32; d.dy.len()];
    conv2d_forward(&p, &d.x, &d.w, Some(&d.b), &mut want);
    let plane = p.out_h() * p.out_w();
    for (i, y) in want.iter_mut().enumerate() {
        *y = (*y + shift[i / plane]) + residual[i];
    }
    for threads in [1, 2] {
        let mut got = vec![f32::NAN; d.dy.len()];
        in_pool(threads, || {
            let addends = Addends {
                shift: Some(&shift),
                residual: Some(&residual),
            };
            conv2d_forward_uninit_plus(&p, &d.x, &d.w, Some(&d.b), addends, as_uninit(&mut got));
        });
        assert_eq!(bits(&got), bits(&want), "{p:?} on {threads} threads");
    }
}

#[test]
#[should_panic(expected = "conv2d_forward")]
fn conv_forward_panics_on_wrong_weight_length() {
    let p = params(1, 2, 3, 4, 4, 3, 3, 1, 1);
    let x = vec![0.0; 32];
    let w = vec![0.0; 10];
    let mut y = vec![0.0; 48];
    conv2d_forward(&p, &x, &w, None, &mut y);
}

#[test]
fn conv_output_size() {
    let p = params(1, 1, 1, 32, 31, 3, 3, 2, 1);
    assert_eq!((p.out_h(), p.out_w()), (16, 16));
    let p = params(1, 1, 1, 7, 5, 1, 3, 1, 0);
    assert_eq!((p.out_h(), p.out_w()), (7, 3));
}

/// The entries into possibly-uninitialised outputs write every element and give the same bits
/// as the ordinary ones (their buffers start as NaN, which must not survive).
#[test]
fn uninit_outputs_are_fully_written() {
    use std::mem::MaybeUninit;
    let _guard = crate::kernels::cpu::test_lock();
    let written = |v: Vec<MaybeUninit<f32>>| -> Vec<u32> {
        // SAFETY: the tests below check that the kernels wrote every element (each started as
        // an initialised NaN, so reading is defined either way).
        v.into_iter()
            .map(|x| unsafe { x.assume_init() }.to_bits())
            .collect()
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (seed, p) in cases().iter().enumerate() {
        let d = data(p, 500 + seed as u64);
        let (y, dx, _, _) = run_all(p, &d);
        let mut yu = vec![MaybeUninit::new(f32::NAN); y.len()];
        conv2d_forward_uninit(p, &d.x, &d.w, Some(&d.b), &mut yu);
        assert_eq!(written(yu), bits(&y), "forward {p:?}");
        let mut dxu = vec![MaybeUninit::new(f32::NAN); dx.len()];
        conv2d_backward_data_uninit(p, &d.dy, &d.w, &mut dxu);
        assert_eq!(written(dxu), bits(&dx), "backward_data {p:?}");
    }
}

/// Pointwise convolutions with the input given as channel parts:
/// `(batch, part channels, c_out, h, w, bias)`. Batches of 9 and 17 give 5 and 6 chunks of
/// weight-gradient partials; one part has no channels.
type PartsCase = (usize, &'static [usize], usize, usize, usize, bool);
const PARTS_CASES: [PartsCase; 7] = [
    (9, &[6], 5, 4, 3, true),
    (17, &[3, 5], 7, 5, 5, true),
    (9, &[3, 5], 4, 3, 7, false),
    (17, &[4, 1, 2], 6, 4, 4, false),
    (9, &[4, 1, 2], 3, 6, 5, true),
    (3, &[2, 0, 3], 4, 3, 3, true),
    (11, &[16, 8], 16, 12, 12, true),
];

/// The parts, weight, bias and output gradient of a parts case.
fn parts_data(case: PartsCase, seed: u64) -> (Vec<Tensor>, Tensor, Option<Tensor>, Tensor) {
    let (n, channels, c_out, h, w, with_bias) = case;
    let mut rng = TestRng::new(seed);
    let mut tensor = |shape: &[usize]| Tensor::from_vec(rng.vec(shape.iter().product()), shape);
    let parts = channels.iter().map(|&c| tensor(&[n, c, h, w])).collect();
    let weight = tensor(&[c_out, channels.iter().sum(), 1, 1]);
    let bias = tensor(&[c_out]);
    let dy = tensor(&[n, c_out, h, w]);
    (parts, weight, with_bias.then_some(bias), dy)
}

/// The three parts ops: (y, dx per part, dw, db).
type PartsRun = (Tensor, Vec<Tensor>, Tensor, Option<Tensor>);

fn run_parts(parts: &[Tensor], w: &Tensor, b: Option<&Tensor>, dy: &Tensor) -> PartsRun {
    let refs: Vec<&Tensor> = parts.iter().collect();
    let channels: Vec<usize> = parts.iter().map(|t| t.shape()[1]).collect();
    let y = parts_ops::conv2d_pointwise_parts(&refs, w, b);
    let dx = parts_ops::conv2d_pointwise_parts_backward_data(dy, w, &channels);
    let (dw, db) =
        parts_ops::conv2d_pointwise_parts_backward_weight(&refs, dy, w.shape(), b.is_some());
    (y, dx, dw, db)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Forward, backward-data (one tensor per part) and backward-weight of the parts form against
/// the f64 reference convolution of the concatenated input, on the SIMD and portable paths.
#[test]
fn pointwise_parts_match_reference() {
    let _guard = crate::kernels::cpu::test_lock();
    for (seed, &case) in PARTS_CASES.iter().enumerate() {
        let (parts, w, b, dy) = parts_data(case, 2000 + seed as u64);
        let refs: Vec<&Tensor> = parts.iter().collect();
        let x = Tensor::concat(&refs, 1);
        let [n, c, h, wd] = x.shape().try_into().unwrap();
        let p = params(n, c, w.shape()[0], h, wd, 1, 1, 1, 0);
        let bias = b.as_ref().map(|b| b.data());
        let y_ref = reference::forward(&p, x.data(), w.data(), bias);
        let dx_ref = reference::backward_data(&p, dy.data(), w.data());
        let (dw_ref, db_ref) = reference::backward_weight(&p, x.data(), dy.data());
        for portable in [false, true] {
            let run = || run_parts(&parts, &w, b.as_ref(), &dy);
            let (y, dx, dw, db) = if portable { with_portable(run) } else { run() };
            assert_close("parts forward", &p, y.data(), &y_ref, c);
            assert_eq!(dx.len(), parts.len());
            for (dxi, xi) in dx.iter().zip(&parts) {
                assert_eq!(dxi.shape(), xi.shape(), "parts backward_data {p:?}");
            }
            let dx = Tensor::concat(&dx.iter().collect::<Vec<_>>(), 1);
            assert_close("parts backward_data", &p, dx.data(), &dx_ref, p.c_out);
            assert_close("parts backward_weight", &p, dw.data(), &dw_ref, n * h * wd);
            assert_eq!(db.is_some(), b.is_some());
            if let Some(db) = db {
                assert_close("parts backward_bias", &p, db.data(), &db_ref, n * h * wd);
            }
        }
    }
}

/// The parts form gives the same bits on 1 and 2 threads.
#[test]
fn pointwise_parts_bitwise_identical_for_1_and_2_threads() {
    let _guard = crate::kernels::cpu::test_lock();
    for (seed, &case) in PARTS_CASES.iter().enumerate() {
        let (parts, w, b, dy) = parts_data(case, 3000 + seed as u64);
        let one = in_pool(1, || run_parts(&parts, &w, b.as_ref(), &dy));
        let two = in_pool(2, || run_parts(&parts, &w, b.as_ref(), &dy));
        assert_eq!(bits(one.0.data()), bits(two.0.data()), "forward {case:?}");
        for (a, b) in one.1.iter().zip(&two.1) {
            assert_eq!(bits(a.data()), bits(b.data()), "backward_data {case:?}");
        }
        assert_eq!(
            bits(one.2.data()),
            bits(two.2.data()),
            "backward_weight {case:?}"
        );
        let db = |r: &PartsRun| r.3.as_ref().map(|t| bits(t.data()));
        assert_eq!(db(&one), db(&two), "backward_bias {case:?}");
    }
}

/// One part is the plain pointwise convolution: the bits of `conv2d` and its backward passes.
#[test]
fn pointwise_one_part_has_the_bits_of_conv2d() {
    let _guard = crate::kernels::cpu::test_lock();
    let cases: [PartsCase; 4] = [
        (9, &[6], 5, 4, 3, true),
        (9, &[6], 5, 4, 3, false),
        (11, &[24], 16, 12, 12, true),
        (17, &[64], 32, 16, 16, false),
    ];
    for (seed, &case) in cases.iter().enumerate() {
        let (parts, w, b, dy) = parts_data(case, 4000 + seed as u64);
        let x = &parts[0];
        let (y, dx, dw, db) = run_parts(&parts, &w, b.as_ref(), &dy);
        let y_want = ops::conv2d(x, &w, b.as_ref(), 1, 0);
        let dx_want = ops::conv2d_backward_data(&dy, &w, x.shape(), 1, 0);
        let (dw_want, db_want) = ops::conv2d_backward_weight(x, &dy, w.shape(), 1, 0, b.is_some());
        assert_eq!(bits(y.data()), bits(y_want.data()), "forward {case:?}");
        assert_eq!(dx.len(), 1);
        assert_eq!(dx[0].shape(), dx_want.shape());
        assert_eq!(
            bits(dx[0].data()),
            bits(dx_want.data()),
            "backward_data {case:?}"
        );
        assert_eq!(
            bits(dw.data()),
            bits(dw_want.data()),
            "backward_weight {case:?}"
        );
        let db = db.map(|t| bits(t.data()));
        assert_eq!(
            db,
            db_want.map(|t| bits(t.data())),
            "backward_bias {case:?}"
        );
    }
}
