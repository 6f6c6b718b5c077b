//! The sampler options shared by `ddpm sample` and `ddpm eval`.

use clap::{Args, ValueEnum};
use ddpm::sample::{SampleOptions, Sampler, Spacing};

/// The sampler to run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerName {
    Ddpm,
    Ddim,
}

/// How to sample and with which weights.
#[derive(Args)]
pub struct SamplingArgs {
    /// `ddpm` (ancestral) or `ddim`.
    #[arg(long, value_enum, default_value_t = SamplerName::Ddim)]
    pub sampler: SamplerName,
    /// Sampling steps (default: 50 for DDIM, every training step for DDPM).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM's eta (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Where the steps go when fewer than the training steps: leading, linspace, trailing.
    #[arg(long, default_value = "leading")]
    pub spacing: String,
    /// Use the EMA weights (the default when the checkpoint has them).
    #[arg(long, overrides_with = "no_ema")]
    pub ema: bool,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
}

impl SamplingArgs {
    /// `Some(true)` for `--ema`, `Some(false)` for `--no-ema`, `None` for the default.
    pub fn use_ema(&self) -> Option<bool> {
        if self.no_ema {
            Some(false)
        } else if self.ema {
            Some(true)
        } else {
            None
        }
    }

    /// The sampler settings for a model trained with `total` steps, or a message naming the
    /// bad option.
    pub fn options(&self, total: usize, clip: bool) -> Result<SampleOptions, String> {
        let ddim = self.sampler == SamplerName::Ddim;
        let steps = self
            .steps
            .unwrap_or(if ddim { 50.min(total) } else { total });
        if steps == 0 || steps > total {
            return Err(format!(
                "--steps must be between 1 and the model's {total} training steps, got {steps}"
            ));
        }
        let spacing = Spacing::from_name(&self.spacing).ok_or_else(|| {
            format!(
                "--spacing: expected leading, linspace or trailing, found `{}`",
                self.spacing
            )
        })?;
        let sampler = if ddim {
            Sampler::Ddim { eta: self.eta }
        } else {
            Sampler::Ddpm
        };
        Ok(SampleOptions {
            sampler,
            steps,
            spacing,
            clip,
        })
    }
}
