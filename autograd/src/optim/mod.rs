//! Optimizers (SGD, Adam, AdamW), gradient clipping, learning-rate schedules, and an
//! exponential moving average of parameters.
//!
//! An optimizer holds the named parameters it updates and its per-parameter state. Its state
//! goes to and from plain named tensors ([`Optimizer::state`], [`Optimizer::load_state`]) so a
//! checkpoint can store it beside the weights and training can resume bitwise.

mod adam;
mod clip;
mod ema;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use clip::clip_grad_norm;
pub use ema::{Ema, EmaConfig};
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdConfig};

use std::collections::BTreeMap;
use std::path::Path;

use tensor::{Error, Result, Tensor};

/// What every optimizer offers.
pub trait Optimizer {
    /// One update of every parameter that has a gradient, with learning rate `lr`.
    fn step(&mut self, lr: f32);
    /// How many steps were taken.
    fn steps(&self) -> u64;
    /// The state as named tensors (`{param}.{buffer}`), with the step count as a one-element
    /// tensor named `step` (exact up to 2^24 steps).
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores the state that [`Optimizer::state`] gave. Fails, naming the tensor, if a
    /// buffer is missing or has another shape.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;

    /// Writes [`Optimizer::state`] to a safetensors file (atomically).
    fn save_state(&self, path: &Path) -> Result<()> {
        let state = self.state();
        let named: Vec<(&str, &Tensor)> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tensor::io::save(path, &named, &BTreeMap::new())
    }

    /// Restores the state from a file written by [`Optimizer::save_state`].
    fn load_state_file(&mut self, path: &Path) -> Result<()> {
        self.load_state(&tensor::io::load_all(path)?)
    }
}

/// Finds `name` in `state` and checks its shape.
pub(crate) fn find_state<'a>(
    state: &'a [(String, Tensor)],
    name: &str,
    shape: &[usize],
) -> Result<&'a Tensor> {
    let (_, t) = state
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| Error::Invalid(format!("optimizer state: no tensor named `{name}`")))?;
    if t.shape() != shape {
        return Err(Error::Invalid(format!(
            "optimizer state: `{name}` has shape {:?}, expected {shape:?}",
            t.shape()
        )));
    }
    Ok(t)
}

/// Reads the step count saved as the one-element tensor `step`.
pub(crate) fn find_step(state: &[(String, Tensor)]) -> Result<u64> {
    let step = find_state(state, "step", &[1])?.item();
    if step < 0.0 || step.fract() != 0.0 {
        return Err(Error::Invalid(format!(
            "optimizer state: `step` must be a whole number, got {step}"
        )));
    }
    Ok(step as u64)
}
