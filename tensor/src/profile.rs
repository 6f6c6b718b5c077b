//! An op-level profiler: wall time and call counts per op and shape, for finding where a
//! training step goes (`ddpm bench unet --profile`).
//!
//! Off by default; while off, an op pays one relaxed atomic load. While on, each op entry
//! point (convolutions, matrix products, attention, normalisation, softmax, element-wise,
//! reduction and layout ops) times itself on the calling thread and adds the wall time to an
//! entry named after the op and its shape. Ops that call other ops count once: only the
//! outermost op on a thread is timed. Parallel work inside an op is part of its wall time, so
//! the entries add up to the time the calling thread spent inside ops.
//!
//! ```
//! use tensor::{profile, Tensor};
//! profile::enable(true);
//! let x = Tensor::ones(&[4, 4]);
//! let _ = x.matmul(&x).exp();
//! profile::enable(false);
//! let entries = profile::take();
//! assert!(entries.iter().any(|e| e.op == "matmul" && e.calls == 1));
//! assert!(entries.iter().any(|e| e.op == "exp"));
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// (op, shapes) -> (seconds, calls).
type Table = HashMap<(&'static str, String), (f64, u64)>;

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Total wall time and calls of one op on one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The op, e.g. `conv2d` or `conv2d_backward_weight`.
    pub op: &'static str,
    /// The shapes it ran on, e.g. `[16, 64, 32, 32] * [64, 64, 3, 3] s1 p1`.
    pub detail: String,
    /// Seconds spent inside the op, summed over calls.
    pub seconds: f64,
    /// Number of calls.
    pub calls: u64,
}

/// Turns recording on or off (the table is kept; see [`take`]).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// True while recording.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Returns the entries recorded so far, most time first, and empties the table.
pub fn take() -> Vec<Entry> {
    let table = TABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let mut entries: Vec<Entry> = table
        .into_iter()
        .map(|((op, detail), (seconds, calls))| Entry {
            op,
            detail,
            seconds,
            calls,
        })
        .collect();
    entries.sort_by(|a, b| {
        b.seconds
            .total_cmp(&a.seconds)
            .then_with(|| a.op.cmp(b.op))
            .then_with(|| a.detail.cmp(&b.detail))
    });
    entries
}

/// A running op's timer; records when dropped.
pub struct Scope {
    op: &'static str,
    detail: String,
    start: Instant,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        DEPTH.with(|d| d.set(d.get() - 1));
        let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let slot = table
            .get_or_insert_with(HashMap::new)
            .entry((self.op, std::mem::take(&mut self.detail)))
            .or_insert((0.0, 0));
        slot.0 += seconds;
        slot.1 += 1;
    }
}

/// A guard that counts the nesting depth of an op that is not timed itself.
pub struct Nested;

impl Drop for Nested {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// What [`scope`] returns: a timer for an outermost op, a depth guard for a nested one, or
/// nothing while recording is off.
#[allow(dead_code)]
pub enum Guard {
    /// Timing an outermost op.
    Timed(Scope),
    /// Inside another op.
    Nested(Nested),
    /// Recording is off.
    Off,
}

/// Starts timing `op` (with `detail()` describing its shapes) if recording is on and no other
/// op is running on this thread. Keep the guard alive for the op's duration. Other crates use
/// it for their own ops (the optimisers, for example).
#[inline]
pub fn scope(op: &'static str, detail: impl FnOnce() -> String) -> Guard {
    if !enabled() {
        return Guard::Off;
    }
    let depth = DEPTH.with(|d| {
        let v = d.get();
        d.set(v + 1);
        v
    });
    if depth > 0 {
        return Guard::Nested(Nested);
    }
    Guard::Timed(Scope {
        op,
        detail: detail(),
        start: Instant::now(),
    })
}

/// Runs `f`, part of an op timed by a [`scope`] elsewhere (a piece it hands to another thread,
/// as with `rayon::join`), without timing the ops inside `f` separately: on whichever thread
/// `f` runs, they count as nested.
pub fn untimed<R>(f: impl FnOnce() -> R) -> R {
    DEPTH.with(|d| d.set(d.get() + 1));
    let _guard = Nested;
    f()
}

/// `[a, b, c]` for a shape.
pub fn shape(s: &[usize]) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    #[test]
    fn nested_ops_count_once_and_off_records_nothing() {
        let _guard = crate::kernels::cpu::test_lock();
        enable(false);
        let _ = take();
        let x = Tensor::ones(&[2, 3]);
        let _ = x.exp();
        assert!(take().is_empty());
        enable(true);
        {
            let _outer = scope("outer", || "o".into());
            let _ = x.exp();
        }
        let _ = x.exp();
        enable(false);
        let entries = take();
        assert!(entries.iter().any(|e| e.op == "outer" && e.calls == 1));
        assert!(entries
            .iter()
            .any(|e| e.op == "exp" && e.calls == 1 && e.detail == "[2, 3]"));
    }

    #[test]
    fn untimed_work_on_other_threads_counts_in_the_outer_op_only() {
        let _guard = crate::kernels::cpu::test_lock();
        enable(false);
        let _ = take();
        let x = Tensor::ones(&[2, 3]);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        enable(true);
        pool.install(|| {
            let _outer = scope("pair", || "p".into());
            rayon::join(|| untimed(|| x.exp()), || untimed(|| x.exp()));
        });
        enable(false);
        // Other tests may run ops on their own threads while this one records: only the
        // entries of this test's ops count (`exp` on [2, 3], and the pair around them).
        let entries: Vec<Entry> = take()
            .into_iter()
            .filter(|e| e.op == "pair" || (e.op == "exp" && e.detail == "[2, 3]"))
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!((entries[0].op, entries[0].calls), ("pair", 1));
    }
}
