//! Losses: mean squared error and cross-entropy.

use tensor::Tensor;

use crate::{Backward, Var};

/// `L = mean((a - b)^2)` over all n elements: `da = g 2 (a - b) / n`, `db = -da`.
struct MseRule {
    diff: Tensor,
}

impl Backward for MseRule {
    fn name(&self) -> &'static str {
        "mse_loss"
    }

    fn backward(&self, g: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>> {
        let da = self
            .diff
            .mul_scalar(2.0 * g.item() / self.diff.numel() as f32);
        let db = needs[1].then(|| da.neg());
        vec![needs[0].then_some(da), db]
    }
}

/// The mean squared error between `prediction` and `target` (same shape), as a 0-d value.
pub fn mse_loss(prediction: &Var, target: &Var) -> Var {
    assert_eq!(
        prediction.shape(),
        target.shape(),
        "mse_loss: prediction shape {:?} differs from target shape {:?}",
        prediction.shape(),
        target.shape()
    );
    let diff = prediction.value().sub(target.value());
    let loss = diff.square().mean_all();
    Var::from_op(loss, MseRule { diff }, &[prediction, target])
}

/// `L = -(1/N) sum_n log_softmax(z_n)[t_n]` for logits `z` `[N, C]` and class indices `t`:
/// `dz = g (softmax(z) - onehot(t)) / N`.
struct CrossEntropyRule {
    log_probs: Tensor,
    targets: Vec<usize>,
}

impl Backward for CrossEntropyRule {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }

    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Vec<Option<Tensor>> {
        let classes = self.log_probs.shape()[1];
        let scale = g.item() / self.targets.len() as f32;
        let mut dz = self.log_probs.exp();
        for (row, &t) in dz.data_mut().chunks_mut(classes).zip(&self.targets) {
            row[t] -= 1.0;
        }
        vec![Some(dz.mul_scalar(scale))]
    }
}

/// Cross-entropy of `logits` `[N, C]` against class indices `targets` (N of them, each below
/// C), averaged over the batch; uses the stable log-sum-exp of [`Var::log_softmax`].
pub fn cross_entropy(logits: &Var, targets: &[usize]) -> Var {
    let shape = logits.shape();
    assert!(
        shape.len() == 2 && shape[0] == targets.len(),
        "cross_entropy: logits of shape {shape:?} need to be [N, C] with N = {} targets",
        targets.len()
    );
    let classes = shape[1];
    if let Some(&bad) = targets.iter().find(|&&t| t >= classes) {
        panic!("cross_entropy: target class {bad} is out of range for {classes} classes");
    }
    let log_probs = logits.value().log_softmax();
    let total: f64 = log_probs
        .data()
        .chunks(classes)
        .zip(targets)
        .map(|(row, &t)| row[t] as f64)
        .sum();
    let loss = Tensor::scalar((-total / targets.len() as f64) as f32);
    Var::from_op(
        loss,
        CrossEntropyRule {
            log_probs,
            targets: targets.to_vec(),
        },
        &[logits],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{gradcheck, Tolerance};
    use crate::test_util::randn;

    /// Both are smooth with outputs of order 1: the default tolerances apply.
    #[test]
    fn losses_pass_gradcheck() {
        let a = randn(&[4, 5], 1);
        let b = randn(&[4, 5], 2);
        gradcheck(
            |v| mse_loss(&v[0], &v[1]),
            &[a.clone(), b],
            Tolerance::default(),
        )
        .unwrap();
        gradcheck(
            |v| cross_entropy(&v[0], &[0, 4, 2, 2]),
            &[a],
            Tolerance::default(),
        )
        .unwrap();
    }

    #[test]
    fn cross_entropy_matches_its_definition() {
        let logits = Tensor::from_vec(vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0], &[2, 3]);
        let loss = cross_entropy(&Var::constant(logits), &[2, 1])
            .value()
            .item() as f64;
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let expect = ((lse - 3.0) + 3f64.ln()) / 2.0;
        assert!((loss - expect).abs() < 1e-6, "{loss} vs {expect}");
    }
}
