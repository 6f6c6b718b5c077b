//! Linear layers and multi-head self-attention.

use tensor::rng::Rng;

use super::init::uniform_fan_in;
use super::{Ctx, Module, ParamStore};
use crate::ops::attention::{multi_head_attention, multi_head_attention_qkv};
use crate::ops::conv::conv2d_pointwise_stacked;
use crate::{Param, Var};

/// `y = x W^T + b` over the last axis of `x`, with `W` `[out, in]` (PyTorch's `nn.Linear`).
pub struct Linear {
    /// `[out, in]`.
    pub weight: Param,
    /// `[out]`.
    pub bias: Option<Param>,
}

impl Linear {
    /// Registers `weight` (and `bias`) under `store`, initialised as PyTorch does.
    pub fn new(store: &ParamStore, rng: &mut Rng, d_in: usize, d_out: usize, bias: bool) -> Linear {
        let weight = store.param("weight", uniform_fan_in(rng, &[d_out, d_in], d_in));
        let bias = bias.then(|| store.param("bias", uniform_fan_in(rng, &[d_out], d_in)));
        Linear { weight, bias }
    }
}

impl Linear {
    /// The same map applied to every pixel of an image `x [B, in, H, W]`, giving
    /// `[B, out, H, W]`: a 1x1 convolution with the weight viewed as `[out, in, 1, 1]` and the
    /// bias added inside it (no transposes of the image to channels last and back).
    pub fn forward_pixels(&self, ctx: &mut Ctx, x: &Var) -> Var {
        stacked_pixels(ctx, &[self], x)
    }
}

impl Module for Linear {
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        let y = x.matmul_t(&ctx.param(&self.weight), false, true);
        match &self.bias {
            Some(b) => y.add(&ctx.param(b)),
            None => y,
        }
    }
}

/// The linear `layers` (all with a bias or none) applied to every pixel of `x`, their outputs
/// stacked along the channels: one 1x1 convolution with their weights stacked, each weight and
/// bias still an input of the op (so their gradients may be deferred, see `crate::deferred`).
fn stacked_pixels(ctx: &mut Ctx, layers: &[&Linear], x: &Var) -> Var {
    let with_bias = layers.iter().filter(|l| l.bias.is_some()).count();
    assert!(
        with_bias == 0 || with_bias == layers.len(),
        "stacked linear layers must all have a bias or none"
    );
    let weights: Vec<Var> = layers.iter().map(|l| ctx.param(&l.weight)).collect();
    let biases: Option<Vec<Var>> = layers
        .iter()
        .map(|l| l.bias.as_ref().map(|b| ctx.param(b)))
        .collect();
    let weights: Vec<&Var> = weights.iter().collect();
    let biases: Option<Vec<&Var>> = biases.as_ref().map(|b| b.iter().collect());
    conv2d_pointwise_stacked(x, &weights, biases.as_deref())
}

/// Multi-head self-attention over a sequence `[B, L, C]`: projections `to_q`, `to_k`, `to_v`
/// (`[C, C]`), `heads` heads of `C / heads` channels each attending (with
/// [`multi_head_attention`], which leaves the heads side by side in the channels), and the
/// output projection `to_out.0` (the names of
/// diffusers' `Attention`).
pub struct SelfAttention {
    /// Query projection.
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection.
    pub to_out: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl SelfAttention {
    /// Registers the four projections under `store`. Panics unless `heads` divides `channels`.
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        channels: usize,
        heads: usize,
        bias: bool,
    ) -> SelfAttention {
        assert!(
            heads > 0 && channels.is_multiple_of(heads),
            "SelfAttention: {heads} heads do not divide {channels} channels"
        );
        SelfAttention {
            to_q: Linear::new(&store.sub("to_q"), rng, channels, channels, bias),
            to_k: Linear::new(&store.sub("to_k"), rng, channels, channels, bias),
            to_v: Linear::new(&store.sub("to_v"), rng, channels, channels, bias),
            to_out: Linear::new(&store.sub("to_out").sub(0), rng, channels, channels, true),
            heads,
        }
    }
}

impl Module for SelfAttention {
    fn forward(&self, ctx: &mut Ctx, x: &Var) -> Var {
        assert!(
            x.shape().len() == 3,
            "SelfAttention: expected [B, L, C], got {:?}",
            x.shape()
        );
        // The heads stay side by side in the projections' channels: [B, L, H d].
        let q = self.to_q.forward(ctx, x);
        let k = self.to_k.forward(ctx, x);
        let v = self.to_v.forward(ctx, x);
        let o = multi_head_attention(&q, &k, &v, self.heads);
        self.to_out.forward(ctx, &o)
    }
}

