//! The built-in procedural data set: 32x32 grey images of five simple shapes (disk, square,
//! triangle, ring, plus) at random positions and sizes, drawn near white on a black background
//! with anti-aliased edges. It needs no download, a small UNet learns it in minutes, and its
//! samples are easy to judge by eye.
//!
//! Each shape is drawn from its signed distance `d` (in pixels, negative inside): a pixel's
//! coverage is `clamp(0.5 - d, 0, 1)`, and its value `-1 + (1 + ink) * coverage`, with the
//! shape's brightness `ink` in `[0.7, 1]`. Image `i` of seed `s` depends only on `(s, i)`
//! (generator `Rng::new(s, i)`), so a larger set extends a smaller one with the same seed.

use tensor::rng::Rng;
use tensor::Tensor;

use super::Dataset;

/// Image side in pixels.
pub const SIDE: usize = 32;
/// The class names, in label order.
pub const CLASS_NAMES: [&str; 5] = ["disk", "square", "triangle", "ring", "plus"];
/// The seed of the training split.
pub const TRAIN_SEED: u64 = 0x5348_4150_0001;
/// The seed of the test split.
pub const TEST_SEED: u64 = 0x5348_4150_0002;
/// The number of training images [`super::load`] makes.
pub const TRAIN_LEN: usize = 20_000;
/// The number of test images [`super::load`] makes.
pub const TEST_LEN: usize = 2_000;

/// Smallest and largest half-size (pixels) of a shape's bounding square.
const RADIUS: (f32, f32) = (6.0, 12.0);
/// Range of a shape's brightness.
const INK: (f32, f32) = (0.7, 1.0);

/// `n` images (`[n, 1, 32, 32]` in `[-1, 1]`) with their labels, the same for the same `seed`.
///
/// ```
/// let d = ddpm::data::shapes::shapes(8, 1);
/// assert_eq!(d.images().shape(), &[8, 1, 32, 32]);
/// assert_eq!(d.num_classes(), 5);
/// ```
pub fn shapes(n: usize, seed: u64) -> Dataset {
    let mut pixels = vec![-1.0f32; n * SIDE * SIDE];
    let mut labels = Vec::with_capacity(n);
    for (i, img) in pixels.chunks_exact_mut(SIDE * SIDE).enumerate() {
        let mut rng = Rng::new(seed, i as u64);
        let shape = Shape::random(&mut rng);
        labels.push(shape.class as u8);
        shape.draw(img);
    }
    let images = Tensor::from_vec(pixels, &[n, 1, SIDE, SIDE]);
    Dataset::new("shapes", images, labels, CLASS_NAMES.len())
        .expect("shapes: valid by construction")
}

/// One shape to draw: its class, centre, half-size and brightness.
struct Shape {
    class: usize,
    cx: f32,
    cy: f32,
    r: f32,
    ink: f32,
}

impl Shape {
    /// A shape of a uniformly random class, size and brightness, placed uniformly so that it
    /// lies wholly inside the image with a margin of at least one pixel.
    fn random(rng: &mut Rng) -> Shape {
        let class = rng.below(CLASS_NAMES.len() as u64) as usize;
        let lerp = |rng: &mut Rng, (lo, hi): (f32, f32)| lo + (hi - lo) * rng.next_f32();
        let r = lerp(rng, RADIUS);
        let side = SIDE as f32;
        let cx = lerp(rng, (r + 1.0, side - r - 1.0));
        let cy = lerp(rng, (r + 1.0, side - r - 1.0));
        let ink = lerp(rng, INK);
        Shape {
            class,
            cx,
            cy,
            r,
            ink,
        }
    }

