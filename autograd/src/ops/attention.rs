//! Scaled dot-product attention as one op (fused forward and backward kernels).

use tensor::ops::attention::{
    attention, attention_backward, attention_heads, attention_heads_backward, attention_qkv,
    attention_qkv_backward, HeadLayout,
};
use tensor::Tensor;

use crate::{Backward, Var};

/// `O = softmax(s Q K^T) V` with `s = 1/sqrt(d)`. The backward pass recomputes the attention
/// probabilities from the saved row log-sum-exps instead of keeping them (see
/// [`tensor::ops::attention`] for the derivation), so the op holds `Q`, `K`, `V`, `O` and one
/// value per query row, never an `L_q x L_k` matrix.
struct AttentionRule {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    scale: f32,
    /// `None`: one head per leading index (`[.., L, d]`); `Some((h, layout))`: `h` heads side
    /// by side in the channels (`[B, L, h d]`, or `[B, h d, L]` channels first).
    heads: Option<(usize, HeadLayout)>,
}

impl Backward for AttentionRule {
    fn name(&self) -> &'static str {
        match self.heads {
            None => "scaled_dot_product_attention",
            Some((_, HeadLayout::TokensFirst)) => "multi_head_attention",
            Some((_, HeadLayout::ChannelsFirst)) => "multi_head_attention_channels_first",
        }
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        let (q, k, v, o, lse) = (&self.q, &self.k, &self.v, &self.o, &self.lse);
        let (dq, dk, dv) = match self.heads {
            None => attention_backward(q, k, v, o, lse, g, self.scale),
            Some(heads) => attention_heads_backward(q, k, v, o, lse, g, heads, self.scale),
        };
        vec![Some(dq), Some(dk), Some(dv)]
    }
}

/// Runs the forward kernel for `heads` (see [`AttentionRule::heads`]) and records the op.
fn attend(q: &Var, k: &Var, v: &Var, d: usize, heads: Option<(usize, HeadLayout)>) -> Var {
    let scale = 1.0 / (d as f32).sqrt();
    let (o, lse) = match heads {
        None => attention(q.value(), k.value(), v.value(), scale),
        Some(heads) => attention_heads(q.value(), k.value(), v.value(), heads, scale),
    };
    let rule = AttentionRule {
        q: q.value().clone(),
        k: k.value().clone(),
        v: v.value().clone(),
        o: o.clone(),
        lse,
        scale,
        heads,
    };
    Var::from_op(o, rule, &[q, k, v])
}

/// Scaled dot-product attention (Vaswani et al., 2017):
/// `softmax(Q K^T / sqrt(d)) V` for `q` `[.., L_q, d]`, `k` `[.., L_k, d]`, `v` `[.., L_k, d_v]`
/// with equal leading axes (one head each). Panics if the shapes disagree.
pub fn scaled_dot_product_attention(q: &Var, k: &Var, v: &Var) -> Var {
    let d = *q
        .shape()
        .last()
        .expect("scaled_dot_product_attention: q needs dimensions");
    attend(q, k, v, d, None)
}

/// [`scaled_dot_product_attention`] over `heads` heads that sit side by side in the channels
/// of `q [B, Lq, H d]`, `k [B, Lk, H d]` and `v [B, Lk, H dv]`, as the projections of a
/// multi-head attention layer produce them: the same as splitting the heads out
/// (`[B, H, L, d]`), attending, and merging them back into `[B, Lq, H dv]`, without the copies
/// (see [`tensor::ops::attention::attention_heads`]). Scale `1/sqrt(d)`. Panics if the shapes
/// disagree.
pub fn multi_head_attention(q: &Var, k: &Var, v: &Var, heads: usize) -> Var {
    let c = *q
        .shape()
        .last()
        .expect("multi_head_attention: q needs dimensions");
    attend(
        q,
        k,
        v,
        c / heads.max(1),
        Some((heads, HeadLayout::TokensFirst)),
    )
}

/// [`multi_head_attention`] on channels-first tensors, `q [B, H d, Lq]`, `k [B, H d, Lk]` and
/// `v [B, H dv, Lk]` (an NCHW feature map's pixels as tokens, as 1x1 convolutions produce
/// them), giving `[B, H dv, Lq]`: no transposes to tokens first and back. Scale `1/sqrt(d)`.
/// Panics if the shapes disagree.
pub fn multi_head_attention_channels_first(q: &Var, k: &Var, v: &Var, heads: usize) -> Var {
    let c = *q
        .shape()
        .get(1)
        .expect("multi_head_attention_channels_first: q needs [B, H d, L]");
    attend(
        q,
        k,
        v,
        c / heads.max(1),
        Some((heads, HeadLayout::ChannelsFirst)),
    )
}

/// [`multi_head_attention_qkv`]'s rule: the gradient of the one input, `qkv`, written by the
/// kernels in place.
struct QkvAttentionRule {
    qkv: Tensor,
    o: Tensor,
    lse: Tensor,
    heads: usize,
    scale: f32,
}

impl Backward for QkvAttentionRule {
    fn name(&self) -> &'static str {
        "multi_head_attention_qkv"
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        let d = attention_qkv_backward(&self.qkv, &self.o, &self.lse, g, self.heads, self.scale);
        vec![Some(d)]
    }
}

