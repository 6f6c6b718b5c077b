//! PNG files: a saved grid (grey and RGB) and a trajectory strip load back with the same pixel
//! values, writes are atomic (no temporary file left behind), and a line plot is drawn.

use std::fs;
use std::path::PathBuf;

use ddpm::data::shapes::shapes;
use ddpm::image::{load_png, save_grid_png, save_line_plot_png, save_strip_png, to_byte, PAD};
use tensor::rng::Rng;
use tensor::Tensor;

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "ddpm-data-image-{name}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Value of channel `ch` at `(x, y)` of a `[1, C, H, W]` tensor.
fn at(t: &Tensor, ch: usize, x: usize, y: usize) -> f32 {
    let s = t.shape();
    t.data()[(ch * s[2] + y) * s[3] + x]
}

/// The byte a tile pixel should have after the round trip, as a value in `[-1, 1]`.
fn quantised(v: f32) -> f32 {
    f32::from(to_byte(v)) / 127.5 - 1.0
}

#[test]
fn grid_round_trip_grey_and_rgb() {
    let dir = temp_dir("grid");
    for c in [1usize, 3] {
        let (n, h, w, cols, scale) = (5, 4, 3, 2, 2);
        let images = Rng::new(1, c as u64).uniform_range(&[n, c, h, w], -1.2, 1.2);
        let path = dir.join(format!("grid{c}.png"));
        save_grid_png(&path, &images, cols, scale).unwrap();
        let back = load_png(&path).unwrap();
        let (tw, th) = (w * scale, h * scale);
        assert_eq!(
            back.shape(),
            &[1, c, 3 * (th + PAD) + PAD, cols * (tw + PAD) + PAD]
        );
        for i in 0..n {
            let (x0, y0) = (PAD + (i % cols) * (tw + PAD), PAD + (i / cols) * (th + PAD));
            for ch in 0..c {
                for y in 0..th {
                    for x in 0..tw {
                        let want = images.data()[((i * c + ch) * h + y / scale) * w + x / scale];
                        assert_eq!(at(&back, ch, x0 + x, y0 + y), quantised(want));
                    }
                }
            }
        }
        // the sixth tile of the 2x3 grid is empty padding
        let mid = quantised(128.0 / 127.5 - 1.0);
        assert_eq!(
            at(&back, 0, PAD + tw + PAD + 1, PAD + 2 * (th + PAD) + 1),
            mid
        );
    }
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "only the two PNGs, no temporary files: {left:?}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shapes_grid_is_exact() {
    // shapes pixels at -1 and +1 survive exactly
    let dir = temp_dir("shapes");
    let d = shapes(16, 5);
    let path = dir.join("shapes.png");
    save_grid_png(&path, d.images(), 4, 1).unwrap();
    let back = load_png(&path).unwrap();
    assert_eq!(back.shape(), &[1, 1, 4 * 34 + 2, 4 * 34 + 2]);
    assert_eq!(at(&back, 0, PAD, PAD), -1.0);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn strip_rows_are_samples_and_columns_steps() {
    let dir = temp_dir("strip");
    let frames: Vec<Tensor> = (0..4)
        .map(|step| {
            let data = (0..3 * 4)
                .map(|k| (k / 4) as f32 * 0.5 - 1.0 + step as f32 * 0.1)
                .collect();
            Tensor::from_vec(data, &[3, 1, 2, 2])
        })
        .collect();
    let path = dir.join("strip.png");
    save_strip_png(&path, &frames, 1).unwrap();
    let back = load_png(&path).unwrap();
    assert_eq!(back.shape(), &[1, 1, 3 * 4 + 2, 4 * 4 + 2]);
    for sample in 0..3 {
        for step in 0..4 {
            let want = quantised(sample as f32 * 0.5 - 1.0 + step as f32 * 0.1);
            assert_eq!(at(&back, 0, PAD + step * 4, PAD + sample * 4), want);
        }
    }
    assert!(save_strip_png(dir.join("none.png"), &[], 1).is_err());
    let odd = vec![frames[0].clone(), Tensor::zeros(&[2, 1, 2, 2])];
    assert!(save_strip_png(dir.join("odd.png"), &odd, 1).is_err());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn line_plot_draws_series() {
    let dir = temp_dir("plot");
    let loss: Vec<(f64, f64)> = (0..200)
        .map(|i| (i as f64, 1.0 / (1.0 + i as f64 * 0.1)))
        .collect();
    let ema: Vec<(f64, f64)> = loss.iter().map(|&(x, y)| (x, y * 0.9)).collect();
    let with_gaps = [(0.0, 1.0), (1.0, f64::NAN), (2.0, -1.0), (3.0, 0.5)];
    for (name, log_y) in [("lin.png", false), ("log.png", true)] {
        let path = dir.join(name);
        save_line_plot_png(
            &path,
            &[("loss", &loss), ("ema", &ema), ("gaps", &with_gaps)],
            320,
            200,
            log_y,
        )
        .unwrap();
        let img = load_png(&path).unwrap();
        assert_eq!(img.shape(), &[1, 3, 200, 320]);
        // some blue (31, 119, 180) and orange (255, 127, 14) pixels are drawn
        let plane = 200 * 320;
        let d = img.data();
        let count = |rgb: [u8; 3]| {
            (0..plane)
                .filter(|&k| (0..3).all(|c| d[c * plane + k] == f32::from(rgb[c]) / 127.5 - 1.0))
                .count()
        };
        assert!(count([31, 119, 180]) > 100, "{name}: blue line");
        assert!(count([255, 127, 14]) > 100, "{name}: orange line");
        assert!(count([0, 0, 0]) > 300, "{name}: axes and digits");
    }
    // empty and degenerate series still draw axes
    save_line_plot_png(dir.join("empty.png"), &[("none", &[])], 100, 80, true).unwrap();
    save_line_plot_png(
        dir.join("flat.png"),
        &[("flat", &[(1.0, 2.0), (1.0, 2.0)])],
        100,
        80,
        false,
    )
    .unwrap();
    assert!(save_line_plot_png(dir.join("tiny.png"), &[], 10, 10, false).is_err());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_png_errors_name_the_file() {
    let dir = temp_dir("bad-png");
    let path = dir.join("not.png");
    fs::write(&path, b"hello").unwrap();
    let e = load_png(&path).unwrap_err().to_string();
    assert!(e.contains("not.png") && e.contains("expected a PNG"), "{e}");
    let e = load_png(dir.join("missing.png")).unwrap_err().to_string();
    assert!(e.contains("missing.png"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}
