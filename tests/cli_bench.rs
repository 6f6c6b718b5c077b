//! End-to-end tests of `ddpm bench unet`: the JSON report of its steps, and with `--scaling`
//! that of the paired one- and two-thread steps and of the machine probes between them.

use serde_json::Value;

// Shared with the other end-to-end tests; this file does not need every helper.
#[allow(dead_code)]
mod common;
use common::{fails, json_lines};

#[test]
fn unet_scaling_reports_pairs_and_the_machine_between_them() {
    let report = json_lines(
        &[
            "bench",
            "unet",
            "--preset",
            "tiny",
            "--batch",
            "2",
            "--scaling",
            "--pairs",
            "3",
            "--json",
        ],
        "unet_scaling",
    )
    .remove(0);
    assert_eq!(report["threads"], 2);
    assert_eq!(report["pairs"], 3);
    // One probe before each pair and one after the last, each N threads' FMA rate over N times
    // one thread's (near 1 on a whole machine; anything positive on a shared one, where either
    // probe may be slowed).
    let machine = report["machine_scaling"]
        .as_array()
        .expect("machine_scaling");
    assert_eq!(machine.len(), 4, "{report}");
    for m in machine {
        let m = m.as_f64().expect("a number");
        assert!(m > 0.0 && m.is_finite(), "machine scaling {m}");
    }
    // The memory probe beside it, at the same points: N threads' streaming rate over N times
    // one thread's; and both rates before and after the pairs, in GB/s.
    let memory = report["memory_scaling"].as_array().expect("memory_scaling");
    assert_eq!(memory.len(), 4, "{report}");
    for m in memory {
        let m = m.as_f64().expect("a number");
        assert!(m > 0.0 && m.is_finite(), "memory scaling {m}");
    }
    for key in ["stream_gbps_1_thread", "stream_gbps_n_threads"] {
        let rates = report[key].as_array().expect(key);
        assert_eq!(rates.len(), 2, "{key}: {report}");
        for r in rates {
            let r = r.as_f64().expect("a number");
            assert!(r > 0.0 && r.is_finite(), "{key} {r}");
        }
    }
    let whole = report["pairs_whole"].as_u64().expect("pairs_whole");
    assert!(whole <= 3);
    let speedup = report["speedup"].as_f64().expect("speedup");
    assert!(speedup > 0.0, "speed-up {speedup}");
    let (lo, hi) = (
        report["speedup_min"].as_f64().unwrap(),
        report["speedup_max"].as_f64().unwrap(),
    );
    assert!(lo <= speedup && speedup <= hi, "{lo} <= {speedup} <= {hi}");
    // Over the pairs with the machine whole: present exactly when there are such pairs, and
    // inside the range of all pairs.
    match report["speedup_whole"].as_f64() {
        Some(s) => assert!(whole > 0 && lo <= s && s <= hi, "{s} of {whole} pairs"),
        None => assert_eq!(whole, 0),
    }
    // Over the pairs with the memory whole as well: a subset of those.
    let whole_memory = report["pairs_whole_memory"]
        .as_u64()
        .expect("pairs_whole_memory");
    assert!(whole_memory <= whole, "{whole_memory} of {whole}");
    match report["speedup_whole_memory"].as_f64() {
        Some(s) => assert!(whole_memory > 0 && lo <= s && s <= hi, "{s}"),
        None => assert_eq!(whole_memory, 0),
    }
}

#[test]
fn unet_scaling_rejects_zero_pairs() {
    fails(
        &[
            "bench",
            "unet",
            "--preset",
            "tiny",
            "--scaling",
            "--pairs",
            "0",
        ],
        "--pairs must be at least 1",
    );
}

/// `bench unet` (on two threads, as every end-to-end run): a training and a sampling step,
/// each with its page faults and its sleeps per step (counted from /proc on Linux).
#[test]
fn unet_reports_faults_and_sleeps_per_step() {
    let steps = json_lines(
        &[
            "bench", "unet", "--preset", "tiny", "--batch", "2", "--json",
        ],
        "unet",
    );
    assert_eq!(steps.len(), 2, "a training and a sampling step: {steps:?}");
    for step in &steps {
        assert!(step["ms"].as_f64().unwrap() > 0.0, "{step}");
        if cfg!(target_os = "linux") {
            let faults = step["page_faults_per_step"].as_f64().expect("faults");
            let sleeps = step["context_switches_per_step"].as_f64().expect("sleeps");
            assert!(faults.is_finite() && faults >= 0.0, "{step}");
            assert!(sleeps.is_finite() && sleeps >= 0.0, "{step}");
        }
    }
}