/// [`multi_head_attention_channels_first`] with the queries, keys and values stacked in the
/// channels of one tensor, `qkv [B, 3 C, L]` (queries `0..C`, keys `C..2C`, values `2C..3C`),
/// as one 1x1 convolution with the three projections stacked produces them; gives
/// `[B, C, L]`. The same values as attending to the three parts, and the gradient of `qkv` in
/// one piece (see [`tensor::ops::attention::attention_qkv`]). Scale `1/sqrt(d)`, `d = C /
/// heads`. Panics if the shape does not fit.
pub fn multi_head_attention_qkv(qkv: &Var, heads: usize) -> Var {
    let c = *qkv
        .shape()
        .get(1)
        .expect("multi_head_attention_qkv: qkv needs [B, 3 C, L]")
        / 3;
    let scale = 1.0 / ((c / heads.max(1)).max(1) as f32).sqrt();
    let (o, lse) = attention_qkv(qkv.value(), heads, scale);
    let rule = QkvAttentionRule {
        qkv: qkv.value().clone(),
        o: o.clone(),
        lse,
        heads,
        scale,
    };
    Var::from_op(o, rule, &[qkv])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;
    use crate::Graph;

    /// Smooth; scores of order 1: default tolerances.
    #[test]
    fn attention_passes_gradcheck() {
        let q = randn(&[2, 3, 4], 1);
        let k = randn(&[2, 5, 4], 2);
        let v = randn(&[2, 5, 6], 3);
        gradcheck(
            |x| scaled_dot_product_attention(&x[0], &x[1], &x[2]),
            &[q, k, v],
            Tolerance::default(),
        )
        .unwrap();
    }

    /// `[o, dq, dk, dv]` of `attend(q, k, v)` with output gradient `g`.
    fn value_and_grads(
        (q, k, v, g): (&Tensor, &Tensor, &Tensor, &Tensor),
        attend: impl Fn(&Var, &Var, &Var) -> Var,
    ) -> [Tensor; 4] {
        let graph = Graph::new();
        let (qv, kv, vv) = (
            graph.leaf(q.clone()),
            graph.leaf(k.clone()),
            graph.leaf(v.clone()),
        );
        let o = attend(&qv, &kv, &vv);
        o.backward_with(g.clone());
        [
            o.value().clone(),
            qv.grad().unwrap(),
            kv.grad().unwrap(),
            vv.grad().unwrap(),
        ]
    }

    /// The fused op agrees with attention composed from a product, a softmax and a product,
    /// in value and in every gradient.
    #[test]
    fn fused_matches_composed_attention() {
        let (q, k, v) = (
            randn(&[3, 2, 9, 8], 4),
            randn(&[3, 2, 11, 8], 5),
            randn(&[3, 2, 11, 5], 6),
        );
        let g = randn(&[3, 2, 9, 5], 7);
        let inputs = (&q, &k, &v, &g);
        let fused = value_and_grads(inputs, scaled_dot_product_attention);
        let composed = value_and_grads(inputs, |q, k, v| {
            q.matmul_t(k, false, true)
                .mul_scalar(1.0 / 8f32.sqrt())
                .softmax()
                .matmul(v)
        });
        for (what, (a, b)) in ["o", "dq", "dk", "dv"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            assert_eq!(a.shape(), b.shape(), "{what}");
            for (x, y) in a.data().iter().zip(b.data()) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{what}: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn multi_head_attention_passes_gradcheck() {
        let q = randn(&[2, 3, 8], 11);
        let k = randn(&[2, 5, 8], 12);
        let v = randn(&[2, 5, 6], 13);
        gradcheck(
            |x| multi_head_attention(&x[0], &x[1], &x[2], 2),
            &[q, k, v],
            Tolerance::default(),
        )
        .unwrap();
    }

    #[test]
    fn multi_head_attention_channels_first_passes_gradcheck() {
        let q = randn(&[2, 8, 3], 14);
        let k = randn(&[2, 8, 5], 15);
        let v = randn(&[2, 6, 5], 16);
        gradcheck(
            |x| multi_head_attention_channels_first(&x[0], &x[1], &x[2], 2),
            &[q, k, v],
            Tolerance::default(),
        )
        .unwrap();
    }

    #[test]
    fn multi_head_attention_qkv_passes_gradcheck() {
        let qkv = randn(&[2, 12, 5], 17);
        gradcheck(
            |x| multi_head_attention_qkv(&x[0], 2),
            &[qkv],
            Tolerance::default(),
        )
        .unwrap();
    }

    /// The same values and gradients, bit for bit, as splitting the heads with permutations.
    #[test]
    fn multi_head_attention_equals_split_heads() {
        let (q, k, v) = (
            randn(&[2, 7, 12], 14),
            randn(&[2, 9, 12], 15),
            randn(&[2, 9, 6], 16),
        );
        let g = randn(&[2, 7, 6], 17);
        let inputs = (&q, &k, &v, &g);
        let fused = value_and_grads(inputs, |q, k, v| multi_head_attention(q, k, v, 3));
        let split = value_and_grads(inputs, |q, k, v| {
            let split = |t: &Var| {
                let s = t.shape().to_vec();
                t.reshape(&[s[0], s[1], 3, s[2] / 3]).permute(&[0, 2, 1, 3])
            };
            scaled_dot_product_attention(&split(q), &split(k), &split(v))
                .permute(&[0, 2, 1, 3])
                .reshape(&[2, 7, 6])
        });
        for (what, (a, b)) in ["o", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&split)) {
            assert_eq!(a.shape(), b.shape(), "{what}");
            assert_eq!(a.data(), b.data(), "{what}");
        }
    }
}
