//! How a convolution's input is held: as it is, or at half the resolution, read through
//! nearest-neighbour 2x upsampling (a UNet's `Upsample2D`: upsampling, then a 3x3
//! convolution), so that the upsampled images are never written out; and how its output is
//! stored: as it is, or summed over 2x2 blocks (the adjoint of that upsampling, for the input
//! gradient), so that the full-size gradient is never written out either.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::Conv2dParams;

/// How a convolution's input images are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// As they are, `[batch, c_in, h, w]`.
    Plain,
    /// At half the resolution, `[batch, c_in, h / 2, w / 2]`, read as their nearest-neighbour
    /// 2x upsampling (`x[y][x] = low[y / 2][x / 2]`, a UNet's upsampling before its 3x3
    /// convolution), which is never formed.
    Upsampled2x,
}

impl Source {
    /// The factor from a stored pixel to the convolution's input pixels, along each axis.
    pub(crate) fn scale(self) -> usize {
        match self {
            Source::Plain => 1,
            Source::Upsampled2x => 2,
        }
    }

    /// Values of one stored channel of `p`'s input.
    pub(crate) fn plane(self, p: &Conv2dParams) -> usize {
        let s = self.scale();
        assert!(
            p.h.is_multiple_of(s) && p.w.is_multiple_of(s),
            "conv2d: an upsampled input of {}x{} pixels is not even",
            p.h,
            p.w
        );
        (p.h / s) * (p.w / s)
    }

    /// Panics, naming `op` and the shapes, unless `len` values hold `p`'s input this way.
    pub(crate) fn check_len(self, op: &str, p: &Conv2dParams, len: usize) {
        let want = p.batch * p.c_in * self.plane(p);
        assert_eq!(
            len,
            want,
            "{op}: input has {len} values but {:?} held as {self:?} needs {want}",
            p.input_shape()
        );
    }
}

/// `plane[y][x] = low[y / 2][x / 2]` for the `h x w` plane of `p` (nearest-neighbour 2x
/// upsampling of the `h / 2 x w / 2` channel `low`).
pub(crate) fn upsample_plane(p: &Conv2dParams, low: &[f32], plane: &mut [f32]) {
    let (h, w) = (p.h, p.w);
    assert!(
        low.len() * 4 == h * w && plane.len() == h * w,
        "conv2d: a plane of {} values does not upsample to {h}x{w}",
        low.len()
    );
    for (y, row) in plane.chunks_exact_mut(w).enumerate() {
        let src = &low[(y / 2) * (w / 2)..][..w / 2];
        for (pair, &v) in row.chunks_exact_mut(2).zip(src) {
            pair[0] = v;
            pair[1] = v;
        }
    }
}

/// How a convolution's output is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// As it is, `[batch, c_out, out_h, out_w]`.
    Plain,
    /// Summed over 2x2 blocks, `[batch, c_out, out_h / 2, out_w / 2]` ([`sum_pool_plane`]).
    SumPooled2x,
}

impl Sink {
    /// Values of one stored channel of `h x w` pixels.
    pub(crate) fn plane(self, h: usize, w: usize) -> usize {
        match self {
            Sink::Plain => h * w,
            Sink::SumPooled2x => {
                assert!(
                    h.is_multiple_of(2) && w.is_multiple_of(2),
                    "conv2d: a plane of {h}x{w} pixels does not pool 2x2"
                );
                (h / 2) * (w / 2)
            }
        }
    }
}

/// `out[y][x] = (full[2y][2x] + full[2y][2x + 1]) + (full[2y + 1][2x] + full[2y + 1][2x + 1])`
/// for an `h x w` plane `full` (`h` and `w` even): the adjoint of [`upsample_plane`], with
/// the bits of `Tensor::sum_pool2x`.
pub(crate) fn sum_pool_plane(full: &[f32], w: usize, out: &mut [MaybeUninit<f32>]) {
    assert!(
        w.is_multiple_of(2) && full.len() == out.len() * 4 && (out.is_empty() || w > 0),
        "conv2d: a plane of {} values does not pool 2x2 into {} at width {w}",
        full.len(),
        out.len()
    );
    if out.is_empty() {
        return;
    }
    for (r, line) in out.chunks_mut(w / 2).enumerate() {
        let top = &full[2 * r * w..][..w];
        let bottom = &full[(2 * r + 1) * w..][..w];
        for (x, o) in line.iter_mut().enumerate() {
            o.write((top[2 * x] + top[2 * x + 1]) + (bottom[2 * x] + bottom[2 * x + 1]));
        }
    }
}

