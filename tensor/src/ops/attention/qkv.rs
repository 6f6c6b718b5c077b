//! Multi-head self-attention reading its queries, keys and values from one channels-first
//! tensor `qkv [B, 3 C, L]` (queries in channels `0..C`, keys in `C..2C`, values in
//! `2C..3C`, each split into `H` heads of `d = C / H`), as one 1x1 convolution with the three
//! projections stacked produces them: one product instead of three for the projections, and in
//! the backward pass one gradient `d qkv` written by the kernels in place, so that the input's
//! three gradients need neither separate products nor adding up. The heads are computed as in
//! [`attention_heads`](super::attention_heads), bitwise.

use super::heads::{backward_in, forward_in, HeadLayout, Layout};
use super::Dims;
use crate::kernels::cpu::isa;
use crate::ops::alloc;
use crate::ops::par::SendPtr;
use crate::Tensor;

/// Checks `qkv [B, 3 C, L]` with `heads` dividing `C` and returns the sizes and the layouts of
/// the queries, keys, values and the output `[B, C, L]`.
fn dims_qkv(op: &str, qkv: &Tensor, heads: usize) -> (Dims, usize, [Layout; 4]) {
    let s = qkv.shape();
    assert!(
        heads > 0 && s.len() == 3 && s[1].is_multiple_of(3 * heads) && s[1] > 0 && s[2] > 0,
        "{op}: expected qkv [B, 3 C, L] with {heads} heads dividing C and at least one token, \
         got {s:?}"
    );
    let (batch, c, l) = (s[0], s[1] / 3, s[2]);
    let d = c / heads;
    let dm = Dims {
        n: batch * heads,
        lq: l,
        lk: l,
        d,
        dv: d,
        lanes: 8,
    };
    let at = |offset, total| Layout {
        heads,
        len: l,
        width: d,
        order: HeadLayout::ChannelsFirst,
        offset,
        total,
    };
    (
        dm,
        batch,
        [at(0, 3 * c), at(c, 3 * c), at(2 * c, 3 * c), at(0, c)],
    )
}

/// Attention of the queries to the keys and values held in `qkv [B, 3 C, L]` (see the module
/// docs), `heads` heads: returns `O [B, C, L]` (head `h` in channels `h d .. (h + 1) d`) and the
/// row log-sum-exps `[B, H, L]`. Panics if the shape does not fit.
pub fn attention_qkv(qkv: &Tensor, heads: usize, scale: f32) -> (Tensor, Tensor) {
    let (dm, batch, layouts) = dims_qkv("attention_qkv", qkv, heads);
    let _prof = crate::profile::scope("attention", || {
        format!("qkv {:?} heads {heads}", qkv.shape())
    });
    let data = qkv.data();
    let (o, lse) = forward_in(dm, batch, layouts, (data, data, data), scale, isa());
    (
        Tensor::from_vec(o, &layouts[3].shape(batch)),
        Tensor::from_vec(lse, &[batch, heads, dm.lq]),
    )
}

/// The gradient `d qkv` (`[B, 3 C, L]`) of [`attention_qkv`] given its input, its outputs `o`
/// and `lse`, and the gradient `g` of the loss with respect to `o`. Panics if the shapes
/// disagree.
pub fn attention_qkv_backward(
    qkv: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    heads: usize,
    scale: f32,
) -> Tensor {
    let (dm, batch, layouts) = dims_qkv("attention_qkv_backward", qkv, heads);
    let _prof = crate::profile::scope("attention_backward", || {
        format!("qkv {:?} heads {heads}", qkv.shape())
    });
    let o_shape = layouts[3].shape(batch);
    let lse_shape = [batch, heads, dm.lq];
    assert!(
        o.shape() == o_shape && g.shape() == o_shape && lse.shape() == lse_shape,
        "attention_qkv_backward: expected o and g {o_shape:?} and lse {lse_shape:?}, got o \
         {:?}, g {:?}, lse {:?}",
        o.shape(),
        g.shape(),
        lse.shape()
    );
    let len = qkv.data().len();
    let mut grad = alloc::with_capacity(len);
    let ptr = SendPtr(grad.as_mut_ptr());
    let data = qkv.data();
    let inputs = [data, data, data, o.data(), lse.data(), g.data()];
    backward_in(dm, layouts, inputs, [(&ptr, len); 3], scale, isa());
    // SAFETY: the queries', keys' and values' heads tile the tensor, each written in full.
    unsafe { grad.set_len(len) };
    Tensor::from_vec(grad, qkv.shape())
}

#[cfg(test)]
mod tests {
    use super::super::{attention_heads, attention_heads_backward};
    use super::*;
    use crate::ops::testutil::{on_threads, Lcg};

    /// Bitwise the outputs and gradients of channels-first attention on the three parts, on
    /// one thread and two, with a last block of queries shorter than a vector.
    #[test]
    fn equals_attention_on_the_three_parts_bitwise() {
        let _guard = crate::ops::testutil::isa_lock();
        let mut rng = Lcg::new(13);
        let cf = HeadLayout::ChannelsFirst;
        for (batch, heads, l, d) in [(2, 2, 37, 8), (1, 4, 20, 3)] {
            let c = heads * d;
            let qkv = rng.tensor(&[batch, 3 * c, l]);
            let g = rng.tensor(&[batch, c, l]);
            let part = |i: usize| {
                let mut out = Vec::new();
                for b in 0..batch {
                    let at = (b * 3 * c + i * c) * l;
                    out.extend_from_slice(&qkv.data()[at..at + c * l]);
                }
                Tensor::from_vec(out, &[batch, c, l])
            };
            let (q, k, v) = (part(0), part(1), part(2));
            let (o0, l0) = attention_heads(&q, &k, &v, (heads, cf), 0.4);
            let (dq, dk, dv) = attention_heads_backward(&q, &k, &v, &o0, &l0, &g, (heads, cf), 0.4);
            let mut want = Vec::new();
            for b in 0..batch {
                for t in [&dq, &dk, &dv] {
                    want.extend_from_slice(&t.data()[b * c * l..(b + 1) * c * l]);
                }
            }
            for threads in [1, 2] {
                let (o, lse, dqkv) = on_threads(threads, || {
                    let (o, lse) = attention_qkv(&qkv, heads, 0.4);
                    let dqkv = attention_qkv_backward(&qkv, &o, &lse, &g, heads, 0.4);
                    (o, lse, dqkv)
                });
                assert_eq!(o.data(), o0.data());
                assert_eq!(lse.data(), l0.data());
                assert_eq!(dqkv.shape(), qkv.shape());
                assert_eq!(dqkv.data(), &want[..]);
            }
        }
    }

    #[test]
    #[should_panic(expected = "attention_qkv: expected qkv [B, 3 C, L]")]
    fn channels_not_three_parts_panic_with_the_shape() {
        let x = Tensor::zeros(&[1, 8, 4]);
        let _ = attention_qkv(&x, 2, 1.0);
    }
}
