//! The tape and everything it saved are released after each step: the resident memory after
//! 1,000 training steps of the two-moons MLP is within 5% of what it was after 10.

#[path = "../examples/common/mod.rs"]
#[allow(dead_code)] // the test uses only part of the shared example code
mod common;

use common::MoonsMlp;

/// The resident set size in bytes, from /proc (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn memory_stays_flat_over_a_thousand_steps() {
    let Some(_) = resident_bytes() else {
        eprintln!("no /proc/self/statm on this system; nothing to measure");
        return;
    };
    let mut mlp = MoonsMlp::new(1);
    for _ in 0..10 {
        mlp.step(1e-2);
    }
    let after_10 = resident_bytes().unwrap();
    for _ in 10..1000 {
        mlp.step(1e-2);
    }
    let after_1000 = resident_bytes().unwrap();
    let growth = after_1000 as f64 / after_10 as f64 - 1.0;
    println!(
        "resident: {after_10} bytes after 10 steps, {after_1000} after 1000 ({:+.2}%)",
        growth * 100.0
    );
    assert!(
        growth < 0.05,
        "resident memory grew by {:.1}% (from {after_10} to {after_1000} bytes)",
        growth * 100.0
    );
}