impl SelfAttention {
    /// The same attention over the pixels of an image `x [B, C, H, W]` as tokens, giving
    /// `[B, C, H, W]`: equal to flattening the pixels into a sequence `[B, H W, C]`, running
    /// [`Module::forward`] and turning the result back (up to rounding). The three input
    /// projections are one 1x1 convolution with their weights stacked, the heads are read
    /// channels first from its output ([`multi_head_attention_qkv`]) and the output
    /// projection is another 1x1 convolution, so the image is never transposed.
    pub fn forward_pixels(&self, ctx: &mut Ctx, x: &Var) -> Var {
        let (n, c, h, w) = match *x.shape() {
            [n, c, h, w] => (n, c, h, w),
            ref other => {
                panic!("SelfAttention::forward_pixels: expected [N, C, H, W], got {other:?}")
            }
        };
        let parts = [&self.to_q, &self.to_k, &self.to_v];
        let with_bias = parts.iter().filter(|p| p.bias.is_some()).count();
        assert!(
            with_bias == 0 || with_bias == 3,
            "SelfAttention::forward_pixels: to_q, to_k and to_v must all have a bias or none"
        );
        let qkv = stacked_pixels(ctx, &parts, x);
        let o = multi_head_attention_qkv(&qkv.reshape(&[n, 3 * c, h * w]), self.heads);
        self.to_out.forward_pixels(ctx, &o.reshape(&[n, c, h, w]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;
    use tensor::Tensor;

    #[test]
    fn linear_matches_its_definition() {
        let store = ParamStore::new();
        let layer = Linear::new(&store, &mut Rng::new(1, 0), 3, 2, true);
        layer.weight.set_value(Tensor::from_vec(
            vec![1.0, 2.0, 3.0, -1.0, 0.0, 1.0],
            &[2, 3],
        ));
        layer
            .bias
            .as_ref()
            .unwrap()
            .set_value(Tensor::from_vec(vec![0.5, -0.5], &[2]));
        let y = layer.forward(
            &mut Ctx::eval(),
            &Var::constant(Tensor::from_vec(vec![1.0, 1.0, 2.0], &[1, 3])),
        );
        assert_eq!(y.value().data(), &[9.5, 0.5]);
    }

    /// Self-attention as a function of its input with fixed weights: smooth, default
    /// tolerances; every projection parameter must receive a gradient.
    #[test]
    fn self_attention_passes_gradcheck_and_reaches_every_parameter() {
        let store = ParamStore::new();
        let attn = SelfAttention::new(&store, &mut Rng::new(2, 0), 8, 2, true);
        let x = randn(&[2, 3, 8], 1);
        gradcheck(
            |v| attn.forward(&mut Ctx::eval_on(&v[0]), &v[0]),
            std::slice::from_ref(&x),
            Tolerance::default(),
        )
        .unwrap();
        let mut ctx = Ctx::eval();
        let input = ctx.graph.leaf(x);
        attn.forward(&mut ctx, &input).sum_all().backward();
        let names: Vec<String> = store.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"to_out.0.weight".to_string()));
        for (name, p) in store.params() {
            assert!(p.grad().is_some(), "{name} got no gradient");
        }
    }

    /// On an image, the pixels as tokens: the same values and parameter gradients as the
    /// sequence form on the image turned to `[B, H W, C]` (up to rounding), and a gradcheck.
    #[test]
    fn self_attention_on_pixels_matches_the_sequence_form() {
        let store = ParamStore::new();
        let attn = SelfAttention::new(&store, &mut Rng::new(3, 0), 8, 2, true);
        let x = randn(&[2, 8, 3, 5], 4);
        let run = |pixels: bool| {
            for (_, p) in store.params() {
                p.zero_grad();
            }
            let mut ctx = Ctx::eval();
            let input = ctx.graph.leaf(x.clone());
            let y = if pixels {
                attn.forward_pixels(&mut ctx, &input)
            } else {
                let tokens = input.reshape(&[2, 8, 15]).permute(&[0, 2, 1]);
                let y = attn.forward(&mut ctx, &tokens);
                y.permute(&[0, 2, 1]).reshape(&[2, 8, 3, 5])
            };
            // A weighted sum, so that every output element has its own gradient.
            let w = Var::constant(randn(&[2, 8, 3, 5], 5));
            y.mul(&w).sum_all().backward();
            let mut out = vec![y.value().clone()];
            out.extend(store.params().into_iter().map(|(_, p)| p.grad().unwrap()));
            out
        };
        for (a, b) in run(true).iter().zip(&run(false)) {
            assert_eq!(a.shape(), b.shape());
            for (x, y) in a.data().iter().zip(b.data()) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
        gradcheck(
            |v| attn.forward_pixels(&mut Ctx::eval_on(&v[0]), &v[0]),
            std::slice::from_ref(&x),
            Tolerance::default(),
        )
        .unwrap();
    }
}
