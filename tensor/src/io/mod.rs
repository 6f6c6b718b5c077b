//! Reading and writing safetensors files: weights, checkpoints, and exchange with PyTorch.
//!
//! The format (<https://github.com/huggingface/safetensors>, "Format" in its README) is:
//! 8 bytes holding `N`, a little-endian u64; `N` bytes of UTF-8 JSON mapping each tensor name to
//! `{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}`, plus an optional
//! `"__metadata__"` object of string to string; then the data: every tensor's little-endian,
//! row-major bytes, offsets relative to the start of the data, contiguous from 0 and ending
//! exactly at the end of the file. The `safetensors` crate does the parsing and writing; this
//! module maps the file with `memmap2`, views f32 data in place with `bytemuck` when it is
//! 4-byte aligned, writes atomically, and turns every malformed file into an [`Error`] that names
//! the file and says what was expected and what was found.
//!
//! Element types read: F32 (borrowed from the mapping when aligned), and F16, BF16 and F64,
//! converted to f32 (F64 rounds to nearest). Written: F32 only.
//!
//! ```
//! use std::collections::BTreeMap;
//! use tensor::io::{save, SafetensorsFile};
//! use tensor::Tensor;
//!
//! let path = std::env::temp_dir().join(format!("io-doc-{}.safetensors", std::process::id()));
//! let w = Tensor::randn(&[4, 3], 0, 0);
//! let meta = BTreeMap::from([("step".to_string(), "10".to_string())]);
//! save(&path, &[("conv.weight", &w)], &meta).unwrap();
//! let file = SafetensorsFile::open(&path).unwrap();
//! assert_eq!(file.shape("conv.weight").unwrap(), &[4, 3]);
//! assert_eq!(&*file.view("conv.weight").unwrap(), w.data()); // borrowed from the mapping
//! assert_eq!(file.metadata()["step"], "10");
//! # drop(file);
//! # std::fs::remove_file(&path).unwrap();
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensorError, View};
pub use safetensors::Dtype;

use crate::{Error, Result, Tensor};

#[cfg(test)]
mod tests;

/// The header-length limit of the `safetensors` crate (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Writes `tensors` (as F32) and `metadata` to `path` atomically: the bytes go to a temporary
/// file in the same directory, which is flushed to disk and then renamed over `path`, so `path`
/// holds either its old contents or the complete new file, never a partial one.
///
/// Names must be distinct and not `__metadata__`. Tensors are laid out by name (the crate's
/// order), so a file's bytes depend only on its contents, except that the `safetensors` crate
/// keeps metadata in a `HashMap`: with more than one metadata entry their order in the header
/// may differ between processes.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let mut seen = std::collections::HashSet::new();
    for (name, _) in tensors {
        if *name == "__metadata__" {
            return Err(Error::Invalid(format!(
                "{shown}: `__metadata__` is reserved by the safetensors header and cannot name a tensor"
            )));
        }
        if !seen.insert(*name) {
            return Err(Error::Invalid(format!(
                "{shown}: tensor name `{name}` appears more than once; names must be distinct"
            )));
        }
    }
    let views: Vec<(&str, F32View<'_>)> = tensors
        .iter()
        .map(|(name, t)| (*name, F32View(t)))
        .collect();
    let info: Option<HashMap<String, String>> = if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };

    let tmp = temporary_path(path);
    let result = write_and_sync(&views, &info, &tmp).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        sync_parent(path);
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes the file at `tmp` and flushes it to the disk.
fn write_and_sync(
    views: &[(&str, F32View<'_>)],
    info: &Option<HashMap<String, String>>,
    tmp: &Path,
) -> Result<()> {
    safetensors::serialize_to_file(views.iter().map(|(n, v)| (*n, v)), info, tmp).map_err(|e| {
        match e {
            SafeTensorError::IoError(source) => io_error(tmp, source),
            other => Error::Invalid(format!("{}: cannot serialise: {other}", tmp.display())),
        }
    })?;
    OpenOptions::new()
        .write(true)
        .open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(tmp, e))
}

/// A fresh name in the directory of `path`: `.<file name>.tmp-<pid>-<counter>`.
fn temporary_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "safetensors".into());
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Flushes the directory entry of a rename (best effort; not possible on every platform).
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A tensor as the `safetensors` writer sees it: F32, little-endian bytes.
struct F32View<'a>(&'a Tensor);

