//! Shape arithmetic: element counts, strides and NumPy broadcasting.

/// The number of elements of a tensor with these dimensions (1 for a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The shape two operands broadcast to under NumPy's rules (align trailing axes; each pair of
/// sizes must be equal or one of them 1), or `None` if they do not broadcast.
pub fn try_broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let ndim = a.len().max(b.len());
    let mut out = vec![0; ndim];
    for i in 0..ndim {
        let da = if i + a.len() >= ndim {
            a[i + a.len() - ndim]
        } else {
            1
        };
        let db = if i + b.len() >= ndim {
            b[i + b.len() - ndim]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// As [`try_broadcast_shapes`], panicking with the op's name and both shapes on a mismatch.
pub fn broadcast_shapes(op: &str, a: &[usize], b: &[usize]) -> Vec<usize> {
    try_broadcast_shapes(a, b)
        .unwrap_or_else(|| panic!("{op}: shapes {a:?} and {b:?} do not broadcast"))
}

/// Normalises an axis that may be negative (counted from the end) against `ndim`, panicking
/// with the op's name if it is out of range.
pub fn normalize_axis(op: &str, axis: isize, ndim: usize) -> usize {
    let resolved = if axis < 0 { axis + ndim as isize } else { axis };
    assert!(
        resolved >= 0 && (resolved as usize) < ndim,
        "{op}: axis {axis} is out of range for a tensor with {ndim} dimensions"
    );
    resolved as usize
}

/// The `start..end` ranges of consecutive pieces of `sizes` along an axis of length `len`,
/// panicking (as `split`, with the shape) unless the sizes add up to the length.
pub fn split_ranges(sizes: &[usize], axis: usize, shape: &[usize]) -> Vec<(usize, usize)> {
    assert_eq!(
        sizes.iter().sum::<usize>(),
        shape[axis],
        "split: sizes {sizes:?} do not add up to axis {axis} of shape {shape:?}"
    );
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            start += s;
            (start - s, start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            try_broadcast_shapes(&[3, 1, 5], &[4, 1]),
            Some(vec![3, 4, 5])
        );
        assert_eq!(try_broadcast_shapes(&[], &[2, 2]), Some(vec![2, 2]));
        assert_eq!(try_broadcast_shapes(&[0, 1], &[1, 3]), Some(vec![0, 3]));
        assert_eq!(try_broadcast_shapes(&[3], &[4]), None);
    }

    #[test]
    fn negative_axes_count_from_the_end() {
        assert_eq!(normalize_axis("t", -1, 3), 2);
        assert_eq!(normalize_axis("t", 0, 3), 0);
    }
}
