//! CIFAR-10 binary files written by the test read back exactly (CHW order, both splits, the
//! nested `cifar-10-batches-bin` folder), and malformed files are errors that name the file.

use std::fs;
use std::path::{Path, PathBuf};

use ddpm::data::{cifar, load, DataSource, Split};

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "ddpm-data-cifar-{name}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` records whose label is `(first + i) % 10` and whose pixel `k` is `(i + k) % 256`.
fn records(n: usize, first: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..n {
        b.push(((first + i) % 10) as u8);
        b.extend((0..3072).map(|k| ((i + k) % 256) as u8));
    }
    b
}

fn write_split(dir: &Path) {
    for i in 1..=5 {
        fs::write(dir.join(format!("data_batch_{i}.bin")), records(2, i)).unwrap();
    }
    fs::write(dir.join("test_batch.bin"), records(3, 0)).unwrap();
}

#[test]
fn round_trip_both_splits() {
    let dir = temp_dir("ok");
    write_split(&dir);
    let source: DataSource = format!("cifar10:{}", dir.display()).parse().unwrap();
    let train = load(&source, Split::Train).unwrap();
    assert_eq!(train.images().shape(), &[10, 3, 32, 32]);
    assert_eq!(train.labels(), &[1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
    assert_eq!(train.num_classes(), 10);
    let test = load(&source, Split::Test).unwrap();
    assert_eq!(test.labels(), &[0, 1, 2]);
    let px = test.images().data();
    // image 1: red plane starts at byte value 1, green at (1 + 1024) % 256 = 1, blue likewise
    assert_eq!(px[3072], 1.0 / 127.5 - 1.0);
    assert_eq!(px[3072 + 1024 + 5], 6.0 / 127.5 - 1.0);
    assert_eq!(px[3072 + 254], 1.0); // byte 255
    assert_eq!(px[3072 + 255], -1.0); // byte 0
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nested_archive_folder() {
    let dir = temp_dir("nested");
    let inner = dir.join("cifar-10-batches-bin");
    fs::create_dir_all(&inner).unwrap();
    write_split(&inner);
    assert_eq!(cifar::load_dir(&dir, Split::Test).unwrap().len(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files() {
    let dir = temp_dir("bad");
    let path = |name: &str| dir.join(name);
    let err = |name: &str, bytes: Vec<u8>| {
        fs::write(path(name), bytes).unwrap();
        let e = cifar::read_batch(path(name)).unwrap_err().to_string();
        assert!(e.contains(&path(name).display().to_string()), "{e}");
        e
    };
    let e = err("empty.bin", vec![]);
    assert!(e.contains("empty file"), "{e}");
    let mut short = records(2, 0);
    short.pop();
    let e = err("short.bin", short);
    assert!(
        e.contains("3073-byte records") && e.contains("1 records and 3072 bytes left over"),
        "{e}"
    );
    let e = err("tiny.bin", vec![1; 100]);
    assert!(
        e.contains("truncated") && e.contains("0 records and 100 bytes"),
        "{e}"
    );
    let mut long = records(1, 0);
    long.push(7);
    let e = err("long.bin", long);
    assert!(
        e.contains("trailing") && e.contains("1 bytes left over"),
        "{e}"
    );
    let mut label = records(3, 0);
    label[2 * 3073] = 10;
    let e = err("label.bin", label);
    assert!(e.contains("found label 10 in record 2"), "{e}");

    // a missing training batch is named
    write_split(&dir);
    fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
    let e = cifar::load_dir(&dir, Split::Train).unwrap_err().to_string();
    assert!(
        e.contains("data_batch_4.bin") && e.contains("no such file"),
        "{e}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
