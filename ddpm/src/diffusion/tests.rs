//! Tests of the diffusion maths against each other, against Monte Carlo, and against an
//! analytic oracle.

use std::f64::consts::{LN_2, PI};

use autograd::Var;
use tensor::rng::Rng;
use tensor::Tensor;

use super::*;
use crate::schedule::{BetaSchedule, Schedule};

fn linear(prediction: Prediction, variance: VarianceKind) -> Diffusion {
    Diffusion::new(
        Schedule::new(BetaSchedule::LINEAR, 1000),
        prediction,
        variance,
    )
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn posterior_mean_p1_equals_p3_with_the_true_noise() {
    let d = linear(Prediction::Eps, VarianceKind::FixedSmall);
    let mut rng = Rng::new(1, 0);
    let x0 = rng.uniform_range(&[4, 3, 5, 5], -1.0, 1.0);
    let eps = rng.normal(&[4, 3, 5, 5]);
    let t = [1, 10, 500, 999];
    let xt = d.q_sample(&x0, &t, &eps);
    let p1 = d.q_posterior(&x0, &xt, &t).mean;
    // (P3): 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps), per sample in f64.
    let s = &d.schedule;
    let per = x0.numel() / 4;
    for (n, &i) in t.iter().enumerate() {
        for k in 0..per {
            let j = n * per + k;
            let p3 = (xt.data()[j] as f64
                - s.betas[i] / s.sqrt_one_minus_abar[i] * eps.data()[j] as f64)
                / s.alphas[i].sqrt();
            assert!(
                (p1.data()[j] as f64 - p3).abs() < 2e-5,
                "step {i}: {} vs {p3}",
                p1.data()[j]
            );
        }
    }
    // The reverse step from a perfect eps-prediction has the same mean, eq. (M).
    let step = d.p_mean_variance(&eps, &xt, &t, false);
    assert!(max_abs_diff(&step.dist.mean, &p1) < 1e-4);
    assert!(
        max_abs_diff(&step.pred_x0, &x0) < 2e-2,
        "x0 is recovered (up to f32 at t = 1000)"
    );
}

#[test]
fn target_conversions_invert_each_other() {
    let d = linear(Prediction::V, VarianceKind::FixedSmall);
    let mut rng = Rng::new(2, 0);
    let x0 = rng.uniform_range(&[3, 8], -1.0, 1.0);
    let eps = rng.normal(&[3, 8]);
    let t = [0, 300, 700];
    let xt = d.q_sample(&x0, &t, &eps);
    let v = d.v_target(&x0, &t, &eps);
    assert!(max_abs_diff(&d.x0_from_v(&xt, &t, &v), &x0) < 1e-5);
    assert!(max_abs_diff(&d.eps_from_v(&xt, &t, &v), &eps) < 1e-5);
    assert!(max_abs_diff(&d.eps_from_x0(&xt, &t, &x0), &eps) < 1e-3);
    assert!(max_abs_diff(&d.x0_from_eps(&xt, &t, &eps), &x0) < 1e-5);
}

#[test]
fn learned_range_interpolates_between_the_two_fixed_variances() {
    let d = linear(Prediction::Eps, VarianceKind::LearnedRange);
    let xt = Tensor::zeros(&[2, 1, 2, 2]);
    let t = [5, 5];
    let out = |v: f32| {
        Tensor::concat(
            &[
                &Tensor::zeros(&[2, 1, 2, 2]),
                &Tensor::full(&[2, 1, 2, 2], v),
            ],
            1,
        )
    };
    let s = &d.schedule;
    let high = d.p_mean_variance(&out(1.0), &xt, &t, false).dist.log_var;
    let low = d.p_mean_variance(&out(-1.0), &xt, &t, false).dist.log_var;
    assert!((high.data()[0] as f64 - s.betas[5].ln()).abs() < 1e-5);
    assert!((low.data()[0] as f64 - s.posterior_log_variance_clipped[5]).abs() < 1e-5);
}

#[test]
fn gaussian_kl_agrees_with_monte_carlo() {
    // KL(N(0.3, 0.5^2) || N(-0.2, 1.3^2)) = E_{x ~ p1}[log p1(x) - log p2(x)].
    let (m1, s1, m2, s2) = (0.3f64, 0.5f64, -0.2f64, 1.3f64);
    let exact = normal_kl(m1, 2.0 * s1.ln(), m2, 2.0 * s2.ln());
    let closed = (s2 / s1).ln() + (s1 * s1 + (m1 - m2).powi(2)) / (2.0 * s2 * s2) - 0.5;
    assert!((exact - closed).abs() < 1e-12);
    let z = Rng::new(3, 0).normal(&[400_000]);
    let log_n =
        |x: f64, m: f64, s: f64| -0.5 * ((x - m) / s).powi(2) - s.ln() - 0.5 * (2.0 * PI).ln();
    let mc: f64 = z
        .data()
        .iter()
        .map(|&z| {
            let x = m1 + s1 * z as f64;
            log_n(x, m1, s1) - log_n(x, m2, s2)
        })
        .sum::<f64>()
        / z.numel() as f64;
    assert!(
        (mc - exact).abs() < 0.005,
        "Monte Carlo {mc} vs (KL) {exact}"
    );
    // The slip the seed derivation made (sigma_1 in the denominator) is far off.
    let wrong = (s2 / s1).ln() + (s1 * s1 + (m1 - m2).powi(2)) / (2.0 * s1 * s1) - 0.5;
    assert!((mc - wrong).abs() > 0.1);
}

#[test]
fn discretized_decoder_agrees_with_monte_carlo() {
    // The probability of a bin is the fraction of draws from N(mean, s^2) that land in it.
    let z = Rng::new(4, 0).normal(&[1_000_000]);
    let (mean, s) = (0.1f64, 0.02f64);
    let bins = [0.1 - 2.0 / 255.0, 0.1 + 3.0 / 255.0, 0.1];
    for x in bins {
        let inside = z.data().iter().filter(|&&z| {
            let y = mean + s * z as f64;
            y >= x - 1.0 / 255.0 && y < x + 1.0 / 255.0
        });
        let frac = inside.count() as f64 / z.numel() as f64;
        let exact = discretized_gaussian_log_likelihood(x, mean, s.ln());
        assert!(
            (frac.ln() - exact).abs() < 0.02,
            "bin at {x}: Monte Carlo {} vs (L0) {exact}",
            frac.ln()
        );
    }
    // The edge bins extend to infinity: -1 owns everything below -1 + 1/255.
    let p_low = discretized_gaussian_log_likelihood(-1.0, -0.99, 0.05f64.ln()).exp();
    let frac = z
        .data()
        .iter()
        .filter(|&&z| (-0.99 + 0.05 * z as f64) < -1.0 + 1.0 / 255.0)
        .count() as f64
        / z.numel() as f64;
    assert!((p_low - frac).abs() < 2e-3, "{p_low} vs {frac}");
    // Far in a tail the log stays finite (clamped at 1e-12) and the upper tail is accurate.
    assert!(discretized_gaussian_log_likelihood(0.5, -0.5, 0.01f64.ln()) >= 1e-12f64.ln());
    let tail = discretized_gaussian_log_likelihood(0.0, -0.02, 0.004f64.ln()).exp();
    assert!(tail > 1e-7 && tail < 1e-4, "{tail}");
}

/// For data from N(0, I) the optimal eps-predictor is `E[eps | x_t] = sqrt(1 - abar_t) x_t`.
fn oracle(d: &Diffusion) -> impl FnMut(&Tensor, &[usize]) -> Tensor + '_ {
    move |xt: &Tensor, t: &[usize]| {
        xt.mul(&per_sample(&d.schedule.sqrt_one_minus_abar, t, xt.shape()))
    }
}

