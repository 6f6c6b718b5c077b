//! End-to-end tests of the kernel benchmarks' `--scaling`: each pass timed on one thread and on
//! N in interleaved pairs, with the speed-up of every pair summed up in the report.

use serde_json::Value;

// Shared with the other end-to-end tests; this file does not need every helper.
#[allow(dead_code)]
mod common;
use common::json_lines;

/// The JSON lines of `ddpm bench ARGS --scaling --json` (on two threads) whose `bench` is
/// `which`.
fn scaling_lines(args: &[&str], which: &str) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["--scaling", "--json"]);
    json_lines(&all, which)
}

/// The one-thread median and the pairs' speed-ups: at least five pairs, the median inside
/// their range, and the N-thread median as reported.
fn check_scaling(line: &Value) {
    assert_eq!(line["threads"], 2, "{line}");
    let number = |key: &str| {
        line[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {line}"))
    };
    assert!(line["pairs"].as_u64().expect("pairs") >= 5, "{line}");
    let (lo, mid, hi) = (
        number("speedup_min"),
        number("speedup"),
        number("speedup_max"),
    );
    assert!(
        0.0 < lo && lo <= mid && mid <= hi && hi.is_finite(),
        "{line}"
    );
    assert!(number("ms_1_thread") > 0.0 && number("ms") > 0.0, "{line}");
}

#[test]
fn attention_scaling_reports_the_pairs() {
    let lines = scaling_lines(
        &[
            "bench",
            "attention",
            "--batch",
            "1",
            "--tokens",
            "32",
            "--channels",
            "8",
            "--heads",
            "2",
            "--pass",
            "backward",
        ],
        "attention",
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["pass"], "backward");
    check_scaling(&lines[0]);
}

#[test]
fn conv_scaling_reports_the_pairs() {
    let lines = scaling_lines(
        &[
            "bench", "conv", "--batch", "2", "--cin", "16", "--cout", "16", "--hw", "8", "--pass",
            "forward",
        ],
        "conv",
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["pass"], "forward");
    check_scaling(&lines[0]);
}

/// Without `--scaling` no one-thread figures are reported.
#[test]
fn attention_without_scaling_has_no_pairs() {
    let line = json_lines(
        &[
            "bench",
            "attention",
            "--batch",
            "1",
            "--tokens",
            "16",
            "--channels",
            "4",
            "--heads",
            "1",
            "--pass",
            "forward",
            "--json",
        ],
        "attention",
    )
    .remove(0);
    assert!(
        line.get("speedup").is_none() && line.get("ms_1_thread").is_none(),
        "{line}"
    );
}