/// The upsampled images of `p`'s input held at half the resolution (`low`, `[batch, c_in,
/// h / 2, w / 2]`), formed: for the routes that cannot read them in place.
pub(crate) fn upsampled_images(p: &Conv2dParams, low: &[f32]) -> Vec<f32> {
    let plane = Source::Upsampled2x.plane(p);
    Source::Upsampled2x.check_len("conv2d", p, low.len());
    let mut out = vec![0.0f32; p.batch * p.c_in * p.h * p.w];
    if plane > 0 {
        out.par_chunks_mut(p.h * p.w)
            .zip(low.par_chunks(plane))
            .for_each(|(dst, src)| upsample_plane(p, src, dst));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::reference::TestRng;
    use super::super::{
        conv2d_backward_data, conv2d_backward_data_pooled_uninit, conv2d_backward_weight,
        conv2d_backward_weight_upsampled, conv2d_forward_uninit, conv2d_forward_upsampled_uninit,
    };
    use super::*;
    use crate::kernels::cpu::with_portable;
    use crate::ops::alloc::as_uninit;
    use crate::Tensor;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The upsampled images, value by value.
    #[test]
    fn upsampled_images_repeat_each_pixel_two_by_two() {
        let p = Conv2dParams {
            batch: 2,
            c_in: 3,
            c_out: 1,
            h: 4,
            w: 6,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        };
        let low: Vec<f32> = (0..2 * 3 * 2 * 3).map(|i| i as f32).collect();
        let up = upsampled_images(&p, &low);
        for (i, &v) in up.iter().enumerate() {
            let (plane, y, x) = (i / 24, i % 24 / 6, i % 6);
            assert_eq!(v, low[plane * 6 + y / 2 * 3 + x / 2], "value {i}");
        }
    }

    /// Convolving images held at half the resolution gives the bits of upsampling them first
    /// and convolving, forward and weight gradient (with the bias gradient), and the pooled
    /// input gradient those of `sum_pool2x` after backward-data: through Winograd
    /// with the gather reading the small images in place (up to 32 wide, AVX-512), with the
    /// planes upsampled into scratch (wider, or the portable path), and on a route that forms
    /// the upsampled images (fewer than 16 channels).
    #[test]
    fn upsampled_input_has_the_bits_of_upsampling_first() {
        let _guard = crate::kernels::cpu::test_lock();
        // (batch, c_in, c_out, h, w) of the upsampled images.
        for (batch, c_in, c_out, h, w) in [
            (3, 16, 17, 8, 10),
            (3, 16, 16, 12, 12),
            (2, 16, 16, 16, 16),
            // Backward-data's chunks in parallel on two threads, the last one shorter.
            (15, 16, 128, 16, 16),
            (2, 16, 18, 40, 36),
            (2, 3, 5, 6, 8),
        ] {
            let p = Conv2dParams {
                batch,
                c_in,
                c_out,
                h,
                w,
                kh: 3,
                kw: 3,
                stride: 1,
                padding: 1,
            };
            let mut rng = TestRng::new((h * w + c_in) as u64);
            let low = rng.vec(batch * c_in * h * w / 4);
            let weight = rng.vec(c_out * c_in * 9);
            let bias = rng.vec(c_out);
            let dy = rng.vec(batch * c_out * h * w);
            let run = |upsampled: bool| {
                let formed = upsampled_images(&p, &low);
                let mut y = vec![0.0f32; dy.len()];
                let (mut dw, mut db) = (vec![0.0f32; weight.len()], vec![0.0f32; c_out]);
                let mut dx = vec![0.0f32; low.len()];
                if upsampled {
                    conv2d_forward_upsampled_uninit(
                        &p,
                        &low,
                        &weight,
                        Some(&bias),
                        as_uninit(&mut y),
                    );
                    conv2d_backward_weight_upsampled(&p, &low, &dy, &mut dw, Some(&mut db));
                    conv2d_backward_data_pooled_uninit(&p, &dy, &weight, as_uninit(&mut dx));
                } else {
                    conv2d_forward_uninit(&p, &formed, &weight, Some(&bias), as_uninit(&mut y));
                    conv2d_backward_weight(&p, &formed, &dy, &mut dw, Some(&mut db));
                    let mut full = vec![0.0f32; formed.len()];
                    conv2d_backward_data(&p, &dy, &weight, &mut full);
                    let full = Tensor::from_vec(full, &p.input_shape());
                    dx = full.sum_pool2x().data().to_vec();
                }
                (bits(&y), bits(&dw), bits(&db), bits(&dx))
            };
            for portable in [false, true] {
                let go = |u| {
                    if portable {
                        with_portable(|| run(u))
                    } else {
                        run(u)
                    }
                };
                // On two threads, where the batch of 15 runs its chunks in parallel.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap();
                let (got, want) = pool.install(|| (go(true), go(false)));
                let case = format!("{p:?} portable {portable}");
                assert!(got.0 == want.0, "forward: {case}");
                assert!(got.1 == want.1, "weight gradient: {case}");
                assert!(got.2 == want.2, "bias gradient: {case}");
                assert!(got.3 == want.3, "input gradient: {case}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "held as Upsampled2x needs")]
    fn upsampled_input_of_the_wrong_size_panics() {
        let p = Conv2dParams {
            batch: 1,
            c_in: 16,
            c_out: 16,
            h: 8,
            w: 8,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        };
        let mut y = vec![0.0f32; 16 * 64];
        let (low, weight) = (vec![0.0f32; 16 * 64], vec![0.0f32; 16 * 16 * 9]);
        conv2d_forward_upsampled_uninit(&p, &low, &weight, None, as_uninit(&mut y));
    }
}
