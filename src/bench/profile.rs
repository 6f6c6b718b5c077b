//! `ddpm bench unet --profile`: where a step's wall time goes, by op and by op and shape,
//! from the engine's op-level profiler ([`tensor::profile`]).

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;
use tensor::profile::{self, Entry};

use super::Report;

/// Steps profiled (after the benchmark's own warm-up runs).
const STEPS: u32 = 3;
/// Rows of the by-op-and-shape table.
const TOP: usize = 25;

/// Runs `step` [`STEPS`] times with the profiler on and reports the time per op.
pub fn report_step(what: &str, threads: usize, report: &Report, mut step: impl FnMut()) {
    let _ = profile::take();
    profile::enable(true);
    let start = Instant::now();
    for _ in 0..STEPS {
        step();
    }
    let total = start.elapsed().as_secs_f64() / STEPS as f64;
    profile::enable(false);
    let entries = profile::take();
    let per_step = |s: f64| s / STEPS as f64;
    let inside: f64 = entries.iter().map(|e| per_step(e.seconds)).sum();

    let mut by_op: HashMap<&'static str, (f64, u64)> = HashMap::new();
    for e in &entries {
        let slot = by_op.entry(e.op).or_default();
        slot.0 += per_step(e.seconds);
        slot.1 += e.calls;
    }
    let mut ops: Vec<(&str, f64, u64)> = by_op.into_iter().map(|(k, (s, c))| (k, s, c)).collect();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let other = (total - inside).max(0.0);
    report.line(
        &[
            ("bench", "unet_profile".into()),
            ("step", what.into()),
            ("threads", threads.into()),
            ("ms", Value::from(total * 1e3)),
            ("ms_outside_ops", Value::from(other * 1e3)),
            // The profiler keeps every gradient in the backward sweep (see autograd::deferred).
            ("gradients_deferred", false.into()),
        ],
        &format!(
            "\n{what}, {threads} threads: {:.1} ms per step ({STEPS} steps profiled{}); by op:",
            total * 1e3,
            if what == "train_step" {
                ", every gradient computed in the backward sweep, none deferred"
            } else {
                ""
            }
        ),
    );
    for (op, seconds, calls) in ops {
        line(
            report,
            what,
            threads,
            op,
            None,
            seconds,
            calls / STEPS as u64,
            total,
        );
    }
    line(
        report,
        what,
        threads,
        "(outside ops)",
        None,
        other,
        0,
        total,
    );
    report.heading(&format!("  top {TOP} by op and shape:"));
    for Entry {
        op,
        detail,
        seconds,
        calls,
    } in entries.into_iter().take(TOP)
    {
        let seconds = per_step(seconds);
        line(
            report,
            what,
            threads,
            op,
            Some(&detail),
            seconds,
            calls / STEPS as u64,
            total,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn line(
    report: &Report,
    what: &str,
    threads: usize,
    op: &str,
    detail: Option<&str>,
    seconds: f64,
    calls: u64,
    total: f64,
) {
    let share = seconds / total;
    let mut fields = vec![
        ("bench", Value::from("unet_profile")),
        ("step", what.into()),
        ("threads", threads.into()),
        ("op", op.into()),
        ("ms", Value::from(seconds * 1e3)),
        ("share", share.into()),
        ("calls", calls.into()),
    ];
    if let Some(d) = detail {
        fields.push(("shapes", d.into()));
    }
    report.line(
        &fields,
        &format!(
            "  {:>8.1} ms {:>5.1}%  {:>4} calls  {op}{}",
            seconds * 1e3,
            share * 100.0,
            calls,
            detail.map_or(String::new(), |d| format!("  {d}"))
        ),
    );
}
