//! Checking backward rules against finite differences.
//!
//! For a function `y = f(x_1, ..., x_n)` and a fixed random weighting `v` of its output, the
//! scalar `L(x) = <v, f(x)>` has gradient `dL/dx_i = J_i^T v`, which is exactly what backward
//! computes when seeded with `v`. [`gradcheck`] compares that with
//!
//! - central differences, element by element: `(L(x + h e_j) - L(x - h e_j)) / 2h`, whose error
//!   is O(h^2) from truncation plus O(eps_f32 * |L| / h) from rounding; and
//! - a random direction `u` over all inputs at once: `<grad L, u>` against
//!   `(L(x + h u) - L(x - h u)) / 2h`, which checks the whole vector-Jacobian product in one go
//!   (the `<v, J u>` test).
//!
//! The forward runs in f32, so `L` is accumulated in f64 and the step actually taken (after
//! rounding `x + h` to f32) is used in the quotient.

use tensor::Tensor;

use crate::var::{no_grad, Graph, Var};

/// Step and tolerances of a check: an analytic value `a` matches a numerical one `n` when
/// `|a - n| <= atol + rtol * max(|a|, |n|)`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// The finite-difference step h.
    pub step: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// At most this many elements per input are checked one by one (spread evenly); the
    /// random-direction check always covers every element.
    pub max_elements: usize,
}

impl Default for Tolerance {
    /// h = 1e-2 balances truncation (O(h^2)) against f32 rounding (~1e-7 |L| / h) for smooth
    /// ops on inputs of order 1; 1e-2 relative and 1e-3 absolute tolerance leave room for both.
    fn default() -> Self {
        Tolerance {
            step: 1e-2,
            atol: 1e-3,
            rtol: 1e-2,
            max_elements: 64,
        }
    }
}

/// A small deterministic generator for the weights and directions (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in [-1, 1).
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| self.next_f32()).collect(), shape)
    }
}

/// `<v, f(inputs)>` in f64, with nothing recorded.
fn weighted_output(f: &dyn Fn(&[Var]) -> Var, inputs: &[Tensor], v: &Tensor) -> f64 {
    no_grad(|| {
        let vars: Vec<Var> = inputs.iter().cloned().map(Var::constant).collect();
        let y = f(&vars);
        y.value()
            .data()
            .iter()
            .zip(v.data())
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum()
    })
}

fn close(analytic: f64, numeric: f64, tol: &Tolerance) -> bool {
    (analytic - numeric).abs() <= tol.atol + tol.rtol * analytic.abs().max(numeric.abs())
}

/// Checks the backward rules that `f` uses at `inputs`; `Err` describes the first mismatch.
pub fn gradcheck(
    f: impl Fn(&[Var]) -> Var,
    inputs: &[Tensor],
    tol: Tolerance,
) -> Result<(), String> {
    let f: &dyn Fn(&[Var]) -> Var = &f;
    let mut rng = SplitMix(0x5EED);

    // Analytic: backward seeded with v gives J^T v for every input.
    let graph = Graph::new();
    let leaves: Vec<Var> = inputs.iter().cloned().map(|t| graph.leaf(t)).collect();
    let y = f(&leaves);
    let v = rng.tensor(y.shape());
    y.backward_with(v.clone());
    let grads: Vec<Tensor> = leaves
        .iter()
        .zip(inputs)
        .map(|(leaf, x)| leaf.grad().unwrap_or_else(|| Tensor::zeros(x.shape())))
        .collect();

    // Element by element.
    for (i, x) in inputs.iter().enumerate() {
        let n = x.numel();
        let stride = n.div_ceil(tol.max_elements.max(1)).max(1);
        for j in (0..n).step_by(stride) {
            let mut plus = inputs.to_vec();
            let mut minus = inputs.to_vec();
            plus[i].data_mut()[j] = (x.data()[j] as f64 + tol.step) as f32;
            minus[i].data_mut()[j] = (x.data()[j] as f64 - tol.step) as f32;
            let taken = plus[i].data()[j] as f64 - minus[i].data()[j] as f64;
            let numeric = (weighted_output(f, &plus, &v) - weighted_output(f, &minus, &v)) / taken;
            let analytic = grads[i].data()[j] as f64;
            if !close(analytic, numeric, &tol) {
                return Err(format!(
                    "input {i} element {j}: backward gives {analytic:.6e}, finite differences {numeric:.6e}"
                ));
            }
        }
    }

    // One random direction over all inputs.
    let directions: Vec<Tensor> = inputs.iter().map(|x| rng.tensor(x.shape())).collect();
    let shifted = |sign: f64| -> Vec<Tensor> {
        inputs
            .iter()
            .zip(&directions)
            .map(|(x, u)| {
                let data = x.data().iter().zip(u.data());
                let data = data.map(|(&a, &d)| (a as f64 + sign * tol.step * d as f64) as f32);
                Tensor::from_vec(data.collect(), x.shape())
            })
            .collect()
    };
    let (plus, minus) = (shifted(1.0), shifted(-1.0));
    // <grad, actual displacement> / 2h accounts for the f32 rounding of the shifted points.
    let mut analytic = 0.0;
    for ((g, p), m) in grads.iter().zip(&plus).zip(&minus) {
        for ((&gv, &pv), &mv) in g.data().iter().zip(p.data()).zip(m.data()) {
            analytic += gv as f64 * (pv as f64 - mv as f64);
        }
    }
    let numeric = weighted_output(f, &plus, &v) - weighted_output(f, &minus, &v);
    let (analytic, numeric) = (analytic / (2.0 * tol.step), numeric / (2.0 * tol.step));
    if !close(analytic, numeric, &tol) {
        return Err(format!(
            "random direction: <grad, u> = {analytic:.6e}, finite differences {numeric:.6e}"
        ));
    }
    Ok(())
}
