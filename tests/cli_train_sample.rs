//! End-to-end tests of `ddpm train` and `ddpm sample`: the run folder's files, bitwise resume
//! through the command line, and clear errors for bad input.

use std::path::Path;

use ddpm::image::load_png;
use tensor::io::SafetensorsFile;

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
