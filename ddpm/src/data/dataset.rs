//! The [`Dataset`] type: labelled images as one `[N, C, H, W]` tensor in `[-1, 1]`, with
//! batching, padding and random horizontal flips.

use tensor::rng::Rng;
use tensor::{Error, Result, Tensor};

/// The value of a background (black, byte 0) pixel once mapped to `[-1, 1]`.
pub const BACKGROUND: f32 = -1.0;

/// Labelled images held in memory.
///
/// `images` is one tensor of shape `[N, C, H, W]` with values in `[-1, 1]` (byte `x` maps to
/// `x / 127.5 - 1`), `labels[i]` is the class of image `i`, and every label is below
/// `num_classes`.
///
/// ```
/// use ddpm::data::Dataset;
/// use tensor::Tensor;
/// let images = Tensor::full(&[2, 1, 28, 28], -1.0);
/// let data = Dataset::new("blank", images, vec![0, 1], 2).unwrap();
/// let padded = data.pad_to(32).unwrap();
/// assert_eq!(padded.images().shape(), &[2, 1, 32, 32]);
/// assert_eq!(padded.batch(&[1]).shape(), &[1, 1, 32, 32]);
/// ```
#[derive(Clone, Debug)]
pub struct Dataset {
    name: String,
    images: Tensor,
    labels: Vec<u8>,
    num_classes: usize,
}

