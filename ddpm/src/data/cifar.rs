//! The binary version of CIFAR-10: files of 3073-byte records, each one label byte (0..=9)
//! followed by a 32x32 colour image as 1024 red, 1024 green and 1024 blue bytes (CHW order).
//!
//! The training split is `data_batch_1.bin` .. `data_batch_5.bin`, the test split
//! `test_batch.bin`, in the given directory or in its `cifar-10-batches-bin` subdirectory (as
//! the archive unpacks). Files are mapped, or decompressed if gzipped. Every check names the
//! file and says what was expected and what was found: a missing or empty file, a length that is
//! not a whole number of records, and a label outside 0..=9.

use std::path::{Path, PathBuf};

use tensor::{Error, Result, Tensor};

use super::bytes::{read_file, shown};
use super::idx::bytes_to_unit;
use super::{Dataset, Split};

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Bytes in one record: the label and the pixels.
pub const RECORD: usize = 1 + CHANNELS * SIDE * SIDE;
/// The number of classes (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).
pub const CLASSES: usize = 10;
/// The class names, in label order.
pub const CLASS_NAMES: [&str; CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The images (`[N, 3, 32, 32]` in `[-1, 1]`) and labels of one CIFAR-10 binary file.
pub fn read_batch(path: impl AsRef<Path>) -> Result<(Tensor, Vec<u8>)> {
    let (pixels, labels) = read_records(path.as_ref())?;
    let images = Tensor::from_vec(
        bytes_to_unit(&pixels),
        &[labels.len(), CHANNELS, SIDE, SIDE],
    );
    Ok((images, labels))
}

/// The pixel bytes (CHW per image) and the labels of one file, checked.
fn read_records(path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let bytes = read_file(
        path,
        "CIFAR-10 binary records (1 label + 3072 pixel bytes each)",
    )?;
    let fail = |message: String| Error::Format {
        path: shown(path),
        message,
    };
    let (n, rest) = (bytes.len() / RECORD, bytes.len() % RECORD);
    if rest != 0 {
        let kind = if n == 0 {
            "truncated"
        } else {
            "truncated or trailing bytes"
        };
        return Err(fail(format!(
            "{kind}: expected a whole number of {RECORD}-byte records (1 label + 3x32x32 \
             pixels), found {} bytes = {n} records and {rest} bytes left over",
            bytes.len()
        )));
    }
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if usize::from(record[0]) >= CLASSES {
            return Err(fail(format!(
                "expected labels 0..=9, found label {} in record {i} (byte offset {})",
                record[0],
                i * RECORD
            )));
        }
        labels.push(record[0]);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok((pixels, labels))
}

/// The files of `split` under `dir` (or under `dir/cifar-10-batches-bin` if `dir` has no
/// `test_batch.bin` but that subdirectory has).
pub fn split_files(dir: impl AsRef<Path>, split: Split) -> Vec<PathBuf> {
    let mut dir = dir.as_ref().to_path_buf();
    let nested = dir.join("cifar-10-batches-bin");
    if !dir.join("test_batch.bin").exists() && nested.join("test_batch.bin").exists() {
        dir = nested;
    }
    match split {
        Split::Train => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    }
}

/// `split` of CIFAR-10 from the binary files under `dir` (see [`split_files`]), as one data
/// set named `cifar10`.
pub fn load_dir(dir: impl AsRef<Path>, split: Split) -> Result<Dataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for file in split_files(dir, split) {
        let (x, y) = read_records(&file)?;
        pixels.extend_from_slice(&x);
        labels.extend_from_slice(&y);
    }
    let n = labels.len();
    let images = Tensor::from_vec(bytes_to_unit(&pixels), &[n, CHANNELS, SIDE, SIDE]);
    Dataset::new("cifar10", images, labels, CLASSES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_size() {
        assert_eq!(RECORD, 3073);
        assert_eq!(CLASS_NAMES.len(), CLASSES);
    }

    #[test]
    fn train_split_has_five_files() {
        let files = split_files("/nonexistent", Split::Train);
        assert_eq!(files.len(), 5);
        assert!(files[4].ends_with("data_batch_5.bin"));
        assert!(split_files("/x", Split::Test)[0].ends_with("test_batch.bin"));
    }
}
