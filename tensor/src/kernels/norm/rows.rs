//! The rows of group-norm activations: one row of `H * W` values per image and channel,
//! from one tensor or from channel parts whose concatenation is never formed, and the rows of
//! the input gradient the backward pass writes.

use std::mem::MaybeUninit;

use super::check_len;

/// The rows of `[n, c, hw]` values `x` (one per image and channel, in that order). Panics,
/// naming `op`, if `x` does not hold `n * c * hw` values.
pub(super) fn rows_of<'a>(
    op: &str,
    x: &'a [f32],
    (n, c, hw): (usize, usize, usize),
) -> Vec<&'a [f32]> {
    rows_of_parts(op, &[(x, c)], n, hw)
}

/// [`rows_of`] for an output, each row to be overwritten (or added into if `add`).
pub(super) fn out_rows_of(
    out: &mut [MaybeUninit<f32>],
    (n, c, hw): (usize, usize, usize),
    add: bool,
) -> Vec<OutRow<'_>> {
    if hw == 0 {
        return (0..n * c)
            .map(|_| OutRow {
                values: &mut [],
                add,
            })
            .collect();
    }
    out.chunks_exact_mut(hw)
        .map(|values| OutRow { values, add })
        .collect()
}

/// The rows of activations whose channels are held as `parts` (`(values, channels)`, each
/// `[n, channels, hw]`) that concatenate along the channel axis: one row of `hw` values per
/// image and channel, image by image, and within an image part by part. A group may take its
/// channels from two parts; nothing is copied. Panics, naming `op`, if a part's length is not
/// `n * channels * hw`.
pub fn rows_of_parts<'a>(
    op: &str,
    parts: &[(&'a [f32], usize)],
    n: usize,
    hw: usize,
) -> Vec<&'a [f32]> {
    for &(values, channels) in parts {
        check_len(op, "a part", values.len(), n * channels * hw);
    }
    let c: usize = parts.iter().map(|p| p.1).sum();
    let mut rows = Vec::with_capacity(n * c);
    for img in 0..n {
        for &(values, channels) in parts {
            let image = &values[img * channels * hw..][..channels * hw];
            rows.extend((0..channels).map(|ch| &image[ch * hw..][..hw]));
        }
    }
    rows
}

/// [`rows_of_parts`] for gradients (`(values, channels, add)`): each part's rows, overwritten
/// or, where its `add` is set, added into.
pub fn out_rows_of_parts<'a>(
    op: &str,
    parts: Vec<(&'a mut [MaybeUninit<f32>], usize, bool)>,
    n: usize,
    hw: usize,
) -> Vec<OutRow<'a>> {
    let c: usize = parts.iter().map(|p| p.1).sum();
    let mut images = Vec::with_capacity(parts.len());
    for (values, channels, add) in parts {
        check_len(op, "a part's gradient", values.len(), n * channels * hw);
        let rows = out_rows_of(values, (n, channels, hw), add);
        images.push((rows.into_iter(), channels));
    }
    let mut rows = Vec::with_capacity(n * c);
    for _ in 0..n {
        for (part, channels) in images.iter_mut() {
            rows.extend(part.by_ref().take(*channels));
        }
    }
    rows
}

/// One row of `hw` values of an input gradient: overwritten (it may start uninitialised), or
/// if `add` initialised and added into.
pub struct OutRow<'a> {
    /// The row's values.
    pub values: &'a mut [MaybeUninit<f32>],
    /// Whether the row holds a gradient the new one is added to.
    pub add: bool,
}
