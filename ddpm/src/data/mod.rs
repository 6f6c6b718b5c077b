//! Data sets: labelled images as one `[N, C, H, W]` tensor in `[-1, 1]`.
//!
//! Sources: the built-in procedural [`shapes`] (the default, no download), MNIST-style
//! [`idx`] files (Fashion-MNIST among them) and [`cifar`]-10 binary files. [`DataSource`]
//! parses the command line's names for them and [`load`] reads one split. Every malformed file
//! is an error naming the file and saying what was expected and what was found.
//!
//! ```
//! use ddpm::data::{load, random_hflip, DataSource, Split};
//! use tensor::rng::Rng;
//! let data = load(&"shapes".parse::<DataSource>()?, Split::Test)?;
//! let mut rng = Rng::new(0, 0);
//! let batch = random_hflip(&data.batch(&rng.permutation(data.len())[..16]), &mut rng);
//! assert_eq!(batch.shape(), &[16, 1, 32, 32]);
//! # Ok::<(), tensor::Error>(())
//! ```

mod bytes;
pub mod cifar;
mod dataset;
pub mod idx;
pub mod shapes;
mod source;

pub use dataset::{random_hflip, Dataset, BACKGROUND};
pub use source::{load, DataSource, Split, FASHION_MNIST_DIR};
