//! A 1x1 convolution whose weight is linear layers' weights stacked along the outputs (and
//! whose bias is their biases, likewise): `Y = conv2d(X, concat(W_1, .., W_k)` viewed as
//! `[sum O_i, I, 1, 1]`, `concat(b_1, .., b_k))`, the way an attention block applies its
//! projections to every pixel at once.
//!
//! The values and gradients are those of forming the stacked weight with `Var::concat` and
//! `Var::reshape` and convolving, bit for bit; but the layers' weights and biases are the op's
//! own inputs, so they stay leaves of the graph, and their gradients (rows of the stacked
//! weight's gradient) can be deferred off the backward sweep's path like any convolution's
//! (see `crate::deferred`). With `W` the stacked weight:
//!
//! - `dX[n] = W^T dY[n]` (backward-data);
//! - `dW_i = ` rows `off_i..off_i + O_i` of `sum_n dY[n] X[n]^T`, `db_i` likewise of
//!   `sum_{n, pixels} dY`.

use tensor::ops::conv::{conv2d_backward_data, conv2d_backward_weight, conv2d_plus, ConvAddends};
use tensor::Tensor;

use super::conv::weights_may_wait;
use crate::tape::add_gradients;
use crate::{Backward, Deferred, Var};

struct StackedRule {
    input: Tensor,
    /// `[sum O_i, I, 1, 1]`.
    weight: Tensor,
    /// `O_i` of each layer.
    rows: Vec<usize>,
    has_bias: bool,
}

impl StackedRule {
    /// The layers' count.
    fn layers(&self) -> usize {
        self.rows.len()
    }

    /// The shapes, for the profiler.
    fn label(&self) -> String {
        let sh = tensor::profile::shape;
        format!(
            "{} * {} s1 p0",
            sh(self.input.shape()),
            sh(self.weight.shape())
        )
    }

    /// The stacked weight's gradient (and the stacked bias's, if `want_bias`) as a job that
    /// owns what it reads.
    fn weight_job(
        &self,
        g: &Tensor,
        want_bias: bool,
    ) -> impl FnOnce() -> (Tensor, Option<Tensor>) + Send + 'static {
        let (input, g, shape) = (self.input.clone(), g.clone(), self.weight.shape().to_vec());
        move || conv2d_backward_weight(&input, &g, &shape, 1, 0, want_bias)
    }

    /// The inputs' gradients in order (`dx`, each layer's weight, each layer's bias) from
    /// `dx` and the stacked gradients, where `needs` asks for them.
    fn split(
        rows: &[usize],
        needs: &[bool],
        dx: Option<Tensor>,
        (dw, db): (Option<Tensor>, Option<Tensor>),
    ) -> Vec<Option<Tensor>> {
        let k = rows.len();
        let mut grads = vec![dx];
        match dw {
            Some(dw) => {
                let cols = dw.shape()[1];
                let dw = dw.reshape(&[dw.shape()[0], cols]).split(rows, 0);
                grads.extend(
                    dw.into_iter()
                        .zip(&needs[1..=k])
                        .map(|(d, &n)| n.then_some(d)),
                );
            }
            None => grads.extend(std::iter::repeat_n(None, k)),
        }
        if needs.len() > 1 + k {
            match db {
                Some(db) => {
                    let db = db.split(rows, 0);
                    grads.extend(
                        db.into_iter()
                            .zip(&needs[1 + k..])
                            .map(|(d, &n)| n.then_some(d)),
                    );
                }
                None => grads.extend(std::iter::repeat_n(None, k)),
            }
        }
        grads
    }
}

impl Backward for StackedRule {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn backward(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        let k = self.layers();
        let want_weight = needs[1..=k].iter().any(|&n| n);
        let want_bias = self.has_bias && needs[1 + k..].iter().any(|&n| n);
        // Side by side and timed as one op, as in `Conv2dRule`.
        let _prof = tensor::profile::scope("conv2d_backward", || self.label());
        let (dx, (dw, db)) = rayon::join(
            || {
                tensor::profile::untimed(|| {
                    needs[0]
                        .then(|| conv2d_backward_data(g, &self.weight, self.input.shape(), 1, 0))
                })
            },
            || {
                tensor::profile::untimed(|| {
                    if want_weight || want_bias {
                        let (dw, db) = self.weight_job(g, want_bias)();
                        (Some(dw), db)
                    } else {
                        (None, None)
                    }
                })
            },
        );
        Self::split(&self.rows, needs, dx, (dw, db))
    }

