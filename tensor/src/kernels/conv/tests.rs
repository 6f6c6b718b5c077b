use super::reference::{self, TestRng};
use super::*;
use crate::kernels::cpu::with_portable;

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
        // Winograd in two chunks (chunk by chunk on 1 thread, each step in parallel on 2) and
        // in four (chunks in parallel on 2 threads).
        params(16, 16, 24, 20, 20, 3, 3, 1, 1),
        params(16, 128, 16, 16, 16, 3, 3, 1, 1),
        params(13, 16, 24, 21, 19, 3, 3, 2, 1),
        params(11, 24, 16, 12, 12, 1, 1, 1, 0),
    ];
    for (seed, p) in cases.iter().enumerate() {
        let d = data(p, 1000 + seed as u64);
        let one = in_pool(1, || run_all(p, &d));
        let two = in_pool(2, || run_all(p, &d));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one.0), bits(&two.0), "forward {p:?}");
        assert_eq!(bits(&one.1), bits(&two.1), "backward_data {p:?}");
        assert_eq!(bits(&one.2), bits(&two.2), "backward_weight {p:?}");
        assert_eq!(bits(&one.3), bits(&two.3), "backward_bias {p:?}");
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