impl View for &F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.0.data()))
        } else {
            Cow::Owned(self.0.data().iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.0.numel() * 4
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the whole file (not just the data section).
    begin: usize,
    end: usize,
}

/// An open, memory-mapped safetensors file whose header has been checked.
///
/// The mapping is read-only; as with any memory map, another process truncating or rewriting
/// the file while it is open is undefined behaviour ([`save`] never does that: it renames a new
/// file over the old name, which leaves existing mappings intact).
pub struct SafetensorsFile {
    path: String,
    map: Mmap,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Opens and maps `path` and checks its header: the length prefix, the JSON, and that the
    /// offsets tile the data exactly with byte lengths matching shape and dtype.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path_ref = path.as_ref();
        let path = path_ref.display().to_string();
        let file = File::open(path_ref).map_err(|e| io_error(path_ref, e))?;
        let stat = file.metadata().map_err(|e| io_error(path_ref, e))?;
        let len = stat.len();
        let bad = |message: String| Error::Format {
            path: path.clone(),
            message,
        };
        if stat.is_dir() {
            return Err(bad("is a directory; expected a safetensors file".into()));
        }
        if len < 8 {
            return Err(bad(format!(
                "file is {len} bytes; a safetensors file starts with an 8-byte header length"
            )));
        }
        // SAFETY: the mapping is read-only and this type never hands out a mutable view; see the
        // type's documentation for the usual caveat about other processes changing the file.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path_ref, e))?;
        if map.len() as u64 != len {
            return Err(bad(format!(
                "file changed while opening: {len} bytes, then {} mapped",
                map.len()
            )));
        }
        let declared = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        if declared > len - 8 {
            return Err(bad(format!(
                "header length is {declared} bytes but only {} bytes follow the 8-byte prefix \
                 (truncated file, or not a safetensors file)",
                len - 8
            )));
        }
        if declared > MAX_HEADER {
            return Err(bad(format!(
                "header length is {declared} bytes; at most {MAX_HEADER} are accepted"
            )));
        }
        let header_len = declared as usize;
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            safetensors::SafeTensors::read_metadata(&map[..])
        }))
        .map_err(|_| bad("the safetensors parser panicked on this header".into()))?;
        let (n, meta) = parsed.map_err(|e| bad(describe(e, header_len, len)))?;
        debug_assert_eq!(n, header_len);
        let (entries, metadata) = entries_of(&meta, 8 + header_len, len as usize).map_err(bad)?;
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path,
            map,
            entries,
            index,
            metadata,
        })
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tensor names in file order (by data offset).
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The `__metadata__` map (empty if the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.index
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| Error::Missing {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    /// The element type of tensor `name` as stored.
    pub fn dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self.entry(name)?.dtype)
    }

    /// The elements of tensor `name` as f32: borrowed straight from the mapping when the file
    /// holds F32 at a 4-byte-aligned offset on a little-endian machine, otherwise copied (and
    /// converted from F16, BF16 or F64). Other dtypes are an error naming the tensor and dtype.
    pub fn view(&self, name: &str) -> Result<Cow<'_, [f32]>> {
        let e = self.entry(name)?;
        let bytes = self.map.get(e.begin..e.end).ok_or_else(|| Error::Format {
            path: self.path.clone(),
            message: format!(
                "tensor `{}`: bytes {}..{} lie outside the {}-byte file",
                e.name,
                e.begin,
                e.end,
                self.map.len()
            ),
        })?;
        let values: Cow<'_, [f32]> = match e.dtype {
            Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                Ok(floats) if cfg!(target_endian = "little") => Cow::Borrowed(floats),
                _ => Cow::Owned(decode(bytes, f32::from_le_bytes)),
            },
            Dtype::F64 => Cow::Owned(decode(bytes, |b: [u8; 8]| f64::from_le_bytes(b) as f32)),
            Dtype::F16 => Cow::Owned(decode(bytes, |b| f16_to_f32(u16::from_le_bytes(b)))),
            Dtype::BF16 => Cow::Owned(decode(bytes, |b| {
                f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
            })),
            other => {
                return Err(Error::Format {
                    path: self.path.clone(),
                    message: format!(
                        "tensor `{}` has dtype {other:?}; expected F32 (or F16, BF16, F64, which \
                         are converted)",
                        e.name
                    ),
                })
            }
        };
        let expected: usize = e.shape.iter().product();
        if values.len() != expected {
            return Err(Error::Format {
                path: self.path.clone(),
                message: format!(
                    "tensor `{}`: shape {:?} needs {expected} values but its bytes hold {}",
                    e.name,
                    e.shape,
                    values.len()
                ),
            });
        }
        Ok(values)
    }

    /// Tensor `name` copied into a [`Tensor`] (converted to f32 as in [`SafetensorsFile::view`]).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let values = self.view(name)?.into_owned();
        Ok(Tensor::from_vec(values, &self.entry(name)?.shape))
    }

    /// Every tensor, in file order.
    pub fn get_all(&self) -> Result<Vec<(String, Tensor)>> {
        self.entries
            .iter()
            .map(|e| Ok((e.name.clone(), self.get(&e.name)?)))
            .collect()
    }
}