#[test]
fn oracle_reaches_the_analytic_minimum_of_l_simple() {
    let d = linear(Prediction::Eps, VarianceKind::FixedLarge);
    let mut rng = Rng::new(5, 0);
    let n = 20_000;
    let x0 = rng.normal(&[n, 4]);
    let (t, _) = UniformSampler { steps: 1000 }.sample(n, &mut rng);
    let eps = rng.normal(&[n, 4]);
    let xt = d.q_sample(&x0, &t, &eps);
    let predicted = oracle(&d)(&xt, &t);
    let loss = l_simple(&Var::constant(predicted), &eps).value().item() as f64;
    let minimum = d.schedule.abar.iter().sum::<f64>() / 1000.0;
    assert!(
        (loss - minimum).abs() < 0.01 * minimum + 2e-3,
        "L_simple {loss} vs minimum {minimum}"
    );
}

#[test]
fn with_the_oracle_and_fixed_large_variance_the_bound_is_the_true_nll() {
    let d = linear(Prediction::Eps, VarianceKind::FixedLarge);
    let mut rng = Rng::new(6, 0);
    // Each term is a Monte Carlo estimate over one draw of x_t per dimension; the decoder and
    // the first KL terms fluctuate like chi-square variables, about 2.5% of the NLL per
    // dimension in all. 65,536 dimensions bring that to about 0.3%, a third of the 1% allowed.
    let (n, dims) = (1024, 64);
    let x0 = rng.normal(&[n, dims]);
    let terms = d.bound(
        &mut oracle(&d),
        &x0,
        &mut rng,
        Decoder::Continuous,
        false,
        None,
    );
    let bound_nats = terms.total_bpd() * dims as f64 * LN_2;
    // The exact NLL of these samples under N(0, I), and its expectation D/2 (1 + ln 2 pi).
    let nll: f64 = x0
        .data()
        .iter()
        .map(|&x| 0.5 * (x as f64).powi(2) + 0.5 * (2.0 * PI).ln())
        .sum::<f64>()
        / n as f64;
    let expected = dims as f64 / 2.0 * (1.0 + (2.0 * PI).ln());
    println!("bound {bound_nats:.4} nats, NLL {nll:.4}, expectation {expected:.4}");
    assert!(
        (bound_nats - nll).abs() < 0.01 * nll,
        "bound {bound_nats} vs NLL of the batch {nll} (expectation {expected})"
    );

    let small = Diffusion::new(
        d.schedule.clone(),
        Prediction::Eps,
        VarianceKind::FixedSmall,
    );
    let mut rng = Rng::new(6, 1);
    let terms_small = small.bound(
        &mut oracle(&small),
        &x0,
        &mut rng,
        Decoder::Continuous,
        false,
        None,
    );
    let small_nats = terms_small.total_bpd() * dims as f64 * LN_2;
    assert!(
        small_nats > 1.02 * bound_nats,
        "fixed-small {small_nats} must exceed fixed-large {bound_nats}"
    );
}

