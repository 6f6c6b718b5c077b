//! `--scaling` for the kernel benchmarks: each pass timed on the current pool and on one
//! thread in interleaved pairs of turns ([`paired_seconds`]), and the speed-up reported as
//! the median of the pairs' ratios with their range.

use serde_json::Value;

use super::timing::{median, median_seconds, paired_seconds, range};

/// Times passes on the current pool, and with `--scaling` on a one-thread pool beside it.
pub struct Timer {
    one_thread: Option<rayon::ThreadPool>,
}

/// One pass's timing: the median seconds on the current pool, and with `--scaling` the
/// one-thread median and the speed-up of every pair.
pub struct Timed {
    pub seconds: f64,
    scaling: Option<(f64, Vec<f64>)>,
}

impl Timer {
    /// A timer that also times one thread if `scaling`.
    pub fn new(scaling: bool) -> Result<Timer, String> {
        let one_thread = if scaling {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .map_err(|e| format!("cannot start a one-thread pool: {e}"))?,
            )
        } else {
            None
        };
        Ok(Timer { one_thread })
    }

    /// Times `f` (see [`Timed`]).
    pub fn time(&self, f: &mut (dyn FnMut() + Send)) -> Timed {
        match &self.one_thread {
            None => Timed {
                seconds: median_seconds(f),
                scaling: None,
            },
            Some(one) => {
                let (mut ones, mut manys) = paired_seconds(one, f);
                let ratios = ones.iter().zip(&manys).map(|(a, b)| a / b).collect();
                Timed {
                    seconds: median(&mut manys),
                    scaling: Some((median(&mut ones), ratios)),
                }
            }
        }
    }
}

impl Timed {
    /// Adds the one-thread time and the speed-up (if measured) to a result's JSON fields
    /// (`ms_1_thread`, `pairs`, `speedup`, `speedup_min`, `speedup_max`) and its human line.
    pub fn add_scaling(&self, fields: &mut Vec<(&str, Value)>, human: &mut String) {
        let Some((one, ratios)) = &self.scaling else {
            return;
        };
        let (lo, hi) = range(ratios);
        let speedup = median(&mut ratios.clone());
        fields.extend([
            ("ms_1_thread", Value::from(one * 1e3)),
            ("pairs", ratios.len().into()),
            ("speedup", speedup.into()),
            ("speedup_min", lo.into()),
            ("speedup_max", hi.into()),
        ]);
        human.push_str(&format!(
            "  | 1 thread {:.3} ms, speed-up {speedup:.2}x ({lo:.2}-{hi:.2}, {} pairs)",
            one * 1e3,
            ratios.len()
        ));
    }
}
