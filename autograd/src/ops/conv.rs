//! 2-D convolution (NCHW), with the input, weight and bias gradients.

use tensor::ops::conv::{conv2d_backward_data, conv2d_backward_weight, conv2d_plus, ConvAddends};
use tensor::Tensor;

use crate::{Backward, Var};

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
struct Conv2dRule {
    input: Tensor,
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
        let (s, p) = (self.stride, self.padding);
        let want_bias = self.has_bias && needs[2];
        // The two gradients are independent: computed side by side, each op's serial steps and
        // its last tasks' imbalance are filled with the other's work. The profiler times the
        // pair as one op (the two overlap).
        let _prof = tensor::profile::scope("conv2d_backward", || {
            let sh = tensor::profile::shape;
            format!(
                "{} * {} s{s} p{p}",
                sh(self.input.shape()),
                sh(self.weight.shape())
            )
        });
        let (dx, (dw, db)) = rayon::join(
            || {
                tensor::profile::untimed(|| {
                    needs[0]
                        .then(|| conv2d_backward_data(g, &self.weight, self.input.shape(), s, p))
                })
            },
            || {
                tensor::profile::untimed(|| {
                    if needs[1] || want_bias {
                        let (dw, db) = conv2d_backward_weight(
                            &self.input,
                            g,
                            self.weight.shape(),
                            s,
                            p,
                            want_bias,
                        );
                        (needs[1].then_some(dw), db)
                    } else {
                        (None, None)
                    }
                })
            },
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

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
}