    /// With every layer's weight and bias that needs a gradient among the leaves that may
    /// wait, the stacked gradients are the deferred job, split into the layers' as it ends.
    fn backward_split(
        &self,
        g: &Tensor,
        needs: &[bool],
        acc: Vec<Option<Tensor>>,
        later: &[bool],
    ) -> (Vec<Option<Tensor>>, Option<Deferred>) {
        let k = self.layers();
        let want_bias = self.has_bias && needs[1 + k..].iter().any(|&n| n);
        if !weights_may_wait(needs, later, 1..1 + k, 1 + k..needs.len()) {
            return (self.backward_accumulate(g, needs, acc), None);
        }
        // (Nothing is deferred while the profiler records, so this part is not timed.)
        let dx = needs[0].then(|| conv2d_backward_data(g, &self.weight, self.input.shape(), 1, 0));
        let now = Self::split(&self.rows, needs, dx, (None, None));
        let (job, rows, needs) = (
            self.weight_job(g, want_bias),
            self.rows.clone(),
            needs.to_vec(),
        );
        let deferred: Deferred = Box::new(move || {
            let (dw, db) = job();
            Self::split(&rows, &needs, None, (Some(dw), db))
        });
        (add_gradients(acc, now), Some(deferred))
    }
}

/// A 1x1 convolution of `input` `[N, I, H, W]` with the linear layers' weights `weights`
/// (each `[O_i, I]`) stacked along the outputs, plus their `biases` (each `[O_i]`, all or none):
/// `[N, sum O_i, H, W]`, layer `i`'s outputs in channels `off_i..off_i + O_i`. The values and
/// gradients of `conv2d(input, &Var::concat(weights, 0).reshape(..), ..)`, with the weights
/// and biases kept as the op's inputs (see the module docs). Panics, naming the op and the
/// shapes, if there is no weight, the weights disagree in `I` or with the input, or the biases
/// do not match them.
pub fn conv2d_pointwise_stacked(input: &Var, weights: &[&Var], biases: Option<&[&Var]>) -> Var {
    assert!(
        !weights.is_empty(),
        "conv2d_pointwise_stacked: no weight given"
    );
    let cols = weights[0].shape().get(1).copied().unwrap_or(0);
    assert!(
        weights
            .iter()
            .all(|w| w.shape().len() == 2 && w.shape()[1] == cols),
        "conv2d_pointwise_stacked: weights must be [O_i, I] with one I, got {:?}",
        weights
            .iter()
            .map(|w| w.shape().to_vec())
            .collect::<Vec<_>>()
    );
    let rows: Vec<usize> = weights.iter().map(|w| w.shape()[0]).collect();
    if let Some(b) = biases {
        assert!(
            b.len() == weights.len() && b.iter().zip(&rows).all(|(b, &r)| b.shape() == [r]),
            "conv2d_pointwise_stacked: biases {:?} do not match weights with {rows:?} rows",
            b.iter().map(|b| b.shape().to_vec()).collect::<Vec<_>>()
        );
    }
    let values: Vec<&Tensor> = weights.iter().map(|w| w.value()).collect();
    let total: usize = rows.iter().sum();
    let weight = Tensor::concat(&values, 0).reshape(&[total, cols, 1, 1]);
    let bias = biases.map(|b| Tensor::concat(&b.iter().map(|b| b.value()).collect::<Vec<_>>(), 0));
    let y = conv2d_plus(
        input.value(),
        &weight,
        bias.as_ref(),
        1,
        0,
        ConvAddends::default(),
    );
    let rule = StackedRule {
        input: input.value().clone(),
        weight,
        rows,
        has_bias: biases.is_some(),
    };
    let mut inputs: Vec<&Var> = vec![input];
    inputs.extend(weights.iter().copied());
    if let Some(b) = biases {
        inputs.extend(b.iter().copied());
    }
    Var::from_op(y, rule, &inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::conv2d;
    use crate::{Graph, Param};

    /// The bits of the output and of every gradient (input, each weight, each bias) of the
    /// stacked op (`stacked`) or of concatenating, reshaping and convolving, on `threads`;
    /// and how many jobs the sweep deferred.
    fn run(stacked: bool, threads: usize, bias: bool) -> (Vec<Vec<u32>>, usize) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let rows = [24, 24, 8];
            let weights: Vec<Param> = rows
                .iter()
                .enumerate()
                .map(|(i, &r)| Param::new(Tensor::randn(&[r, 16], 30 + i as u64, 0)))
                .collect();
            let biases: Vec<Param> = rows
                .iter()
                .enumerate()
                .map(|(i, &r)| Param::new(Tensor::randn(&[r], 40 + i as u64, 0)))
                .collect();
            let g = Graph::new();
            let x = g.leaf(Tensor::randn(&[3, 16, 5, 6], 1, 0));
            let w: Vec<Var> = weights.iter().map(|p| g.param(p)).collect();
            let b: Vec<Var> = biases.iter().map(|p| g.param(p)).collect();
            let (w, b): (Vec<&Var>, Vec<&Var>) = (w.iter().collect(), b.iter().collect());
            let b = bias.then_some(&b[..]);
            let y = if stacked {
                conv2d_pointwise_stacked(&x, &w, b)
            } else {
                let weight = Var::concat(&w, 0).reshape(&[56, 16, 1, 1]);
                let bias = b.map(|b| Var::concat(b, 0));
                conv2d(&x, &weight, bias.as_ref(), 1, 0)
            };
            let dy = g.leaf(Tensor::randn(y.shape(), 2, 0));
            let jobs = crate::deferred_jobs();
            y.mul(&dy).sum_all().backward();
            let jobs = crate::deferred_jobs() - jobs;
            let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let mut out = vec![bits(y.value()), bits(&x.grad().unwrap())];
            out.extend(weights.iter().map(|p| bits(&p.grad().unwrap())));
            if bias {
                out.extend(biases.iter().map(|p| bits(&p.grad().unwrap())));
            }
            (out, jobs)
        })
    }

    /// The stacked op has the bits of the composition, with and without biases, on one thread
    /// and on two (where its weight gradients are deferred).
    #[test]
    fn stacked_equals_concatenating_and_convolving_bitwise() {
        let _switch = crate::deferred::TEST_SWITCH
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for bias in [true, false] {
            let (want, _) = run(false, 1, bias);
            for threads in [1, 2] {
                // The stacked op's weight gradients are deferred on two threads; the
                // composition's weight, formed by ops, is not a leaf.
                let (got, jobs) = run(true, threads, bias);
                assert_eq!(got, want, "bias {bias}, {threads} threads");
                assert_eq!(jobs, usize::from(threads > 1), "stacked, {threads} threads");
                let (got, jobs) = run(false, threads, bias);
                assert_eq!(got, want, "composition, {threads} threads");
                assert_eq!(jobs, 0, "composition, {threads} threads");
            }
        }
    }

    /// Two layers with biases: every input's gradient against central differences (exact up
    /// to rounding, the op being linear in each input).
    #[test]
    fn stacked_passes_gradcheck() {
        use crate::gradcheck::{gradcheck, Tolerance};
        let inputs = vec![
            Tensor::randn(&[2, 3, 4, 5], 1, 0),
            Tensor::randn(&[2, 3], 2, 0),
            Tensor::randn(&[4, 3], 3, 0),
            Tensor::randn(&[2], 4, 0),
            Tensor::randn(&[4], 5, 0),
        ];
        gradcheck(
            |v| conv2d_pointwise_stacked(&v[0], &[&v[1], &v[2]], Some(&[&v[3], &v[4]])),
            &inputs,
            Tolerance::default(),
        )
        .unwrap_or_else(|e| panic!("conv2d_pointwise_stacked: {e}"));
    }

    #[test]
    #[should_panic(expected = "conv2d_pointwise_stacked: weights must be [O_i, I] with one I")]
    fn weights_of_other_widths_panic_with_the_shapes() {
        let g = Graph::new();
        let x = g.leaf(Tensor::zeros(&[1, 4, 2, 2]));
        let (a, b) = (
            g.leaf(Tensor::zeros(&[3, 4])),
            g.leaf(Tensor::zeros(&[3, 5])),
        );
        let _ = conv2d_pointwise_stacked(&x, &[&a, &b], None);
    }
}