impl Dataset {
    /// A data set from its parts. Fails unless `images` has four axes, there is one label per
    /// image, and every label is below `num_classes`.
    pub fn new(
        name: impl Into<String>,
        images: Tensor,
        labels: Vec<u8>,
        num_classes: usize,
    ) -> Result<Dataset> {
        let name = name.into();
        if images.ndim() != 4 {
            return Err(Error::Invalid(format!(
                "data set `{name}`: expected images of shape [N, C, H, W], found shape {:?}",
                images.shape()
            )));
        }
        if images.shape()[0] != labels.len() {
            return Err(Error::Invalid(format!(
                "data set `{name}`: expected one label per image, found {} images and {} labels",
                images.shape()[0],
                labels.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::from(l) >= num_classes)
        {
            return Err(Error::Invalid(format!(
                "data set `{name}`: expected labels below {num_classes}, found label {l} at index {i}"
            )));
        }
        Ok(Dataset {
            name,
            images,
            labels,
            num_classes,
        })
    }

    /// The data set's name (`shapes`, `fashion-mnist`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All images, `[N, C, H, W]` in `[-1, 1]`.
    pub fn images(&self) -> &Tensor {
        &self.images
    }

    /// All labels, one per image.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The number of classes; every label is below it.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The shape of one image, `[C, H, W]`.
    pub fn image_shape(&self) -> [usize; 3] {
        let s = self.images.shape();
        [s[1], s[2], s[3]]
    }

    /// The images at `indices` (in that order, repeats allowed) as one `[B, C, H, W]` tensor.
    /// Panics if an index is out of range.
    pub fn batch(&self, indices: &[usize]) -> Tensor {
        let [c, h, w] = self.image_shape();
        let size = c * h * w;
        let all = self.images.data();
        let mut out = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            assert!(
                i < self.len(),
                "Dataset::batch: index {i} out of range for `{}` of {} images",
                self.name,
                self.len()
            );
            out.extend_from_slice(&all[i * size..(i + 1) * size]);
        }
        Tensor::from_vec(out, &[indices.len(), c, h, w])
    }

    /// The labels at `indices`, in that order.
    pub fn batch_labels(&self, indices: &[usize]) -> Vec<u8> {
        indices.iter().map(|&i| self.labels[i]).collect()
    }

    /// The first `n` images (all of them if there are fewer), e.g. for a quick evaluation.
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let indices: Vec<usize> = (0..n).collect();
        Dataset {
            name: self.name.clone(),
            images: self.batch(&indices),
            labels: self.labels[..n].to_vec(),
            num_classes: self.num_classes,
        }
    }

    /// The data set with every image padded to `size x size` with the background value `-1`,
    /// centred (28x28 to 32x32 adds 2 pixels on each side; an odd margin puts the extra pixel
    /// on the bottom and right). Images already of that size are returned as they are; fails if
    /// an image is larger than `size` on either axis.
    pub fn pad_to(&self, size: usize) -> Result<Dataset> {
        let [c, h, w] = self.image_shape();
        if h == size && w == size {
            return Ok(self.clone());
        }
        if h > size || w > size {
            return Err(Error::Invalid(format!(
                "data set `{}`: cannot pad {h}x{w} images to {size}x{size}: expected images at \
                 most {size} pixels high and wide",
                self.name
            )));
        }
        let (top, left) = ((size - h) / 2, (size - w) / 2);
        let n = self.len();
        let src = self.images.data();
        let mut out = vec![BACKGROUND; n * c * size * size];
        for plane in 0..n * c {
            let from = &src[plane * h * w..(plane + 1) * h * w];
            let to = &mut out[plane * size * size..(plane + 1) * size * size];
            for y in 0..h {
                let row = (top + y) * size + left;
                to[row..row + w].copy_from_slice(&from[y * w..(y + 1) * w]);
            }
        }
        Ok(Dataset {
            name: self.name.clone(),
            images: Tensor::from_vec(out, &[n, c, size, size]),
            labels: self.labels.clone(),
            num_classes: self.num_classes,
        })
    }
}

/// `batch` (`[B, C, H, W]`) with each image mirrored left to right with probability 1/2. One
/// draw from `rng` per image (its top bit decides), so the result depends only on the
/// generator's state.
pub fn random_hflip(batch: &Tensor, rng: &mut Rng) -> Tensor {
    assert_eq!(
        batch.ndim(),
        4,
        "random_hflip: expected a batch [B, C, H, W], found shape {:?}",
        batch.shape()
    );
    let (b, w) = (batch.shape()[0], batch.shape()[3]);
    let size = batch.numel() / b.max(1);
    let mut out = batch.clone();
    let data = out.data_mut();
    for i in 0..b {
        if rng.next_u32() >> 31 == 1 {
            for row in data[i * size..(i + 1) * size].chunks_exact_mut(w) {
                row.reverse();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize, c: usize, h: usize, w: usize) -> Dataset {
        let data: Vec<f32> = (0..n * c * h * w).map(|v| v as f32).collect();
        let labels = (0..n).map(|i| (i % 3) as u8).collect();
        Dataset::new("numbered", Tensor::from_vec(data, &[n, c, h, w]), labels, 3).unwrap()
    }

    #[test]
    fn batch_gathers_in_order() {
        let d = numbered(4, 2, 2, 3);
        let b = d.batch(&[2, 0, 2]);
        assert_eq!(b.shape(), &[3, 2, 2, 3]);
        assert_eq!(b.data()[0], 24.0);
        assert_eq!(b.data()[12], 0.0);
        assert_eq!(b.data()[24..36], d.images().data()[24..36]);
        assert_eq!(d.batch_labels(&[2, 0]), vec![2, 0]);
    }

    #[test]
    fn new_rejects_bad_parts() {
        let img = Tensor::zeros(&[2, 1, 2, 2]);
        let e = Dataset::new("x", img.clone(), vec![0], 2).unwrap_err();
        assert!(e.to_string().contains("2 images and 1 labels"), "{e}");
        let e = Dataset::new("x", img.clone(), vec![0, 5], 2).unwrap_err();
        assert!(e.to_string().contains("found label 5 at index 1"), "{e}");
        let e = Dataset::new("x", Tensor::zeros(&[2, 4]), vec![0, 1], 2).unwrap_err();
        assert!(e.to_string().contains("[N, C, H, W]"), "{e}");
    }

    #[test]
    fn pad_centres_with_background() {
        let d = numbered(2, 1, 28, 28);
        let p = d.pad_to(32).unwrap();
        assert_eq!(p.images().shape(), &[2, 1, 32, 32]);
        let img = &p.images().data()[1024..2048];
        assert_eq!(img[0], -1.0);
        assert_eq!(img[32 + 31], -1.0);
        assert_eq!(img[2 * 32 + 2], 784.0); // first pixel of image 1
        assert_eq!(img[29 * 32 + 29], 784.0 + 783.0); // its last pixel
        assert_eq!(img[29 * 32 + 30], -1.0);
        assert_eq!(img[30 * 32 + 29], -1.0);
        let inner: usize = img.iter().filter(|&&v| v != -1.0).count();
        assert_eq!(inner, 784);
        assert!(d.pad_to(20).is_err());
        assert_eq!(p.pad_to(32).unwrap().images().data(), p.images().data());
    }

    #[test]
    fn flip_is_deterministic_and_mirrors() {
        let d = numbered(64, 2, 3, 4);
        let all: Vec<usize> = (0..64).collect();
        let batch = d.batch(&all);
        let a = random_hflip(&batch, &mut Rng::new(7, 1));
        let b = random_hflip(&batch, &mut Rng::new(7, 1));
        assert_eq!(a.data(), b.data());
        let (mut flipped, mut kept) = (0, 0);
        for i in 0..64 {
            let src = &batch.data()[i * 24..(i + 1) * 24];
            let got = &a.data()[i * 24..(i + 1) * 24];
            if got == src {
                kept += 1;
            } else {
                flipped += 1;
                for (r, row) in got.chunks(4).enumerate() {
                    let want: Vec<f32> = src[r * 4..r * 4 + 4].iter().rev().copied().collect();
                    assert_eq!(row, &want[..]);
                }
            }
        }
        assert!(flipped > 15 && kept > 15, "flipped {flipped}, kept {kept}");
    }

    #[test]
    fn take_keeps_prefix() {
        let d = numbered(5, 1, 2, 2);
        let t = d.take(2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.images().data(), &d.images().data()[..8]);
        assert_eq!(d.take(99).len(), 5);
    }
}
