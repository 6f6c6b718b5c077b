//! Round trips, and one deliberately broken file per way a safetensors file can be wrong: each
//! must give an `Err` naming the file, never a panic.

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tensor-io-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes `prefix` (the 8-byte header length; `None` means the true length of `header`), then
/// `header`, then `data`.
fn raw(path: &Path, prefix: Option<u64>, header: &str, data: &[u8]) {
    let n = prefix.unwrap_or(header.len() as u64);
    let mut bytes = n.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    fs::write(path, bytes).unwrap();
}

/// The error message of opening `path`, which must fail and mention the path.
fn open_error(path: &Path) -> String {
    match SafetensorsFile::open(path) {
        Ok(_) => panic!("{} opened but is malformed", path.display()),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&path.display().to_string()),
                "message does not name the file: {message}"
            );
            message
        }
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn io_round_trip_is_bitwise() {
    let dir = TempDir::new("roundtrip");
    let path = dir.file("model.safetensors");
    let special = Tensor::from_vec(
        vec![
            -0.0,
            f32::from_bits(0x7fc0_1234),
            f32::INFINITY,
            f32::MIN_POSITIVE / 8.0,
        ],
        &[2, 2],
    );
    let big = Tensor::randn(&[3, 5, 7], 1, 0);
    let scalar = Tensor::scalar(2.5);
    let empty = Tensor::zeros(&[0, 3]);
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert("step".to_string(), "1200".to_string());
    let tensors = [
        ("z.special", &special),
        ("a.big", &big),
        ("scalar", &scalar),
        ("empty", &empty),
    ];
    save(&path, &tensors, &metadata).unwrap();

    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.metadata(), &metadata);
    assert_eq!(file.names().len(), 4);
    for (name, t) in tensors {
        assert_eq!(file.shape(name).unwrap(), t.shape());
        assert_eq!(file.dtype(name).unwrap(), Dtype::F32);
        let got = file.get(name).unwrap();
        assert_eq!(got.shape(), t.shape());
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got.data()), bits(t.data()), "tensor {name}");
        // The writer pads the header to 8 bytes, so F32 views borrow the mapping.
        assert!(matches!(file.view(name).unwrap(), Cow::Borrowed(_)));
    }
    let all = load_all(&path).unwrap();
    let mut names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["a.big", "empty", "scalar", "z.special"]);
}

#[test]
fn io_save_replaces_atomically_and_leaves_no_temporaries() {
    let dir = TempDir::new("atomic");
    let path = dir.file("ckpt.safetensors");
    let none = BTreeMap::new();
    save(&path, &[("w", &Tensor::ones(&[4]))], &none).unwrap();
    save(&path, &[("w", &Tensor::full(&[2], 7.0))], &none).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.get("w").unwrap().data(), &[7.0, 7.0]);
    assert!(file.metadata().is_empty());
    let listing: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(listing.len(), 1, "left over: {listing:?}");
}

#[test]
fn io_save_errors_leave_nothing_behind() {
    let dir = TempDir::new("saveerr");
    let t = Tensor::ones(&[2]);
    let none = BTreeMap::new();
    let missing_dir = dir.file("no/such/dir/x.safetensors");
    assert!(matches!(
        save(&missing_dir, &[("w", &t)], &none),
        Err(Error::Io { .. })
    ));
    let path = dir.file("x.safetensors");
    let dup = save(&path, &[("w", &t), ("w", &t)], &none).unwrap_err();
    assert!(dup.to_string().contains("more than once"), "{dup}");
    let reserved = save(&path, &[("__metadata__", &t)], &none).unwrap_err();
    assert!(reserved.to_string().contains("reserved"), "{reserved}");
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0);
}

#[test]
fn io_missing_file() {
    let dir = TempDir::new("missing");
    let path = dir.file("absent.safetensors");
    match SafetensorsFile::open(&path) {
        Err(Error::Io { path: p, .. }) => assert!(p.contains("absent.safetensors")),
        other => panic!("expected an Io error, got {:?}", other.map(|_| ())),
    }
    assert!(load_all(&path).is_err());
    assert!(open_error(&dir.0).contains("directory"));
}

#[test]
fn io_empty_and_short_files() {
    let dir = TempDir::new("short");
    for len in [0, 5] {
        let path = dir.file(&format!("short{len}.safetensors"));
        fs::write(&path, vec![0u8; len]).unwrap();
        let m = open_error(&path);
        assert!(
            m.contains(&format!("{len} bytes")) && m.contains("8-byte"),
            "{m}"
        );
    }
}

#[test]
fn io_header_longer_than_file() {
    let dir = TempDir::new("hdrlen");
    let path = dir.file("f.safetensors");
    raw(&path, Some(1000), "{}", &[]);
    let m = open_error(&path);
    assert!(m.contains("1000") && m.contains("only 2 bytes"), "{m}");
    raw(&path, Some(u64::MAX), "{}", &[]);
    open_error(&path);
}

#[test]
fn io_header_truncated_mid_json() {
    let dir = TempDir::new("trunc");
    let path = dir.file("f.safetensors");
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    // Declared length right, but the file stops inside the header.
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header.as_bytes()[..20]);
    fs::write(&path, bytes).unwrap();
    let m = open_error(&path);
    assert!(m.contains("truncated"), "{m}");
}

