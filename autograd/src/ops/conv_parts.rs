//! A 1x1 convolution of channel parts, the concatenation of which is never built (the UNet's
//! up blocks' shortcuts over `concat(h, skip)`), with its gradients.

use tensor::ops::conv_parts::{
    conv2d_pointwise_parts, conv2d_pointwise_parts_backward_data,
    conv2d_pointwise_parts_backward_weight, parts_shape_label,
};
use tensor::Tensor;

use super::conv::{deferred_weight_gradient, weights_may_wait};
use crate::tape::add_gradients;
use crate::{Backward, Deferred, Var};

/// A 1x1 convolution of the channel concatenation of parts `X_i` (`[N, C_i, H, W]`, part `i`
/// holding channels `off_i..off_i + C_i`), which is never built:
/// `Y[n] = b + sum_i W[:, off_i..off_i + C_i] X_i[n]`. Linear in each part, in W and in b:
///
/// - `dX_i[n] = W[:, off_i..off_i + C_i]^T dY[n]` (the concatenation's gradient, cut into the
///   parts' channel blocks);
/// - `dW[:, off_i..off_i + C_i] = sum_n dY[n] X_i[n]^T`;
/// - `db[co] = sum_{n, pixels} dY[n, co]`.
struct Conv2dPartsRule {
    parts: Vec<Tensor>,
    weight: Tensor,
    has_bias: bool,
}

impl Backward for Conv2dPartsRule {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn backward(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        let np = self.parts.len();
        let want_bias = self.has_bias && needs[np + 1];
        // Side by side and timed as one op, as in `Conv2dRule`.
        let _prof = tensor::profile::scope("conv2d_backward", || self.label());
        let (dx, (dw, db)) = rayon::join(
            || tensor::profile::untimed(|| self.input_gradients(g, needs)),
            || {
                tensor::profile::untimed(|| {
                    if needs[np] || want_bias {
                        let (dw, db) = self.weight_job(g, want_bias)();
                        (needs[np].then_some(dw), db)
                    } else {
                        (None, None)
                    }
                })
            },
        );
        let mut grads = dx;
        grads.push(dw);
        if self.has_bias {
            grads.push(db);
        }
        grads
    }

    /// As in `Conv2dRule`: with the weight (and the bias) among the leaves that may wait, the
    /// weight gradient is the deferred job.
    fn backward_split(
        &self,
        g: &Tensor,
        needs: &[bool],
        acc: Vec<Option<Tensor>>,
        later: &[bool],
    ) -> (Vec<Option<Tensor>>, Option<Deferred>) {
        let np = self.parts.len();
        let want_bias = self.has_bias && needs[np + 1];
        if !weights_may_wait(needs, later, np..np + 1, np + 1..needs.len()) {
            return (self.backward_accumulate(g, needs, acc), None);
        }
        let mut now = self.input_gradients(g, needs);
        now.resize(needs.len(), None);
        let job = self.weight_job(g, want_bias);
        let deferred = deferred_weight_gradient(job, now.len(), np, want_bias);
        (add_gradients(acc, now), Some(deferred))
    }
}

impl Conv2dPartsRule {
    /// The shapes, for the profiler.
    fn label(&self) -> String {
        let channels: Vec<usize> = self.parts.iter().map(|x| x.shape()[1]).collect();
        let input = parts_shape_label(self.parts[0].shape(), &channels);
        format!(
            "{input} * {} s1 p0",
            tensor::profile::shape(self.weight.shape())
        )
    }

    /// The parts' gradients (`None` for those that need none).
    fn input_gradients(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        let np = self.parts.len();
        if !needs[..np].iter().any(|&n| n) {
            return vec![None; np];
        }
        let channels: Vec<usize> = self.parts.iter().map(|x| x.shape()[1]).collect();
        conv2d_pointwise_parts_backward_data(g, &self.weight, &channels)
            .into_iter()
            .zip(needs)
            .map(|(d, &n)| n.then_some(d))
            .collect()
    }

    /// The weight gradient (and the bias gradient if `want_bias`) as a job that owns what it
    /// reads.
    fn weight_job(
        &self,
        g: &Tensor,
        want_bias: bool,
    ) -> impl FnOnce() -> (Tensor, Option<Tensor>) + Send + 'static {
        let (parts, g, shape) = (self.parts.clone(), g.clone(), self.weight.shape().to_vec());
        move || {
            let parts: Vec<&Tensor> = parts.iter().collect();
            conv2d_pointwise_parts_backward_weight(&parts, &g, &shape, want_bias)
        }
    }
}

/// A 1x1 convolution (stride 1, no padding) of the concatenation of `parts` along the channels,
/// without building it: `conv2d(&Var::concat(parts, 1), weight, bias, 1, 0)` with the copy
/// saved in the forward pass and the input gradient given part by part in the backward pass
/// ([`tensor::ops::conv_parts::conv2d_pointwise_parts`]). `parts` are `[N, C_i, H, W]`, `weight`
/// `[C_out, sum C_i, 1, 1]`, `bias` `[C_out]`. Gradients flow to every part, the weight and
/// the bias. Panics, naming the op and the shapes, if there is no part, the parts disagree in
/// N, H or W, or the weight is not 1x1 with `sum C_i` input channels.
pub fn conv2d_parts(parts: &[&Var], weight: &Var, bias: Option<&Var>) -> Var {
    let values: Vec<&Tensor> = parts.iter().map(|v| v.value()).collect();
    let y = conv2d_pointwise_parts(&values, weight.value(), bias.map(|b| b.value()));
    let rule = Conv2dPartsRule {
        parts: values.into_iter().cloned().collect(),
        weight: weight.value().clone(),
        has_bias: bias.is_some(),
    };
    let inputs: Vec<&Var> = parts.iter().copied().chain([weight]).chain(bias).collect();
    Var::from_op(y, rule, &inputs)
}