    /// Signed distance (pixels, negative inside) from `(x, y)` to the shape.
    fn distance(&self, x: f32, y: f32) -> f32 {
        let (px, py, r) = (x - self.cx, y - self.cy, self.r);
        match self.class {
            0 => px.hypot(py) - r,
            1 => box_distance(px, py, 0.8 * r, 0.8 * r),
            2 => triangle_distance(px, py, r),
            3 => (px.hypot(py) - 0.775 * r).abs() - 0.225 * r,
            _ => box_distance(px, py, r, 0.25 * r).min(box_distance(px, py, 0.25 * r, r)),
        }
    }

    /// Draws the shape onto a 32x32 image of background `-1`.
    fn draw(&self, img: &mut [f32]) {
        for (y, row) in img.chunks_exact_mut(SIDE).enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                let d = self.distance(x as f32 + 0.5, y as f32 + 0.5);
                let coverage = (0.5 - d).clamp(0.0, 1.0);
                *v = -1.0 + (1.0 + self.ink) * coverage;
            }
        }
    }
}

/// Signed distance to an axis-aligned box of half-sizes `(hx, hy)` centred at the origin.
fn box_distance(px: f32, py: f32, hx: f32, hy: f32) -> f32 {
    let (dx, dy) = (px.abs() - hx, py.abs() - hy);
    dx.max(0.0).hypot(dy.max(0.0)) + dx.max(dy).min(0.0)
}

/// Distance (exact inside and along the edges, a lower bound near the corners outside) to an
/// upward-pointing equilateral triangle with circumradius `r`, shifted down by `r / 4` so that
/// its bounding box is centred on the origin: the largest of the signed distances to its three
/// edge lines.
fn triangle_distance(px: f32, py: f32, r: f32) -> f32 {
    let py = py - 0.25 * r; // image y grows downwards; the apex is at y = -r before the shift
    let (s, c) = (0.866_025_4_f32, 0.5_f32); // sin 60°, cos 60°
    let bottom = py - 0.5 * r;
    let right = s * px - c * py - 0.5 * r;
    let left = -s * px - c * py - 0.5 * r;
    bottom.max(right).max(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_prefix_stable() {
        let a = shapes(40, 3);
        let b = shapes(40, 3);
        assert_eq!(a.images().data(), b.images().data());
        assert_eq!(a.labels(), b.labels());
        let small = shapes(10, 3);
        assert_eq!(small.images().data(), &a.images().data()[..10 * 1024]);
        assert_ne!(shapes(10, 4).images().data(), small.images().data());
    }

    #[test]
    fn values_in_range_and_shapes_inside() {
        let d = shapes(500, 9);
        let data = d.images().data();
        assert!(data.iter().all(|v| (-1.0..=1.0).contains(v)));
        for img in data.chunks_exact(1024) {
            // the border rows and columns stay background
            for k in 0..32 {
                for v in [img[k], img[31 * 32 + k], img[k * 32], img[k * 32 + 31]] {
                    assert_eq!(v, -1.0);
                }
            }
            let bright = img.iter().filter(|&&v| v > 0.3).count();
            assert!(
                bright >= 30,
                "a shape should cover some pixels, found {bright}"
            );
        }
        let mut counts = [0usize; 5];
        for &l in d.labels() {
            counts[l as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    }

    #[test]
    fn classes_differ_in_area() {
        // at the same size a ring covers less than a disk, a plus less than a square
        let area = |class| {
            let s = Shape {
                class,
                cx: 16.0,
                cy: 16.0,
                r: 10.0,
                ink: 1.0,
            };
            let mut img = vec![-1.0; 1024];
            s.draw(&mut img);
            img.iter().map(|v| (v + 1.0) / 2.0).sum::<f32>()
        };
        let (disk, square, tri, ring, plus) = (area(0), area(1), area(2), area(3), area(4));
        assert!((disk - std::f32::consts::PI * 100.0).abs() < 3.0, "{disk}");
        assert!((square - 256.0).abs() < 3.0, "{square}");
        assert!(ring < 0.8 * disk && plus < 0.8 * square, "{ring} {plus}");
        assert!((tri - 0.75 * 3f32.sqrt() * 100.0).abs() < 4.0, "{tri}");
    }
}
