//! The error type for everything that touches files or user input.

use std::fmt;

/// An error from reading or writing tensors, with a message that says what was expected and
/// what was found.
#[derive(Debug)]
pub enum Error {
    /// An operating-system error, with the path it concerned.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A file whose contents are not what the format requires.
    Format { path: String, message: String },
    /// A tensor asked for by name that the file does not hold.
    Missing { path: String, name: String },
    /// Any other invalid input, described in full.
    Invalid(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Format { path, message } => write!(f, "{path}: {message}"),
            Error::Missing { path, name } => write!(f, "{path}: no tensor named `{name}`"),
            Error::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