#[test]
fn hybrid_loss_matches_the_evaluated_bound_and_trains_only_the_variance() {
    let d = linear(Prediction::Eps, VarianceKind::LearnedRange);
    let mut rng = Rng::new(7, 0);
    let x0 = rng
        .uniform_range(&[3, 1, 4, 4], -1.0, 1.0)
        .map(|x| ((x + 1.0) * 127.5).round() / 127.5 - 1.0);
    let eps = rng.normal(&[3, 1, 4, 4]);
    let t = [0, 10, 600];
    let xt = d.q_sample(&x0, &t, &eps);
    let prediction = eps.add(&rng.normal(&[3, 1, 4, 4]).mul_scalar(0.1));
    let v = rng.uniform_range(&[3, 1, 4, 4], -1.0, 1.0);
    let output = Tensor::concat(&[&prediction, &v], 1);
    let graph = autograd::Graph::new();
    let out = graph.leaf(output.clone());
    let (loss, terms) = hybrid_loss(&d, &out, &x0, &xt, &t, &eps);
    let step = d.p_mean_variance(&output, &xt, &t, false);
    let eval = d.vb_term_nats(&step.dist, &x0, &xt, &t, Decoder::Discretized);
    for n in 0..3 {
        let eval_bpd = eval[n] / (16.0 * LN_2);
        let tol = if t[n] == 0 {
            0.02 * eval_bpd.abs() + 1e-3
        } else {
            1e-4 * eval_bpd.abs() + 1e-5
        };
        assert!(
            (terms[n] as f64 - eval_bpd).abs() < tol,
            "step {}: {} vs {eval_bpd}",
            t[n],
            terms[n]
        );
    }
    let simple = l_simple(&Var::constant(prediction), &eps).value().item();
    let vb_mean = terms.iter().sum::<f32>() / 3.0;
    assert!((loss.value().item() - (simple + HYBRID_LAMBDA * 1000.0 * vb_mean)).abs() < 1e-4);
    // The gradient of the prediction half comes from L_simple alone: 2 (pred - eps) / numel.
    loss.backward();
    let g = out.grad().unwrap();
    let pred_grad = g.split(&[1, 1], 1).remove(0);
    let expect = output
        .split(&[1, 1], 1)
        .remove(0)
        .sub(&eps)
        .mul_scalar(2.0 / 48.0);
    assert!(max_abs_diff(&pred_grad, &expect) < 1e-6);
}
