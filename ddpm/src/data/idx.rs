//! The IDX format of MNIST and Fashion-MNIST: a big-endian header (magic number, then one u32
//! per dimension) followed by unsigned bytes, raw or gzipped.
//!
//! Images are `idx3` (magic `0x00000803`: count, rows, columns), labels `idx1` (magic
//! `0x00000801`: count). A data directory holds `train-images-idx3-ubyte` and
//! `train-labels-idx1-ubyte` for the training split and `t10k-*` for the test split, each
//! optionally with `.gz`. Every check names the file and says what was expected and what was
//! found: a missing or empty file, a wrong magic number, a zero dimension, a file shorter or
//! longer than its header says, and image and label counts that differ.

use std::path::{Path, PathBuf};

use tensor::{Error, Result, Tensor};

use super::bytes::{read_file, shown, FileBytes};
use super::{Dataset, Split};

/// The magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// The magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Images read from an IDX file: `[N, 1, rows, cols]` in `[-1, 1]`.
pub fn read_images(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = read_file(path, "IDX images (magic 0x00000803)")?;
    let dims = header(
        path,
        &bytes,
        IMAGES_MAGIC,
        "images",
        &["images", "rows", "columns"],
    )?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    let body = &bytes[16..];
    Ok(Tensor::from_vec(bytes_to_unit(body), &[n, 1, rows, cols]))
}

/// Labels read from an IDX file.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_file(path, "IDX labels (magic 0x00000801)")?;
    header(path, &bytes, LABELS_MAGIC, "labels", &["labels"])?;
    Ok(bytes[8..].to_vec())
}

/// A data set from an IDX image file and its label file. Fails if the counts differ. The
/// number of classes is `classes` if given (and every label must be below it), else one more
/// than the largest label.
pub fn load_pair(
    images: impl AsRef<Path>,
    labels: impl AsRef<Path>,
    name: &str,
    classes: Option<usize>,
) -> Result<Dataset> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let x = read_images(images)?;
    let y = read_labels(labels)?;
    if x.shape()[0] != y.len() {
        return Err(Error::Format {
            path: shown(labels),
            message: format!(
                "expected one label per image of {} ({} images), found {} labels",
                shown(images),
                x.shape()[0],
                y.len()
            ),
        });
    }
    let classes = match classes {
        Some(k) => k,
        None => y.iter().map(|&l| usize::from(l) + 1).max().unwrap_or(1),
    };
    Dataset::new(name, x, y, classes).map_err(|e| Error::Format {
        path: shown(labels),
        message: e.to_string(),
    })
}

/// The image and label files of `split` in an MNIST-style directory: the raw name if it
/// exists, else the name with `.gz` (reported under the `.gz` name when neither exists).
pub fn split_files(dir: impl AsRef<Path>, split: Split) -> (PathBuf, PathBuf) {
    let dir = dir.as_ref();
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let pick = |stem: String| {
        let raw = dir.join(&stem);
        if raw.is_file() {
            raw
        } else {
            dir.join(format!("{stem}.gz"))
        }
    };
    (
        pick(format!("{prefix}-images-idx3-ubyte")),
        pick(format!("{prefix}-labels-idx1-ubyte")),
    )
}

/// `split` of the MNIST-style data set in `dir` (see [`split_files`]), named `name`.
pub fn load_dir(
    dir: impl AsRef<Path>,
    split: Split,
    name: &str,
    classes: Option<usize>,
) -> Result<Dataset> {
    let (images, labels) = split_files(dir, split);
    load_pair(images, labels, name, classes)
}

/// Byte `x` as `x / 127.5 - 1`, so 0 is -1 and 255 is +1.
pub(crate) fn bytes_to_unit(bytes: &[u8]) -> Vec<f32> {
    let table: Vec<f32> = (0..=255u8).map(|x| f32::from(x) / 127.5 - 1.0).collect();
    bytes.iter().map(|&b| table[usize::from(b)]).collect()
}

/// Checks the header of an IDX file of unsigned bytes (magic number, dimensions, and that the
/// file holds exactly the bytes the dimensions promise) and returns the dimensions.
fn header(
    path: &Path,
    bytes: &FileBytes,
    magic: u32,
    what: &str,
    dim_names: &[&str],
) -> Result<Vec<usize>> {
    let fail = |message: String| Error::Format {
        path: shown(path),
        message,
    };
    let gz = if bytes.was_gzipped() {
        " (after gzip decompression)"
    } else {
        ""
    };
    let head_len = 4 + 4 * dim_names.len();
    if bytes.len() < head_len {
        return Err(fail(format!(
            "truncated: expected an IDX {what} header of {head_len} bytes, found {} bytes{gz}",
            bytes.len()
        )));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    let found = word(0);
    if found != magic {
        let hint = match found {
            IMAGES_MAGIC => " (an IDX image file)",
            LABELS_MAGIC => " (an IDX label file)",
            _ if bytes[..2] == [0x1f, 0x8b] => " (a gzip stream)",
            _ => "",
        };
        return Err(fail(format!(
            "wrong magic number: expected 0x{magic:08x} (IDX {what}), found 0x{found:08x}{hint}"
        )));
    }
    let dims: Vec<usize> = (1..=dim_names.len()).map(|i| word(i) as usize).collect();
    for (d, name) in dims.iter().zip(dim_names) {
        if *d == 0 {
            return Err(fail(format!(
                "expected a non-zero number of {name} in the IDX header, found 0"
            )));
        }
    }
    let body = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b.checked_add(head_len).is_some())
        .ok_or_else(|| fail(format!("header dimensions {dims:?} overflow")))?;
    let found = bytes.len() - head_len;
    let promise = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" x ");
    if found < body {
        return Err(fail(format!(
            "truncated: the header promises {promise} = {body} bytes of {what} after its \
             {head_len} bytes, found {found}{gz}"
        )));
    }
    if found > body {
        return Err(fail(format!(
            "trailing bytes: the header promises {promise} = {body} bytes of {what} after its \
             {head_len} bytes, found {found} ({} extra){gz}",
            found - body
        )));
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_map_to_unit_interval() {
        assert_eq!(
            bytes_to_unit(&[0, 255, 51]),
            vec![-1.0, 1.0, 51.0 / 127.5 - 1.0]
        );
    }

    #[test]
    fn split_files_prefer_raw_then_gz() {
        let (x, y) = split_files("/nonexistent", Split::Test);
        assert!(x.ends_with("t10k-images-idx3-ubyte.gz"), "{x:?}");
        assert!(y.ends_with("t10k-labels-idx1-ubyte.gz"), "{y:?}");
    }
}
