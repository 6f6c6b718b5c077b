//! IDX files written by the test (raw and gzipped) read back exactly, and every malformed file
//! is an error that names the file and says what was expected and what was found.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ddpm::data::{idx, load, DataSource, Split};

/// A fresh directory under the system's temporary directory, unique to this test.
fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "ddpm-data-idx-{name}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn images_bytes(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0803, n, rows, cols] {
        b.extend_from_slice(&u32::to_be_bytes(w));
    }
    b.extend_from_slice(pixels);
    b
}

fn labels_bytes(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [0x0801, labels.len() as u32] {
        b.extend_from_slice(&u32::to_be_bytes(w));
    }
    b.extend_from_slice(labels);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
}

/// Three 2x3 images whose pixels count up, and labels 0, 2, 1.
fn sample_pixels() -> Vec<u8> {
    (0..18).map(|i| (i * 15) as u8).collect()
}

fn check_sample(d: &ddpm::data::Dataset) {
    assert_eq!(d.images().shape(), &[3, 1, 2, 3]);
    assert_eq!(d.labels(), &[0, 2, 1]);
    let want: Vec<f32> = sample_pixels()
        .iter()
        .map(|&p| f32::from(p) / 127.5 - 1.0)
        .collect();
    assert_eq!(d.images().data(), &want[..]);
}

#[test]
fn raw_and_gzipped_round_trip() {
    for gz in [false, true] {
        let dir = temp_dir(if gz { "gz" } else { "raw" });
        let enc = |b: Vec<u8>| if gz { gzip(&b) } else { b };
        let suffix = if gz { ".gz" } else { "" };
        for prefix in ["train", "t10k"] {
            write(
                &dir.join(format!("{prefix}-images-idx3-ubyte{suffix}")),
                &enc(images_bytes(3, 2, 3, &sample_pixels())),
            );
            write(
                &dir.join(format!("{prefix}-labels-idx1-ubyte{suffix}")),
                &enc(labels_bytes(&[0, 2, 1])),
            );
        }
        let source: DataSource = format!("idx:{}", dir.display()).parse().unwrap();
        for split in [Split::Train, Split::Test] {
            let d = load(&source, split).unwrap();
            check_sample(&d);
            assert_eq!(d.num_classes(), 3);
            assert_eq!(d.name(), "idx");
        }
        let f = load(&DataSource::FashionMnist(dir.clone()), Split::Train).unwrap();
        assert_eq!(f.num_classes(), 10);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn extreme_bytes_map_to_minus_one_and_one() {
    let dir = temp_dir("extremes");
    let path = dir.join("x");
    write(&path, &images_bytes(1, 1, 2, &[0, 255]));
    assert_eq!(idx::read_images(&path).unwrap().data(), &[-1.0, 1.0]);
    fs::remove_dir_all(&dir).unwrap();
}

/// Writes `bytes` as a file, reads it as images (or labels) and returns the error message,
/// checking that it names the file.
fn image_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    write(&path, bytes);
    let e = idx::read_images(&path).expect_err(name).to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    e
}

fn label_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    write(&path, bytes);
    let e = idx::read_labels(&path).expect_err(name).to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    e
}

#[test]
fn bad_image_files() {
    let dir = temp_dir("bad-images");
    let good = images_bytes(3, 2, 3, &sample_pixels());

    let missing = dir.join("missing-images");
    let e = idx::read_images(&missing).unwrap_err().to_string();
    assert!(
        e.contains("missing-images") && e.contains("no such file"),
        "{e}"
    );

    let e = image_error(&dir, "empty", &[]);
    assert!(e.contains("empty file") && e.contains("expected"), "{e}");

    let e = image_error(&dir, "short-header", &good[..10]);
    assert!(
        e.contains("truncated") && e.contains("16 bytes") && e.contains("found 10"),
        "{e}"
    );

    let e = image_error(
        &dir,
        "labels-as-images",
        &labels_bytes(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
    );
    assert!(
        e.contains("expected 0x00000803") && e.contains("found 0x00000801"),
        "{e}"
    );

    let mut wrong = good.clone();
    wrong[3] = 0x04;
    let e = image_error(&dir, "wrong-magic", &wrong);
    assert!(
        e.contains("wrong magic") && e.contains("found 0x00000804"),
        "{e}"
    );

    let e = image_error(&dir, "truncated", &good[..good.len() - 1]);
    assert!(
        e.contains("truncated") && e.contains("18 bytes") && e.contains("found 17"),
        "{e}"
    );

    let mut long = good.clone();
    long.extend_from_slice(&[1, 2]);
    let e = image_error(&dir, "trailing", &long);
    assert!(
        e.contains("trailing") && e.contains("found 20 (2 extra)"),
        "{e}"
    );

    let e = image_error(&dir, "zero-rows", &images_bytes(3, 0, 3, &[]));
    assert!(e.contains("rows") && e.contains("found 0"), "{e}");

    let e = image_error(
        &dir,
        "huge",
        &images_bytes(u32::MAX, u32::MAX, u32::MAX, &[]),
    );
    assert!(e.contains("overflow") || e.contains("truncated"), "{e}");

    let gz = gzip(&good);
    let e = image_error(&dir, "truncated.gz", &gz[..gz.len() / 2]);
    assert!(e.contains("gzip") && e.contains("truncated"), "{e}");

    let e = image_error(&dir, "short.gz", &gzip(&good[..good.len() - 3]));
    assert!(
        e.contains("truncated") && e.contains("after gzip decompression"),
        "{e}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_label_files() {
    let dir = temp_dir("bad-labels");
    let e = label_error(&dir, "images-as-labels", &images_bytes(1, 1, 1, &[0]));
    assert!(
        e.contains("expected 0x00000801") && e.contains("found 0x00000803"),
        "{e}"
    );
    let good = labels_bytes(&[1, 2, 3]);
    let e = label_error(&dir, "truncated", &good[..good.len() - 1]);
    assert!(
        e.contains("truncated") && e.contains("3 bytes") && e.contains("found 2"),
        "{e}"
    );
    let mut long = good.clone();
    long.push(0);
    let e = label_error(&dir, "trailing", &long);
    assert!(e.contains("trailing") && e.contains("1 extra"), "{e}");
    let e = label_error(&dir, "empty", &[]);
    assert!(e.contains("empty"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_pairs() {
    let dir = temp_dir("bad-pairs");
    write(
        &dir.join("train-images-idx3-ubyte"),
        &images_bytes(3, 2, 3, &sample_pixels()),
    );
    write(&dir.join("train-labels-idx1-ubyte"), &labels_bytes(&[0, 1]));
    let e = idx::load_dir(&dir, Split::Train, "idx", None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte")
            && e.contains("3 images")
            && e.contains("found 2 labels"),
        "{e}"
    );
    // Fashion-MNIST's ten classes: label 10 is out of range
    write(
        &dir.join("train-labels-idx1-ubyte"),
        &labels_bytes(&[0, 10, 1]),
    );
    let e = load(&DataSource::FashionMnist(dir.clone()), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("labels below 10") && e.contains("found label 10"),
        "{e}"
    );
    // the test split is missing
    let e = load(&DataSource::Idx(dir.clone()), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t10k-images-idx3-ubyte.gz") && e.contains("no such file"),
        "{e}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
