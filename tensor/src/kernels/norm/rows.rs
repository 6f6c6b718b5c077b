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

/// [`rows_of`] for an output, each row to be overwritten or added to as `prior` says (for
/// [`Prior::From`], the values added are `prior`'s, `[n, c, hw]` like `out`).
fn out_rows_of<'a>(
    out: &'a mut [MaybeUninit<f32>],
    (n, c, hw): (usize, usize, usize),
    prior: Prior<'a>,
) -> Vec<OutRow<'a>> {
    if hw == 0 {
        return (0..n * c)
            .map(|_| OutRow {
                values: &mut [],
                prior: Prior::Nothing,
            })
            .collect();
    }
    let rows = out.chunks_exact_mut(hw);
    match prior {
        Prior::From(from) => rows
            .zip(from.chunks_exact(hw))
            .map(|(values, from)| OutRow {
                values,
                prior: Prior::From(from),
            })
            .collect(),
        prior => rows.map(|values| OutRow { values, prior }).collect(),
    }
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

/// [`rows_of_parts`] for gradients (`(values, channels, prior)`): each part's rows,
/// overwritten or added to as its `prior` says. Panics, naming `op`, if a part's gradient (or
/// the values it adds to) does not hold `n * channels * hw` values.
pub fn out_rows_of_parts<'a>(
    op: &str,
    parts: Vec<(&'a mut [MaybeUninit<f32>], usize, Prior<'a>)>,
    n: usize,
    hw: usize,
) -> Vec<OutRow<'a>> {
    let c: usize = parts.iter().map(|p| p.1).sum();
    let mut images = Vec::with_capacity(parts.len());
    for (values, channels, prior) in parts {
        check_len(op, "a part's gradient", values.len(), n * channels * hw);
        if let Prior::From(from) = prior {
            check_len(op, "the gradient added to", from.len(), n * channels * hw);
        }
        let rows = out_rows_of(values, (n, channels, hw), prior);
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

/// One row of `hw` values of an input gradient, written as its `prior` says.
pub struct OutRow<'a> {
    /// The row's values.
    pub values: &'a mut [MaybeUninit<f32>],
    /// What the new gradient is added to.
    pub prior: Prior<'a>,
}

/// What the rows of an input gradient start from.
#[derive(Clone, Copy)]
pub enum Prior<'a> {
    /// Nothing: the rows are overwritten (they may start uninitialised).
    Nothing,
    /// The gradient they hold (initialised), which the new one is added into.
    Held,
    /// Another gradient, held elsewhere (as when its storage is shared): the rows get
    /// its values plus the new gradient (they may start uninitialised).
    From(&'a [f32]),
}
