//! 2-D convolution (NCHW), with the input, weight and bias gradients.

use tensor::ops::conv::{
    conv2d_backward_data, conv2d_backward_weight, conv2d_plus, conv2d_upsampled_backward_data,
    conv2d_upsampled_backward_weight, ConvAddends,
};
use tensor::Tensor;

use crate::tape::add_gradients;
use crate::{Backward, Deferred, Var};

pub use super::conv_parts::conv2d_parts;
pub use super::conv_stacked::conv2d_pointwise_stacked;

/// `Y = conv2d(X, W) + b` is linear in each of X, W and b, so its vector-Jacobian products are
/// the two "transposed" convolutions:
///
/// - `dX[n, ci, y, x] = sum_{co, a, b} dY[n, co, i, j] W[co, ci, a, b]` over the output pixels
///   (i, j) whose window put tap (a, b) on (y, x) (backward-data, a transposed convolution);
/// - `dW[co, ci, a, b] = sum_{n, i, j} dY[n, co, i, j] X[n, ci, i s + a - p, j s + b - p]`
///   (backward-weight, a correlation of the input with the output gradient);
/// - `db[co] = sum_{n, i, j} dY[n, co, i, j]`.
///
/// With the addends of [`conv2d_plus`] (`Y = conv2d(X, W) + b + shift + residual`), the
/// residual's gradient is `dY` itself and the shift's `dY` summed over the pixels.
///
/// Of [`conv2d_upsampled`] (`Y = conv2d(U(X), W) + b` with `U` nearest-neighbour 2x
/// upsampling), the weight gradient reads `U(X)` through `X` as the forward pass does, and the
/// input gradient is the adjoint of `U` applied to backward-data's result: each pixel of `X`
/// gets the sum of the 2x2 block it was copied to (`sum_pool2x`).
struct Conv2dRule {
    /// The input as given: with `upsampled`, before the upsampling.
    input: Tensor,
    upsampled: bool,
    weight: Tensor,
    has_bias: bool,
    /// The shift's shape, if the op added one.
    shift: Option<Vec<usize>>,
    has_residual: bool,
    stride: usize,
    padding: usize,
}

impl Backward for Conv2dRule {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn backward(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        let want_bias = self.has_bias && needs[2];
        // The two gradients are independent: computed side by side, each op's serial steps and
        // its last tasks' imbalance are filled with the other's work. The profiler times the
        // pair as one op (the two overlap).
        let _prof = tensor::profile::scope("conv2d_backward", || self.label());
        let (dx, (dw, db)) = rayon::join(
            || tensor::profile::untimed(|| needs[0].then(|| self.input_gradient(g))),
            || {
                tensor::profile::untimed(|| {
                    if needs[1] || want_bias {
                        let (dw, db) = self.weight_job(g, want_bias)();
                        (needs[1].then_some(dw), db)
                    } else {
                        (None, None)
                    }
                })
            },
        );
        self.with_addends(g, needs, dx, (dw, db))
    }

    /// With the weight (and the bias, if it needs a gradient) among the leaves that may wait,
    /// only the input gradient is computed now; the weight gradient is the deferred job (see
    /// `crate::deferred`), with the same bits.
    fn backward_split(
        &self,
        g: &Tensor,
        needs: &[bool],
        acc: Vec<Option<Tensor>>,
        later: &[bool],
    ) -> (Vec<Option<Tensor>>, Option<Deferred>) {
        let want_bias = self.has_bias && needs[2];
        if !weights_may_wait(needs, later, 1..2, 2..2 + usize::from(self.has_bias)) {
            return (self.backward_accumulate(g, needs, acc), None);
        }
        // (Nothing is deferred while the profiler records, so neither part is timed here.)
        let dx = needs[0].then(|| self.input_gradient(g));
        let now = self.with_addends(g, needs, dx, (None, None));
        let job = self.weight_job(g, want_bias);
        let deferred = deferred_weight_gradient(job, now.len(), 1, want_bias);
        (add_gradients(acc, now), Some(deferred))
    }
}

impl Conv2dRule {
    /// The shapes, for the profiler.
    fn label(&self) -> String {
        let sh = tensor::profile::shape;
        let up = if self.upsampled { " up2x" } else { "" };
        format!(
            "{}{up} * {} s{} p{}",
            sh(self.input.shape()),
            sh(self.weight.shape()),
            self.stride,
            self.padding
        )
    }

