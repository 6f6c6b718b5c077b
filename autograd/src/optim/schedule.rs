//! Learning-rate schedules: constant, linear warm-up, cosine decay.

use std::f64::consts::PI;

/// The learning rate as a function of the step (counted from 0).
///
/// A linear warm-up from 0 to `base` over `warmup` steps (`lr = base * (step + 1) / warmup`
/// for `step < warmup`, as diffusers' `get_*_schedule_with_warmup` after the first update),
/// then either constant or a cosine decay to `min` at `total` steps:
/// `lr = min + (base - min) * (1 + cos(pi * progress)) / 2`, `progress` going from 0 at the
/// end of the warm-up to 1 at `total`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// `base` after the warm-up.
    Constant { base: f32, warmup: u64 },
    /// Cosine decay from `base` to `min` over the steps after the warm-up, up to `total`.
    Cosine {
        base: f32,
        warmup: u64,
        total: u64,
        min: f32,
    },
}

impl LrSchedule {
    /// The learning rate for step `step`.
    pub fn at(&self, step: u64) -> f32 {
        let (base, warmup) = match *self {
            LrSchedule::Constant { base, warmup } | LrSchedule::Cosine { base, warmup, .. } => {
                (base, warmup)
            }
        };
        if step < warmup {
            return (base as f64 * (step + 1) as f64 / warmup as f64) as f32;
        }
        match *self {
            LrSchedule::Constant { .. } => base,
            LrSchedule::Cosine { total, min, .. } => {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                (min as f64 + (base - min) as f64 * 0.5 * (1.0 + (PI * progress).cos())) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_constant_or_cosine() {
        let constant = LrSchedule::Constant {
            base: 1.0,
            warmup: 4,
        };
        let got: Vec<f32> = (0..6).map(|s| constant.at(s)).collect();
        assert_eq!(got, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        let cosine = LrSchedule::Cosine {
            base: 1.0,
            warmup: 2,
            total: 6,
            min: 0.0,
        };
        assert_eq!(cosine.at(2), 1.0);
        assert!(
            (cosine.at(4) - 0.5).abs() < 1e-7,
            "half way down at the middle"
        );
        assert!(cosine.at(6).abs() < 1e-7);
        assert!(cosine.at(100).abs() < 1e-7, "stays at the minimum");
    }
}