#[test]
fn io_header_not_json_or_not_utf8() {
    let dir = TempDir::new("json");
    let path = dir.file("f.safetensors");
    raw(&path, None, "this is not json", &[]);
    assert!(open_error(&path).contains("not a valid safetensors JSON header"));
    raw(&path, None, "[1, 2, 3]", &[]);
    open_error(&path);
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    fs::write(&path, bytes).unwrap();
    assert!(open_error(&path).contains("UTF-8"));
}

#[test]
fn io_offsets_outside_data_or_trailing_bytes() {
    let dir = TempDir::new("offsets");
    let path = dir.file("f.safetensors");
    let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    raw(&path, None, header, &f32_bytes(&[1.0, 2.0]));
    let m = open_error(&path);
    assert!(m.contains("8 data bytes"), "{m}");
    raw(&path, None, header, &[0u8; 20]);
    assert!(open_error(&path).contains("20 data bytes"));
}

#[test]
fn io_overlapping_or_misordered_offsets() {
    let dir = TempDir::new("overlap");
    let path = dir.file("f.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                     "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    raw(&path, None, header, &[0u8; 12]);
    assert!(open_error(&path).contains("tensor `b`"));
    let header = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#;
    raw(&path, None, header, &[0u8; 8]);
    open_error(&path);
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    raw(&path, None, header, &[0u8; 8]);
    assert!(open_error(&path).contains("starting at 0"));
}

#[test]
fn io_duplicate_name_in_header() {
    let dir = TempDir::new("dupkey");
    let path = dir.file("f.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                     "a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    raw(&path, None, header, &[0u8; 8]);
    open_error(&path);
}

#[test]
fn io_shape_disagrees_with_bytes_or_overflows() {
    let dir = TempDir::new("shape");
    let path = dir.file("f.safetensors");
    let header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    raw(&path, None, header, &[0u8; 8]);
    assert!(open_error(&path).contains("disagrees with its shape"));
    let header = r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#;
    raw(&path, None, header, &[0u8; 8]);
    assert!(open_error(&path).contains("overflows"));
}

#[test]
fn io_wrong_or_unknown_dtype() {
    let dir = TempDir::new("dtype");
    let path = dir.file("f.safetensors");
    let header = r#"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},
                     "w":{"dtype":"F32","shape":[1],"data_offsets":[16,20]}}"#;
    let mut data = vec![0u8; 16];
    data.extend_from_slice(&3.5f32.to_le_bytes());
    raw(&path, None, header, &data);
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.names(), ["ids", "w"]);
    let m = file.get("ids").unwrap_err().to_string();
    assert!(
        m.contains("`ids`") && m.contains("I64") && m.contains("expected F32"),
        "{m}"
    );
    assert_eq!(file.get("w").unwrap().data(), &[3.5]);
    assert!(load_all(&path).is_err());

    let header = r#"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#;
    raw(&path, None, header, &[0u8; 4]);
    assert!(open_error(&path).contains("known dtype"));
}

#[test]
fn io_absent_name() {
    let dir = TempDir::new("absent");
    let path = dir.file("f.safetensors");
    save(&path, &[("w", &Tensor::ones(&[1]))], &BTreeMap::new()).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let e = file.get("bias").unwrap_err();
    assert!(matches!(&e, Error::Missing { name, .. } if name == "bias"));
    assert!(e.to_string().contains("f.safetensors"));
    assert!(file.view("bias").is_err() && file.shape("bias").is_err());
}

#[test]
fn io_unaligned_data_is_copied() {
    let dir = TempDir::new("unaligned");
    let path = dir.file("f.safetensors");
    // A 57-byte header puts the data at byte 65: not 4-byte aligned.
    let mut header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#.to_string();
    while (8 + header.len()) % 4 != 1 {
        header.push(' ');
    }
    raw(&path, None, &header, &f32_bytes(&[1.5, -2.0, 1e-30]));
    let file = SafetensorsFile::open(&path).unwrap();
    let view = file.view("w").unwrap();
    assert!(matches!(view, Cow::Owned(_)));
    assert_eq!(&*view, &[1.5, -2.0, 1e-30]);
}

#[test]
fn io_converts_half_bfloat_and_double() {
    let dir = TempDir::new("convert");
    let path = dir.file("f.safetensors");
    let header = r#"{"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},
                     "h":{"dtype":"F16","shape":[6],"data_offsets":[16,28]},
                     "b":{"dtype":"BF16","shape":[2],"data_offsets":[28,32]}}"#;
    let mut data: Vec<u8> = [0.1f64, -3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), +inf, -0.0
    for h in [0x3c00u16, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x8000] {
        data.extend_from_slice(&h.to_le_bytes());
    }
    for b in [0x3f80u16, 0xc0a0] {
        data.extend_from_slice(&b.to_le_bytes());
    }
    raw(&path, None, header, &data);
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.get("d").unwrap().data(), &[0.1f32, -3.0]);
    let h = file.get("h").unwrap();
    assert_eq!(&h.data()[..4], &[1.0, -2.0, 65504.0, 2f32.powi(-24)]);
    assert_eq!(h.data()[4], f32::INFINITY);
    assert_eq!(h.data()[5].to_bits(), (-0.0f32).to_bits());
    assert_eq!(file.get("b").unwrap().data(), &[1.0, -5.0]);
    assert!(f16_to_f32(0x7e00).is_nan());
}