    /// The weight gradient (and the bias gradient if `want_bias`) as a job that owns what it
    /// reads.
    fn weight_job(
        &self,
        g: &Tensor,
        want_bias: bool,
    ) -> impl FnOnce() -> (Tensor, Option<Tensor>) + Send + 'static {
        let (input, g, shape) = (self.input.clone(), g.clone(), self.weight.shape().to_vec());
        let (s, p, upsampled) = (self.stride, self.padding, self.upsampled);
        move || {
            let weight_grad = if upsampled {
                conv2d_upsampled_backward_weight
            } else {
                conv2d_backward_weight
            };
            weight_grad(&input, &g, &shape, s, p, want_bias)
        }
    }

    /// The gradients of every input in order, given `dx` and the weight and bias gradients:
    /// the shift's is `dY` summed over the pixels, the residual's `dY` itself.
    fn with_addends(
        &self,
        g: &Tensor,
        needs: &[bool],
        dx: Option<Tensor>,
        (dw, db): (Option<Tensor>, Option<Tensor>),
    ) -> Vec<Option<Tensor>> {
        let mut grads = vec![dx, dw];
        if self.has_bias {
            grads.push(db);
        }
        let mut next = grads.len();
        if let Some(shape) = &self.shift {
            grads.push(needs[next].then(|| g.sum_to(shape)));
            next += 1;
        }
        if self.has_residual {
            grads.push(needs[next].then(|| g.clone()));
        }
        grads
    }

    /// `dX`: backward-data, with `upsampled` summed into the small images (the adjoint of the
    /// upsampling).
    fn input_gradient(&self, g: &Tensor) -> Tensor {
        let (s, p) = (self.stride, self.padding);
        if self.upsampled {
            conv2d_upsampled_backward_data(g, &self.weight, self.input.shape(), s, p)
        } else {
            conv2d_backward_data(g, &self.weight, self.input.shape(), s, p)
        }
    }
}

/// True if a convolution's weight gradients may be deferred: some input in `weights` needs a
/// gradient, and every input in `weights` or `biases` that needs one may wait.
pub(super) fn weights_may_wait(
    needs: &[bool],
    later: &[bool],
    weights: std::ops::Range<usize>,
    biases: std::ops::Range<usize>,
) -> bool {
    needs[weights.clone()].iter().any(|&n| n)
        && weights.chain(biases).all(|i| !needs[i] || later[i])
}

/// A convolution's weight gradient `job` (with the bias gradient if `want_bias`) as the
/// deferred job of a rule with `n` inputs, the weight at `at` and the bias after it.
pub(super) fn deferred_weight_gradient(
    job: impl FnOnce() -> (Tensor, Option<Tensor>) + Send + 'static,
    n: usize,
    at: usize,
    want_bias: bool,
) -> Deferred {
    Box::new(move || {
        let (dw, db) = job();
        let mut grads = vec![None; n];
        grads[at] = Some(dw);
        if want_bias {
            grads[at + 1] = db;
        }
        grads
    })
}

/// Convolution of `input` `[N, C_in, H, W]` with `weight` `[C_out, C_in, kh, kw]` and an
/// optional `bias` `[C_out]`, square stride and symmetric zero padding.
pub fn conv2d(input: &Var, weight: &Var, bias: Option<&Var>, stride: usize, padding: usize) -> Var {
    conv2d_add(input, weight, bias, stride, padding, None, None)
}

/// [`conv2d`] plus a `shift` `[N, C_out, 1, 1]` (one value per image and channel, such as a
/// time-embedding projection) and a `residual` of the output's shape:
/// `((conv2d(X, W) + b) + shift) + residual`, with the bits of the separate additions but
/// without their passes over memory where the convolution adds as it writes
/// ([`tensor::ops::conv::conv2d_plus`]).
pub fn conv2d_add(
    input: &Var,
    weight: &Var,
    bias: Option<&Var>,
    stride: usize,
    padding: usize,
    shift: Option<&Var>,
    residual: Option<&Var>,
) -> Var {
    if let Some(s) = shift {
        assert_eq!(
            s.shape().len(),
            4,
            "conv2d: shift shape {:?} must be [N, C_out, 1, 1]",
            s.shape()
        );
    }
    let addends = ConvAddends {
        shift: shift.map(|s| s.value()),
        residual: residual.map(|r| r.value()),
    };
    let y = conv2d_plus(
        input.value(),
        weight.value(),
        bias.map(|b| b.value()),
        stride,
        padding,
        addends,
    );
    let rule = Conv2dRule {
        input: input.value().clone(),
        upsampled: false,
        weight: weight.value().clone(),
        has_bias: bias.is_some(),
        shift: shift.map(|s| s.shape().to_vec()),
        has_residual: residual.is_some(),
        stride,
        padding,
    };
    let inputs: Vec<&Var> = [Some(input), Some(weight), bias, shift, residual]
        .into_iter()
        .flatten()
        .collect();
    Var::from_op(y, rule, &inputs)
}

