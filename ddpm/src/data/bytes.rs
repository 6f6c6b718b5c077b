//! A data file's bytes: memory-mapped when raw, decompressed into memory when gzipped.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Deref;
use std::path::Path;

use flate2::read::MultiGzDecoder;
use memmap2::Mmap;
use tensor::{Error, Result};

/// The two magic bytes that open every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The bytes of a file: a read-only mapping of a raw file, or the decompressed contents of a
/// gzipped one.
pub(crate) enum FileBytes {
    /// A raw file, mapped.
    Mapped(Mmap),
    /// A gzipped file, decompressed.
    Inflated(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Inflated(v) => v,
        }
    }
}

impl FileBytes {
    /// Whether the file was gzipped.
    pub(crate) fn was_gzipped(&self) -> bool {
        matches!(self, FileBytes::Inflated(_))
    }
}

/// The path as the error messages show it.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Opens `path`, which should hold `what` (e.g. "IDX images"), and returns its bytes: a gzip
/// stream (recognised by its magic bytes, whatever the file's name) is decompressed, any other
/// file is mapped. A missing or empty file, and a corrupt or truncated gzip stream, are errors
/// that name the file and say what was expected.
pub(crate) fn read_file(path: &Path, what: &str) -> Result<FileBytes> {
    let io_err = |source: io::Error| {
        let source = if source.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("expected a file of {what}, found no such file"),
            )
        } else {
            source
        };
        Error::Io {
            path: shown(path),
            source,
        }
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Err(Error::Format {
            path: shown(path),
            message: format!("expected a file of {what}, found an empty file"),
        });
    }
    // SAFETY: the mapping is read-only and private to this process; like every reader of a
    // mapped file we rely on no one truncating the file while it is mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
    if map.len() < 2 || map[..2] != GZIP_MAGIC {
        return Ok(FileBytes::Mapped(map));
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(&map[..])
        .read_to_end(&mut out)
        .map_err(|e| Error::Format {
            path: shown(path),
            message: format!(
                "expected a complete gzip stream of {what}, found a corrupt or truncated one \
                 ({e}) after {} decompressed bytes",
                out.len()
            ),
        })?;
    if out.is_empty() {
        return Err(Error::Format {
            path: shown(path),
            message: format!("expected {what}, found a gzip stream that decompresses to nothing"),
        });
    }
    Ok(FileBytes::Inflated(out))
}