/// `bench unet --compare-in-place`: a training and a sampling step, each with both forms'
/// medians and the ratio of formed to in place over the pairs (its range around it).
#[test]
fn unet_compares_reading_in_place_with_forming_the_inputs() {
    let (steps, names) = compare_steps("--compare-in-place", "unet_in_place");
    assert_eq!(names, ["train_step", "sample_step"]);
    for step in &steps {
        assert_eq!(step["pairs"], 3);
        check_comparison(step, ["in_place_ms", "formed_ms", "formed_over_in_place"]);
    }
}

#[test]
fn unet_compare_in_place_rejects_zero_pairs() {
    fails(
        &[
            "bench",
            "unet",
            "--preset",
            "tiny",
            "--compare-in-place",
            "--pairs",
            "0",
        ],
        "--pairs must be at least 1",
    );
}

/// `bench unet --compare-deferred`: the training step only, with both forms' medians and the
/// ratio of computing every gradient in the sweep to deferring the weight gradients.
#[test]
fn unet_compares_deferred_weight_gradients_with_the_sweep() {
    let (steps, names) = compare_steps("--compare-deferred", "unet_deferred");
    assert_eq!(names, ["train_step"]);
    let step = &steps[0];
    assert_eq!(step["pairs"], 3);
    check_comparison(
        step,
        ["deferred_ms", "in_sweep_ms", "in_sweep_over_deferred"],
    );
}

/// `bench unet --compare-awake`: the training and sampling steps with the workers kept awake
/// and without (the tests run the program on two threads; on one the guard does nothing).
#[test]
fn unet_compares_workers_kept_awake_with_asleep() {
    let (steps, names) = compare_steps("--compare-awake", "unet_awake");
    assert_eq!(names, ["train_step", "sample_step"]);
    for step in &steps {
        assert_eq!(step["pairs"], 3);
        assert_eq!(step["threads"], 2);
        check_comparison(step, ["awake_ms", "asleep_ms", "asleep_over_awake"]);
        // One keeper (the other worker) per step awake, none asleep.
        assert_eq!(step["keepers_per_step"][0], 1.0, "{step}");
        assert_eq!(step["keepers_per_step"][1], 0.0, "{step}");
    }
    for other in ["--scaling", "--compare-in-place", "--compare-deferred"] {
        fails(
            &["bench", "unet", "--compare-awake", other],
            "cannot be used with",
        );
    }
}

/// The steps `bench unet FLAG` reports (tiny preset, batch 2, three pairs, JSON lines named
/// `bench`), with their names in order.
fn compare_steps(flag: &str, bench: &str) -> (Vec<Value>, Vec<String>) {
    let args = [
        "bench", "unet", "--preset", "tiny", "--batch", "2", flag, "--pairs", "3", "--json",
    ];
    let steps = json_lines(&args, bench);
    let names = steps
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect();
    (steps, names)
}

/// A `--compare-*` step: both forms' medians (`keys[0]`, `keys[1]`) positive, and the median
/// ratio of the pairs (`keys[2]`) inside their range.
fn check_comparison(step: &Value, keys: [&str; 3]) {
    let number = |k: &str| step[k].as_f64().unwrap_or_else(|| panic!("{k} in {step}"));
    assert!(number(keys[0]) > 0.0 && number(keys[1]) > 0.0, "{step}");
    let (ratio, lo, hi) = (number(keys[2]), number("ratio_min"), number("ratio_max"));
    assert!(
        lo > 0.0 && lo <= ratio && ratio <= hi && hi.is_finite(),
        "{step}"
    );
}

#[test]
fn unet_compare_deferred_conflicts_with_scaling_and_the_other_comparison() {
    for other in ["--scaling", "--compare-in-place"] {
        fails(
            &["bench", "unet", "--compare-deferred", other],
            "cannot be used with",
        );
    }
}