/// [`conv2d`] of the nearest-neighbour 2x upsampling of `input` (`[N, C_in, H, W]` seen as
/// `[N, C_in, 2H, 2W]`), a UNet's upsampling block as one op: the value of
/// `conv2d(&input.upsample_nearest2x(), ..)` without the upsampled tensor being written out
/// or kept for the backward pass where the kernel reads `input` in place
/// ([`tensor::ops::conv::conv2d_upsampled`]).
pub fn conv2d_upsampled(
    input: &Var,
    weight: &Var,
    bias: Option<&Var>,
    stride: usize,
    padding: usize,
) -> Var {
    let y = tensor::ops::conv::conv2d_upsampled(
        input.value(),
        weight.value(),
        bias.map(|b| b.value()),
        stride,
        padding,
    );
    let rule = Conv2dRule {
        input: input.value().clone(),
        upsampled: true,
        weight: weight.value().clone(),
        has_bias: bias.is_some(),
        shift: None,
        has_residual: false,
        stride,
        padding,
    };
    let inputs: Vec<&Var> = [Some(input), Some(weight), bias]
        .into_iter()
        .flatten()
        .collect();
    Var::from_op(y, rule, &inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;
    use crate::Graph;

    /// conv2d is linear in each argument, so central differences have no truncation error;
    /// what is left is f32 rounding of sums of up to C_in*k*k products (~1e-6 relative), far
    /// inside the default tolerances.
    #[test]
    fn conv2d_passes_gradcheck() {
        let cases = [
            // (n, c_in, c_out, h, w, k, stride, padding, bias)
            (2, 3, 4, 5, 5, 3, 1, 1, true),
            (1, 2, 3, 7, 6, 3, 2, 1, true),
            (2, 3, 2, 6, 6, 1, 1, 0, false),
            (1, 1, 2, 5, 7, 3, 2, 0, true),
            (1, 2, 2, 4, 4, 5, 1, 2, false),
        ];
        for (n, ci, co, h, w, k, s, p, with_bias) in cases {
            let mut inputs = vec![randn(&[n, ci, h, w], 1), randn(&[co, ci, k, k], 2)];
            if with_bias {
                inputs.push(randn(&[co], 3));
            }
            gradcheck(
                |v| conv2d(&v[0], &v[1], v.get(2), s, p),
                &inputs,
                Tolerance::default(),
            )
            .unwrap_or_else(|e| panic!("conv2d n={n} {ci}->{co} {h}x{w} k={k} s={s} p={p}: {e}"));
        }
    }

    /// The shift's and the residual's gradients, and the others unchanged by them: on a
    /// Winograd shape (where the additions are fused) and a strided one. The op is affine in
    /// each input and at most bilinear jointly, so central differences are exact for any step;
    /// a large one keeps f32 rounding (larger through Winograd's transforms) out of the
    /// quotient.
    #[test]
    fn conv2d_add_passes_gradcheck() {
        let tolerance = Tolerance {
            step: 0.5,
            ..Tolerance::default()
        };
        // (n, c_in, c_out, h, k, stride, padding)
        for (n, ci, co, h, k, s, p) in [(2, 16, 16, 4, 3, 1, 1), (2, 3, 4, 6, 3, 2, 1)] {
            let oh = (h + 2 * p - k) / s + 1;
            let inputs = vec![
                randn(&[n, ci, h, h], 1),
                randn(&[co, ci, k, k], 2),
                randn(&[co], 3),
                randn(&[n, co, 1, 1], 4),
                randn(&[n, co, oh, oh], 5),
            ];
            gradcheck(
                |v| conv2d_add(&v[0], &v[1], Some(&v[2]), s, p, Some(&v[3]), Some(&v[4])),
                &inputs,
                tolerance,
            )
            .unwrap_or_else(|e| panic!("conv2d_add n={n} {ci}->{co} {h}x{h} k={k} s={s}: {e}"));
        }
    }

    /// Two parts with a bias and three (one of a single channel) without: the parts' gradients
    /// are the concatenation's, cut into channel blocks.
    #[test]
    fn conv2d_parts_passes_gradcheck() {
        // (n, part channels, c_out, h, w, bias)
        let cases = [
            (2, &[3, 2][..], 4, 4, 5, true),
            (3, &[2, 1, 3][..], 3, 3, 3, false),
        ];
        for (n, channels, co, h, w, with_bias) in cases {
            let c: usize = channels.iter().sum();
            let mut inputs: Vec<Tensor> = (0..channels.len())
                .map(|i| randn(&[n, channels[i], h, w], 10 + i as u64))
                .collect();
            inputs.push(randn(&[co, c, 1, 1], 20));
            if with_bias {
                inputs.push(randn(&[co], 21));
            }
            let np = channels.len();
            gradcheck(
                |v| {
                    let parts: Vec<&Var> = v[..np].iter().collect();
                    conv2d_parts(&parts, &v[np], v.get(np + 1))
                },
                &inputs,
                Tolerance::default(),
            )
            .unwrap_or_else(|e| panic!("conv2d_parts {channels:?} -> {co}: {e}"));
        }
    }

    /// `conv2d_parts` is `conv2d` of the concatenation: the same output and the same gradients
    /// for every part, the weight and the bias (to f32 rounding: the sum over channels is
    /// split between GEMMs).
    #[test]
    fn conv2d_parts_equals_conv2d_of_the_concatenation() {
        let close = |what: &str, a: &Tensor, b: &Tensor| {
            assert_eq!(a.shape(), b.shape(), "{what}");
            let scale = b.data().iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (i, (x, y)) in a.data().iter().zip(b.data()).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{what}: element {i}: {x} against {y}"
                );
            }
        };
        for (channels, with_bias) in [(&[5usize, 3][..], true), (&[2, 4, 1][..], false)] {
            let (n, co, h) = (9, 6, 5);
            let c: usize = channels.iter().sum();
            let g = Graph::new();
            let parts: Vec<Var> = (0..channels.len())
                .map(|i| g.leaf(randn(&[n, channels[i], h, h], 30 + i as u64)))
                .collect();
            let weight = g.leaf(randn(&[co, c, 1, 1], 40));
            let bias = with_bias.then(|| g.leaf(randn(&[co], 41)));
            let refs: Vec<&Var> = parts.iter().collect();
            let dy = randn(&[n, co, h, h], 42);

            let y = conv2d_parts(&refs, &weight, bias.as_ref());
            y.backward_with(dy.clone());
            let grads = |vars: &[&Var]| -> Vec<Tensor> {
                vars.iter().map(|v| v.grad().expect("a gradient")).collect()
            };
            let mut all: Vec<&Var> = refs.clone();
            all.push(&weight);
            all.extend(bias.as_ref());
            let got = grads(&all);

            let g2 = Graph::new();
            let all2: Vec<Var> = all.iter().map(|v| g2.leaf(v.value().clone())).collect();
            let np = parts.len();
            let parts2: Vec<&Var> = all2[..np].iter().collect();
            let y2 = conv2d(&Var::concat(&parts2, 1), &all2[np], all2.get(np + 1), 1, 0);
            y2.backward_with(dy);
            let want = grads(&all2.iter().collect::<Vec<_>>());

            close("output", y.value(), y2.value());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                close(&format!("gradient {i} of {channels:?}"), a, b);
            }
        }
    }

    /// The convolution of an upsampled input passes gradcheck (a Winograd shape and a small
    /// one) and has the bits of upsampling, then convolving, in its value and every gradient.
    #[test]
    fn conv2d_upsampled_passes_gradcheck_and_matches_the_composition() {
        let tolerance = Tolerance {
            step: 0.5,
            ..Tolerance::default()
        };
        // (n, c_in, c_out, h, w) before the upsampling.
        for (n, ci, co, h, w) in [(2, 16, 16, 2, 3), (1, 2, 3, 2, 2)] {
            let inputs = vec![
                randn(&[n, ci, h, w], 31),
                randn(&[co, ci, 3, 3], 32),
                randn(&[co], 33),
            ];
            gradcheck(
                |v| conv2d_upsampled(&v[0], &v[1], Some(&v[2]), 1, 1),
                &inputs,
                tolerance,
            )
            .unwrap_or_else(|e| panic!("conv2d_upsampled {ci}->{co} {h}x{w}: {e}"));
            let seed = randn(&[n, co, 2 * h, 2 * w], 34);
            let run = |fused: bool| {
                let graph = crate::Graph::new();
                let v: Vec<Var> = inputs.iter().map(|t| graph.leaf(t.clone())).collect();
                let y = if fused {
                    conv2d_upsampled(&v[0], &v[1], Some(&v[2]), 1, 1)
                } else {
                    conv2d(&v[0].upsample_nearest2x(), &v[1], Some(&v[2]), 1, 1)
                };
                y.backward_with(seed.clone());
                let mut out = vec![y.value().clone()];
                out.extend(v.iter().map(|x| x.grad().unwrap()));
                out
            };
            let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for (what, (a, b)) in ["y", "dx", "dw", "db"]
                .iter()
                .zip(run(true).iter().zip(&run(false)))
            {
                assert_eq!(a.shape(), b.shape(), "{what}");
                assert!(bits(a) == bits(b), "{what} of {ci}->{co} {h}x{w}");
            }
        }
    }
}
