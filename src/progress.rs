//! The training progress bar: step, loss (smoothed), steps per second and time left.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over training steps.
pub struct Progress {
    bar: ProgressBar,
    smoothed: Option<f32>,
}

impl Progress {
    /// A bar for `total` steps, starting at `done`.
    pub fn new(total: u64, done: u64) -> Progress {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps  loss {msg}  {per_sec}  ETA {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_position(done);
        Progress {
            bar,
            smoothed: None,
        }
    }

    /// Records step `step` and its loss (shown as an exponential moving average).
    pub fn update(&mut self, step: u64, loss: f32) {
        let s = self.smoothed.map_or(loss, |s| 0.95 * s + 0.05 * loss);
        self.smoothed = Some(s);
        self.bar.set_position(step);
        self.bar.set_message(format!("{s:.4}"));
    }

    /// Runs `f` with the bar hidden (for work that prints or takes a while).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Leaves the bar as it is.
    pub fn finish(&self) {
        self.bar.abandon();
    }
}