/// Opens `path` and copies out every tensor, in file order.
pub fn load_all(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    SafetensorsFile::open(path)?.get_all()
}

/// Decodes little-endian elements of `N` bytes each.
fn decode<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

/// IEEE 754 binary16 to f32 (exact: every half value is a float).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match exp {
        0 => {
            let magnitude = mant as f32 * (1.0 / 16_777_216.0); // mant * 2^-24, exact
            f32::from_bits(sign | magnitude.to_bits())
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

/// The entries of a header that the crate has validated, sorted by offset, with their offsets
/// made absolute and re-checked against the file size.
fn entries_of(
    meta: &Metadata,
    data_start: usize,
    file_len: usize,
) -> std::result::Result<(Vec<Entry>, BTreeMap<String, String>), String> {
    let mut entries = Vec::new();
    for (name, info) in meta.tensors() {
        let (b, e) = info.data_offsets;
        let (begin, end) = match (data_start.checked_add(b), data_start.checked_add(e)) {
            (Some(begin), Some(end)) if begin <= end && end <= file_len => (begin, end),
            _ => {
                return Err(format!(
                    "tensor `{name}`: data_offsets [{b}, {e}] lie outside the {} data bytes",
                    file_len.saturating_sub(data_start)
                ))
            }
        };
        entries.push(Entry {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            begin,
            end,
        });
    }
    entries.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok((entries, metadata))
}

/// A sentence for each way the crate rejects a header.
fn describe(e: SafeTensorError, header_len: usize, file_len: u64) -> String {
    let data_len = file_len - 8 - header_len as u64;
    match e {
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            format!("header length {header_len} does not fit in the {file_len}-byte file")
        }
        SafeTensorError::HeaderTooLarge => {
            format!("header length {header_len} exceeds the {MAX_HEADER}-byte limit")
        }
        SafeTensorError::InvalidHeader => {
            format!("the {header_len}-byte header is not valid UTF-8; expected JSON text")
        }
        SafeTensorError::InvalidHeaderStart | SafeTensorError::InvalidHeaderDeserialization => {
            format!(
                "the {header_len}-byte header is not a valid safetensors JSON header; expected an \
                 object mapping each name to {{\"dtype\", \"shape\", \"data_offsets\"}} with a \
                 known dtype (F32, F16, BF16, F64, I64, ...) and string-valued \"__metadata__\""
            )
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}`: data_offsets are out of order, overlapping or leave a gap; expected \
             each tensor to begin where the previous one ends, starting at 0"
        ),
        SafeTensorError::TensorInvalidInfo => "a tensor's byte length (end - begin of \
             data_offsets) disagrees with its shape times its dtype size"
            .to_string(),
        SafeTensorError::ValidationOverflow => {
            "a tensor's shape times its dtype size overflows the address space".to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the tensors' data_offsets do not end at the end of the file: the file holds \
             {data_len} data bytes after the header (truncated file, or trailing bytes)"
        ),
        other => format!("invalid safetensors header: {other}"),
    }
}
