//! End-to-end test of `ddpm classifier train` and `ddpm eval` on a tiny untrained model saved
//! as a diffusers folder: the files exist and parse, and bad input fails clearly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use autograd::nn::ParamStore;
use ddpm::unet::{UNet, UNetConfig};
use serde_json::Value;
use tensor::rng::Rng;

// Shared with the other end-to-end tests; this file does not need every helper.
#[allow(dead_code)]
mod common;
use common::{fails, ok};

fn temp(name: &str) -> PathBuf {
    let dir = common::temp(&format!("eval-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny random UNet for 1x32x32 images as a diffusers folder.
fn tiny_model(dir: &Path) {
    let config = UNetConfig {
        sample_size: Some(32),
        ..UNetConfig::tiny()
    };
    let store = ParamStore::new();
    let _unet = UNet::new(config.clone(), &store, &mut Rng::new(0, 0));
    store
        .save(
            dir.join("diffusion_pytorch_model.safetensors"),
            &BTreeMap::new(),
        )
        .unwrap();
    std::fs::write(dir.join("config.json"), config.to_diffusers_json()).unwrap();
}

#[test]
fn classifier_train_then_eval_writes_parsable_reports() {
    let root = temp("run");
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    tiny_model(&model);
    let classifier = root.join("classifier.safetensors");
    let (m, c) = (model.to_str().unwrap(), classifier.to_str().unwrap());

    fails(
        &["classifier", "train", "--out", c, "--steps", "0"],
        "--steps",
    );
    fails(&["classifier", "train", "--out", "x.bin"], ".safetensors");
    let out = ok(&[
        "classifier",
        "train",
        "--data",
        "shapes",
        "--out",
        c,
        "--steps",
        "5",
        "--batch",
        "8",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("test accuracy"));
    assert!(classifier.is_file());

    let tiny = [
        "--data",
        "shapes",
        "--n-bpd",
        "4",
        "--bpd-steps",
        "10",
        "--n-samples",
        "16",
        "--steps",
        "5",
    ];
    fails(
        &[&["eval", "--checkpoint", m], &tiny[..]].concat(),
        "ddpm classifier train",
    );
    fails(
        &[
            &[
                "eval",
                "--checkpoint",
                m,
                "--classifier",
                c,
                "--bpd-steps",
                "x",
            ],
            &tiny[..6],
        ]
        .concat(),
        "--bpd-steps",
    );
    let report = root.join("report");
    let r = report.to_str().unwrap();
    let out = ok(&[
        &[
            "eval",
            "--checkpoint",
            m,
            "--classifier",
            c,
            "--out",
            r,
            "--json",
        ],
        &tiny[..],
    ]
    .concat());
    let printed: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("eval.json")).unwrap()).unwrap();
    assert_eq!(printed["bpd"], written["bpd"]);
    for v in [&printed, &written] {
        let bpd = &v["bpd"];
        assert_eq!(bpd["images"], 4);
        assert_eq!(bpd["steps_evaluated"], 11, "10 KL steps and the decoder");
        let total = bpd["total"].as_f64().unwrap();
        let parts = ["prior", "kl_sum", "decoder"].map(|k| bpd[k].as_f64().unwrap());
        assert!(total.is_finite() && total > 0.0);
        assert!((parts.iter().sum::<f64>() - total).abs() < 1e-9 * total);
        assert_eq!(bpd["per_step"].as_array().unwrap().len(), 11);
        let s = &v["samples"];
        assert_eq!(s["n"], 16);
        assert!(s["fid"].as_f64().unwrap() >= 0.0);
        let is = s["inception_score"].as_f64().unwrap();
        assert!((1.0 - 1e-9..=5.0 + 1e-9).contains(&is));
        assert_eq!(v["classifier"]["metadata"]["data"], "shapes");
        assert_eq!(v["classifier"]["path"], c);
    }
    for file in ["eval.json", "eval-bpd.png", "eval-samples.png"] {
        assert!(report.join(file).is_file(), "missing {file}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}
