//! The [`Tensor`] type: a shape and contiguous row-major f32 storage shared on clone.

use std::fmt;
use std::sync::Arc;

use crate::shape::numel;

/// An n-dimensional f32 tensor.
///
/// Storage is contiguous and row-major (the last axis varies fastest), held in an [`Arc`] so
/// that `clone` is cheap: autograd saves inputs without copying them. Writing through
/// [`Tensor::data_mut`] copies the storage first if another tensor shares it (copy on write).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Vec<f32>>,
}

impl Tensor {
    /// A tensor holding `data` with `shape`. Panics if the lengths disagree.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Tensor {
        assert_eq!(
            data.len(),
            numel(shape),
            "Tensor::from_vec: {} values cannot fill shape {:?}",
            data.len(),
            shape
        );
        Tensor {
            shape: shape.to_vec(),
            data: Arc::new(data),
        }
    }

    /// A tensor of `shape` with every element equal to `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        // Filled chunk by chunk, in parallel when large (a serial fill of a large output would
        // leave the other threads idle before every op that starts from zeros).
        let data = crate::ops::alloc::output(numel(shape), |_, piece| {
            if value != 0.0 {
                piece.fill(value);
            }
        });
        Tensor::from_vec(data, shape)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// A 0-dimensional tensor holding one value.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_vec(vec![value], &[])
    }

    /// The 1-D tensor `start, start + step, ...` with every value below `end` (as NumPy's
    /// `arange`). Panics if `step` is not a finite non-zero number.
    pub fn arange(start: f32, end: f32, step: f32) -> Tensor {
        assert!(
            step.is_finite() && step != 0.0,
            "Tensor::arange: step must be finite and non-zero, got {step}"
        );
        let count = ((end - start) / step).ceil().max(0.0) as usize;
        let data: Vec<f32> = (0..count).map(|i| start + i as f32 * step).collect();
        Tensor::from_vec(data, &[count])
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements in row-major order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// True if another tensor shares this one's storage (so [`Tensor::data_mut`] would copy
    /// it first): in-place ops then write their result to fresh storage instead.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.data) > 1
    }

    /// The elements for writing; copies the storage first if it is shared.
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// The elements as an owned vector (without a copy when the storage is not shared).
    pub fn into_vec(self) -> Vec<f32> {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The only element of a one-element tensor. Panics otherwise.
    pub fn item(&self) -> f32 {
        assert_eq!(
            self.numel(),
            1,
            "Tensor::item: tensor of shape {:?} has {} elements",
            self.shape,
            self.numel()
        );
        self.data[0]
    }

    /// The same elements with a new shape of the same size; one dimension may be `usize::MAX`
    /// meaning "whatever is left" (PyTorch's -1). Shares storage. Panics if the sizes disagree.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        let mut new_shape = shape.to_vec();
        let unknown: Vec<usize> = (0..shape.len())
            .filter(|&i| shape[i] == usize::MAX)
            .collect();
        assert!(
            unknown.len() <= 1,
            "reshape: at most one inferred dimension, got shape {shape:?}"
        );
        if let Some(&i) = unknown.first() {
            let known: usize = shape.iter().filter(|&&d| d != usize::MAX).product();
            assert!(
                known != 0 && self.numel().is_multiple_of(known),
                "reshape: cannot infer a dimension to reshape {:?} into {shape:?}",
                self.shape
            );
            new_shape[i] = self.numel() / known;
        }
        assert_eq!(
            numel(&new_shape),
            self.numel(),
            "reshape: cannot reshape {:?} ({} elements) into {:?}",
            self.shape,
            self.numel(),
            new_shape
        );
        Tensor {
            shape: new_shape,
            data: Arc::clone(&self.data),
        }
    }

    /// True if both tensors hold the same storage (used by tests of sharing).
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        write!(f, "Tensor(shape={:?}, data=[", self.shape)?;
        for (i, v) in self.data.iter().take(SHOWN).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{v}")?;
        }
        if self.numel() > SHOWN {
            write!(f, ", ...")?;
        }
        write!(f, "])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_and_write_copies() {
        let a = Tensor::arange(0.0, 6.0, 1.0).reshape(&[2, 3]);
        let mut b = a.clone();
        assert!(a.shares_storage_with(&b));
        b.data_mut()[0] = 10.0;
        assert!(!a.shares_storage_with(&b));
        assert_eq!(a.data()[0], 0.0);
        assert_eq!(b.data()[0], 10.0);
    }

    #[test]
    fn reshape_infers_one_dimension() {
        let a = Tensor::zeros(&[4, 6]);
        assert_eq!(a.reshape(&[usize::MAX, 3]).shape(), &[8, 3]);
        assert_eq!(a.reshape(&[2, 2, 6]).shape(), &[2, 2, 6]);
    }

    #[test]
    #[should_panic(expected = "reshape: cannot reshape [4, 6]")]
    fn reshape_rejects_wrong_size() {
        Tensor::zeros(&[4, 6]).reshape(&[5, 5]);
    }

    #[test]
    fn arange_matches_numpy() {
        assert_eq!(
            Tensor::arange(0.0, 1.0, 0.25).data(),
            &[0.0, 0.25, 0.5, 0.75]
        );
        assert_eq!(Tensor::arange(3.0, 0.0, -1.0).data(), &[3.0, 2.0, 1.0]);
        assert_eq!(Tensor::arange(0.0, 0.0, 1.0).numel(), 0);
    }
}
