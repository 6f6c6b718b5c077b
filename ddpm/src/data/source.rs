//! Where a data set comes from, as the command line names it, and [`load`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tensor::{Error, Result};

use super::{cifar, idx, shapes, Dataset};

/// The default directory of Fashion-MNIST (the four gzipped IDX files).
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist/";

/// Which half of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training images.
    Train,
    /// The held-out test images.
    Test,
}

/// A data set as the command line names it.
///
/// | string | meaning |
/// | --- | --- |
/// | `shapes` | the built-in procedural shapes ([`shapes::shapes`]), 1x32x32, 5 classes |
/// | `fashion-mnist` or `fashion-mnist:DIR` | Fashion-MNIST IDX files in [`FASHION_MNIST_DIR`] or `DIR`, 1x28x28, 10 classes |
/// | `idx:DIR` | any MNIST-format directory (`train-images-idx3-ubyte[.gz]`, `t10k-*`) |
/// | `cifar10:DIR` | CIFAR-10 binary files (`data_batch_1..5.bin`, `test_batch.bin`), 3x32x32 |
///
/// ```
/// use ddpm::data::DataSource;
/// let s: DataSource = "idx:/data/mnist".parse().unwrap();
/// assert_eq!(s, DataSource::Idx("/data/mnist".into()));
/// assert_eq!(s.to_string(), "idx:/data/mnist");
/// assert!("mnist".parse::<DataSource>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// The built-in shapes.
    Shapes,
    /// Fashion-MNIST in this directory.
    FashionMnist(PathBuf),
    /// An MNIST-format directory.
    Idx(PathBuf),
    /// A CIFAR-10 binary directory.
    Cifar10(PathBuf),
}

impl Default for DataSource {
    /// The built-in shapes, which need no download.
    fn default() -> DataSource {
        DataSource::Shapes
    }
}

impl FromStr for DataSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<DataSource> {
        let (kind, dir) = match s.split_once(':') {
            Some((k, d)) => (k, Some(d)),
            None => (s, None),
        };
        let need_dir = |dir: Option<&str>| match dir {
            Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
            _ => Err(Error::Invalid(format!(
                "data set `{s}`: expected `{kind}:DIR` with a directory, found none"
            ))),
        };
        match kind {
            "shapes" if dir.is_none() => Ok(DataSource::Shapes),
            "fashion-mnist" => match dir {
                None => Ok(DataSource::FashionMnist(FASHION_MNIST_DIR.into())),
                d => need_dir(d).map(DataSource::FashionMnist),
            },
            "idx" => need_dir(dir).map(DataSource::Idx),
            "cifar10" => need_dir(dir).map(DataSource::Cifar10),
            _ => Err(Error::Invalid(format!(
                "unknown data set `{s}`: expected `shapes`, `fashion-mnist[:DIR]`, `idx:DIR` or \
                 `cifar10:DIR`"
            ))),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Shapes => f.write_str("shapes"),
            DataSource::FashionMnist(d) if d == &PathBuf::from(FASHION_MNIST_DIR) => {
                f.write_str("fashion-mnist")
            }
            DataSource::FashionMnist(d) => write!(f, "fashion-mnist:{}", d.display()),
            DataSource::Idx(d) => write!(f, "idx:{}", d.display()),
            DataSource::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
        }
    }
}

/// Loads `split` of `source`. Images keep their stored size (28x28 for MNIST-style files; use
/// [`Dataset::pad_to`] for a model that wants 32x32); the shapes are made here
/// ([`shapes::TRAIN_LEN`] training and [`shapes::TEST_LEN`] test images, with different seeds).
/// Fashion-MNIST has 10 classes; a generic IDX set has one more than its largest label.
pub fn load(source: &DataSource, split: Split) -> Result<Dataset> {
    match source {
        DataSource::Shapes => Ok(match split {
            Split::Train => shapes::shapes(shapes::TRAIN_LEN, shapes::TRAIN_SEED),
            Split::Test => shapes::shapes(shapes::TEST_LEN, shapes::TEST_SEED),
        }),
        DataSource::FashionMnist(dir) => idx::load_dir(dir, split, "fashion-mnist", Some(10)),
        DataSource::Idx(dir) => idx::load_dir(dir, split, "idx", None),
        DataSource::Cifar10(dir) => cifar::load_dir(dir, split),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for s in [
            "shapes",
            "fashion-mnist",
            "fashion-mnist:/d",
            "idx:/a/b",
            "cifar10:c",
        ] {
            let parsed: DataSource = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
        }
        assert_eq!(
            "fashion-mnist".parse::<DataSource>().unwrap(),
            DataSource::FashionMnist(FASHION_MNIST_DIR.into())
        );
        assert_eq!(DataSource::default(), DataSource::Shapes);
    }

    #[test]
    fn parse_errors_say_what_was_expected() {
        for bad in ["idx", "idx:", "cifar10", "mnist", "shapes:x", ""] {
            let e = bad.parse::<DataSource>().unwrap_err().to_string();
            assert!(e.contains("expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn shapes_splits_differ() {
        let train = load(&DataSource::Shapes, Split::Train).unwrap();
        let test = load(&DataSource::Shapes, Split::Test).unwrap();
        assert_eq!(train.len(), shapes::TRAIN_LEN);
        assert_eq!(test.len(), shapes::TEST_LEN);
        assert_ne!(
            &train.images().data()[..1024],
            &test.images().data()[..1024]
        );
    }
}
