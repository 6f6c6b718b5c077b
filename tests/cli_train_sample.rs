//! End-to-end tests of `ddpm train` and `ddpm sample`: the run folder's files, bitwise resume
//! through the command line, and clear errors for bad input.

use std::path::Path;

use ddpm::image::load_png;
use tensor::io::SafetensorsFile;

// Shared with the other end-to-end tests; this file does not need every helper.
#[allow(dead_code)]
mod common;
use common::{fails, ok, temp};

fn train(out: &Path, steps: &str) {
    let out = out.to_str().unwrap();
    ok(&[
        "train",
        "--data",
        "shapes",
        "--model",
        "tiny",
        "--steps",
        steps,
        "--batch",
        "4",
        "--sample-every",
        "2",
        "--sample-count",
        "4",
        "--sample-steps",
        "3",
        "--checkpoint-every",
        "2",
        "--out",
        out,
    ]);
}

/// Every tensor of a safetensors file, by name, as bits.
fn tensors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let file = SafetensorsFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut all: Vec<(String, Vec<u32>)> = file
        .get_all()
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.data().iter().map(|v| v.to_bits()).collect()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn train_writes_the_run_folder_and_resumes_bitwise_then_samples() {
    let straight = temp("straight");
    train(&straight, "4");
    for file in [
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "samples/step-0000002.png",
        "samples/step-0000004.png",
    ] {
        assert!(straight.join(file).is_file(), "missing {file}");
    }
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);
    let grid = load_png(straight.join("samples/step-0000004.png")).unwrap();
    assert_eq!(grid.shape()[1], 1, "a grey grid");
    let checkpoint = straight.join("checkpoints/step-0000004");
    let model =
        SafetensorsFile::open(checkpoint.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert!(
        model
            .names()
            .contains(&"down_blocks.1.attentions.0.to_q.weight"),
        "diffusers names"
    );
    assert!(
        checkpoint.join("config.json").is_file()
            && checkpoint
                .join("ema/diffusion_pytorch_model.safetensors")
                .is_file()
            && checkpoint.join("ema/config.json").is_file()
    );

    // Stop after step 2 (by removing the later checkpoint), resume, and compare.
    let resumed = temp("resumed");
    train(&resumed, "4");
    std::fs::remove_dir_all(resumed.join("checkpoints/step-0000004")).unwrap();
    let out = ok(&["train", "--resume", "--out", resumed.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("step 2"));
    for file in [
        "diffusion_pytorch_model.safetensors",
        "ema/diffusion_pytorch_model.safetensors",
        "optimizer.safetensors",
    ] {
        let same = tensors(&checkpoint.join(file))
            == tensors(&resumed.join("checkpoints/step-0000004").join(file));
        assert!(
            same,
            "{file} differs between the straight and the resumed run"
        );
        let bytes = |dir: &Path| std::fs::read(dir.join(file)).unwrap();
        let identical = bytes(&checkpoint) == bytes(&resumed.join("checkpoints/step-0000004"));
        assert!(identical, "{file}: the files' bytes differ");
    }
    let metrics_resumed = std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics_resumed.lines().count(),
        4,
        "metrics of the lost steps are replaced, not repeated"
    );

    let grid_path = straight.join("drawn.png");
    let trajectory = straight.join("trajectory.png");
    ok(&[
        "sample",
        "--checkpoint",
        straight.to_str().unwrap(),
        "--n",
        "4",
        "--steps",
        "3",
        "--out",
        grid_path.to_str().unwrap(),
        "--trajectory",
        trajectory.to_str().unwrap(),
    ]);
    assert!(
        grid_path.is_file() && trajectory.is_file() && straight.join("drawn.safetensors").is_file()
    );
    let samples = SafetensorsFile::open(straight.join("drawn.safetensors"))
        .unwrap()
        .get("samples")
        .unwrap();
    assert_eq!(samples.shape(), &[4, 1, 32, 32]);
    assert!(samples.data().iter().all(|v| v.is_finite()));

    fails(
        &[
            "train",
            "--model",
            "tiny",
            "--steps",
            "2",
            "--out",
            straight.to_str().unwrap(),
        ],
        "already holds a run",
    );
    for dir in [straight, resumed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = temp("bad");
    let o = out.to_str().unwrap();
    fails(
        &["train", "--data", "idx:/nonexistent/mnist", "--out", o],
        "/nonexistent/mnist",
    );
    fails(&["train", "--data", "mnist", "--out", o], "mnist");
    fails(
        &["train", "--model", "huge", "--out", o],
        "unknown preset `huge`",
    );
    fails(&["train", "--steps", "0", "--out", o], "--steps");
    fails(&["train", "--loss", "l1", "--out", o], "--loss");
    fails(&["train", "--resume", "--out", o], "config.json");
    fails(
        &["sample", "--checkpoint", "/nonexistent/run"],
        "/nonexistent/run",
    );
    fails(&["bench", "gemm", "--m", "0"], "positive");
    assert!(!out.exists(), "failed runs leave nothing behind");
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly() {
    let out = temp("interrupt");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args([
            "train",
            "--model",
            "tiny",
            "--steps",
            "1000000",
            "--batch",
            "2",
            "--sample-every",
            "0",
        ])
        .args([
            "--checkpoint-every",
            "0",
            "--sample-count",
            "1",
            "--sample-steps",
            "1",
            "--threads",
            "2",
            "--out",
        ])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the ddpm binary starts");
    let metrics = out.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit status {:?}:\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("interrupted: checkpoint written at step"),
        "{stderr}"
    );
    let steps = std::fs::read_to_string(&metrics).unwrap().lines().count();
    let checkpoint = out.join(format!("checkpoints/step-{steps:07}"));
    assert!(
        checkpoint
            .join("diffusion_pytorch_model.safetensors")
            .is_file(),
        "no checkpoint at step {steps}"
    );
    std::fs::remove_dir_all(out).unwrap();
}
