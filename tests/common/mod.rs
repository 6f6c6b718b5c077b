//! Running the built `ddpm` binary from the end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `ddpm ARGS --threads 2`.
pub fn ddpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("the ddpm binary runs")
}

/// Runs `ddpm ARGS` and asserts it succeeded, showing its stderr if not.
pub fn ok(args: &[&str]) -> Output {
    let out = ddpm(args);
    assert!(
        out.status.success(),
        "ddpm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `ddpm ARGS` and asserts it failed with `message` in its stderr.
pub fn fails(args: &[&str], message: &str) {
    let out = ddpm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ddpm {args:?} should fail");
    assert!(
        stderr.contains(message),
        "ddpm {args:?}: expected `{message}` in:\n{stderr}"
    );
}

/// A fresh (removed) path under the temporary directory, unique to this process.
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `ddpm ARGS` (which must succeed and print JSON lines) and returns the lines whose
/// `bench` is `which`, asserting there is at least one.
pub fn json_lines(args: &[&str], which: &str) -> Vec<serde_json::Value> {
    let out = ok(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["bench"] == which)
        .collect();
    assert!(!lines.is_empty(), "no {which} line in:\n{stdout}");
    lines
}
