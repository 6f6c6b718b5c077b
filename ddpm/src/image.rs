//! Images as PNG files: grids of samples, denoising trajectories, and a small line-plot
//! renderer for the loss curve and per-timestep bits/dim, plus a reader for tests.
//!
//! Pixel values in `[-1, 1]` map to bytes by `round((v + 1) * 127.5)` after clamping (so -1 is
//! black and +1 white); reading maps byte `x` back to `x / 127.5 - 1`. Every file is written to
//! a temporary file beside its destination and renamed into place, so a reader never sees half
//! a PNG.
//!
//! ```no_run
//! use ddpm::image::{save_grid_png, save_line_plot_png};
//! use tensor::Tensor;
//! let samples = Tensor::full(&[16, 1, 32, 32], -1.0);
//! save_grid_png("samples.png", &samples, 4, 2)?;
//! let loss = [(0.0, 1.0), (1.0, 0.5), (2.0, 0.3)];
//! save_line_plot_png("loss.png", &[("loss", &loss[..])], 480, 320, true)?;
//! # Ok::<(), tensor::Error>(())
//! ```

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tensor::{Error, Result, Tensor};

/// Pixels of padding between tiles of a grid and around it.
pub const PAD: usize = 2;
/// The grey of the padding.
const PAD_GREY: u8 = 128;

/// An 8-bit image in memory: `channels` (1 grey or 3 RGB) interleaved bytes per pixel.
struct Canvas {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize, channels: usize, fill: u8) -> Canvas {
        Canvas {
            width,
            height,
            channels,
            pixels: vec![fill; width * height * channels],
        }
    }

    /// Sets pixel `(x, y)` to `rgb` (its first component for grey), ignoring points outside.
    fn put(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            return;
        }
        let at = (y as usize * self.width + x as usize) * self.channels;
        self.pixels[at..at + self.channels].copy_from_slice(&rgb[..self.channels]);
    }
}

/// A value in `[-1, 1]` as a byte: clamped, then `round((v + 1) * 127.5)`; NaN is 0.
pub fn to_byte(v: f32) -> u8 {
    if v.is_nan() {
        return 0;
    }
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Writes `images` (`[N, C, H, W]`, `C` 1 for grey or 3 for RGB, values in `[-1, 1]`) as one
/// PNG grid with `columns` tiles per row (rows as needed), each pixel repeated `scale` times
/// in both directions, with [`PAD`] grey pixels between and around the tiles.
pub fn save_grid_png(
    path: impl AsRef<Path>,
    images: &Tensor,
    columns: usize,
    scale: usize,
) -> Result<()> {
    let path = path.as_ref();
    let canvas = grid(images, columns, scale)
        .map_err(|m| Error::Invalid(format!("{}: {m}", path.display())))?;
    write_png(path, &canvas, &[])
}

/// Writes a trajectory: `frames[j]` is the batch (`[N, C, H, W]`) at step `j`, and the PNG has
/// one row per sample and one column per step, laid out as [`save_grid_png`] does.
pub fn save_strip_png(path: impl AsRef<Path>, frames: &[Tensor], scale: usize) -> Result<()> {
    let path = path.as_ref();
    let fail = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    let first = frames
        .first()
        .ok_or_else(|| fail("expected at least one frame, found none".into()))?;
    let shape = first.shape().to_vec();
    if let Some(f) = frames.iter().find(|f| f.shape() != shape) {
        return Err(fail(format!(
            "expected every frame of shape {shape:?}, found {:?}",
            f.shape()
        )));
    }
    if shape.len() != 4 {
        return Err(fail(format!(
            "expected frames [N, C, H, W], found shape {shape:?}"
        )));
    }
    let (n, size) = (shape[0], shape[1] * shape[2] * shape[3]);
    let mut data = Vec::with_capacity(n * frames.len() * size);
    for i in 0..n {
        for f in frames {
            data.extend_from_slice(&f.data()[i * size..(i + 1) * size]);
        }
    }
    let all = Tensor::from_vec(data, &[n * frames.len(), shape[1], shape[2], shape[3]]);
    let canvas = grid(&all, frames.len(), scale).map_err(fail)?;
    write_png(path, &canvas, &[])
}

/// Lays out a grid (see [`save_grid_png`]); the error is a message without the path.
fn grid(images: &Tensor, columns: usize, scale: usize) -> std::result::Result<Canvas, String> {
    let s = images.shape();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) || s[0] == 0 || s[2] == 0 || s[3] == 0 {
        return Err(format!(
            "expected a non-empty batch [N, C, H, W] with C = 1 or 3, found shape {s:?}"
        ));
    }
    if columns == 0 || scale == 0 {
        return Err(format!(
            "expected at least one column and a scale of at least 1, found {columns} columns and \
             scale {scale}"
        ));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let columns = columns.min(n);
    let rows = n.div_ceil(columns);
    let (tw, th) = (w * scale, h * scale);
    let mut canvas = Canvas::new(
        columns * (tw + PAD) + PAD,
        rows * (th + PAD) + PAD,
        c,
        PAD_GREY,
    );
    let data = images.data();
    for i in 0..n {
        let (x0, y0) = (
            PAD + (i % columns) * (tw + PAD),
            PAD + (i / columns) * (th + PAD),
        );
        let img = &data[i * c * h * w..(i + 1) * c * h * w];
        for y in 0..th {
            let row = (y0 + y) * canvas.width;
            for x in 0..tw {
                let src = (y / scale) * w + x / scale;
                let at = (row + x0 + x) * c;
                for ch in 0..c {
                    canvas.pixels[at + ch] = to_byte(img[ch * h * w + src]);
                }
            }
        }
    }
    Ok(canvas)
}

/// Reads an 8-bit grey or RGB PNG as a `[1, C, H, W]` tensor in `[-1, 1]`.
pub fn load_png(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| Error::Io {
        path: shown.clone(),
        source,
    })?;
    let fail = |message: String| Error::Format {
        path: shown.clone(),
        message,
    };
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| {
            fail(format!(
                "expected a PNG file, found one that does not decode: {e}"
            ))
        })?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| {
        fail(format!(
            "expected a PNG file, found one that does not decode: {e}"
        ))
    })?;
    let c = match (info.color_type, info.bit_depth) {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => 1,
        (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
        (ct, bd) => {
            return Err(fail(format!(
                "expected an 8-bit grey or RGB PNG, found {ct:?} at {bd:?}"
            )))
        }
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let mut out = vec![0.0f32; c * h * w];
    for y in 0..h {
        let line = &buf[y * info.line_size..y * info.line_size + w * c];
        for x in 0..w {
            for ch in 0..c {
                out[ch * h * w + y * w + x] = f32::from(line[x * c + ch]) / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(out, &[1, c, h, w]))
}

/// Encodes `canvas` as PNG (with `text` as tEXt chunks) into a temporary file beside `path`,
/// then renames it to `path`.
fn write_png(path: &Path, canvas: &Canvas, text: &[(&str, String)]) -> Result<()> {
    let shown = path.display().to_string();
    let name = path.file_name().ok_or_else(|| {
        Error::Invalid(format!("{shown}: expected a file path, found no file name"))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let io = |source: std::io::Error| Error::Io {
        path: shown.clone(),
        source,
    };
    let encode = || -> std::io::Result<()> {
        let mut out = BufWriter::new(File::create(&tmp)?);
        let mut enc = png::Encoder::new(&mut out, canvas.width as u32, canvas.height as u32);
        enc.set_color(if canvas.channels == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            enc.add_text_chunk(key.to_string(), value.clone())?;
        }
        let mut writer = enc.write_header()?;
        writer.write_image_data(&canvas.pixels)?;
        writer.finish()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    if let Err(e) = encode() {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(e)
    })
}

/// Line colours, in series order: blue, orange, green, red, purple, brown.
pub const SERIES_COLOURS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

/// Draws the `series` (name and `(x, y)` points, in order) as lines on a `width x height`
/// white RGB canvas, with axes, about five labelled ticks on each (3x5-pixel digits), and a
/// logarithmic y axis if `log_y`. Points that are not finite (or not positive on a log axis)
/// break their line. Names are not drawn: the colours follow [`SERIES_COLOURS`] in order, and
/// the legend `name: colour` is stored in the PNG's `Legend` text chunk.
pub fn save_line_plot_png(
    path: impl AsRef<Path>,
    series: &[(&str, &[(f64, f64)])],
    width: usize,
    height: usize,
    log_y: bool,
) -> Result<()> {
    let path = path.as_ref();
    if width < 64 || height < 48 {
        return Err(Error::Invalid(format!(
            "{}: expected a plot of at least 64x48 pixels, found {width}x{height}",
            path.display()
        )));
    }
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let points = series
        .iter()
        .flat_map(|(_, s)| s.iter().filter(|p| usable(p)));
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x_lo, x_hi) = (x_lo.min(x), x_hi.max(x));
        (y_lo, y_hi) = (y_lo.min(ty(y)), y_hi.max(ty(y)));
    }
    if x_lo > x_hi {
        (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
    }
    widen(&mut x_lo, &mut x_hi);
    widen(&mut y_lo, &mut y_hi);
    let x_ticks = linear_ticks(x_lo, x_hi);
    let y_ticks = if log_y {
        log_ticks(y_lo, y_hi)
    } else {
        linear_ticks(y_lo, y_hi)
    };

    let fs = if height >= 280 { 2 } else { 1 }; // font scale
    let label_w = |s: &str| (s.len() * 4 * fs) as i64;
    let widest = y_ticks.iter().map(|(_, s)| label_w(s)).max().unwrap_or(0);
    let (left, right) = (
        widest + 8,
        width as i64 - 10 - x_ticks.last().map_or(0, |t| label_w(&t.1) / 2),
    );
    let (top, bottom) = (8, height as i64 - 5 * fs as i64 - 10);
    let px = |x: f64| left + ((x - x_lo) / (x_hi - x_lo) * (right - left) as f64).round() as i64;
    let py = |y: f64| bottom - ((y - y_lo) / (y_hi - y_lo) * (bottom - top) as f64).round() as i64;

    let mut c = Canvas::new(width, height, 3, 255);
    let (grid_rgb, black) = ([225, 225, 225], [0, 0, 0]);
    for (t, label) in &y_ticks {
        let y = py(*t);
        line(&mut c, left + 1, y, right, y, grid_rgb);
        line(&mut c, left - 4, y, left, y, black);
        text(
            &mut c,
            left - 6 - label_w(label),
            y - 2 * fs as i64,
            label,
            fs,
        );
    }
    for (t, label) in &x_ticks {
        let x = px(*t);
        line(&mut c, x, top, x, bottom - 1, grid_rgb);
        line(&mut c, x, bottom, x, bottom + 4, black);
        text(&mut c, x - label_w(label) / 2, bottom + 6, label, fs);
    }
    line(&mut c, left, top, left, bottom, black);
    line(&mut c, left, bottom, right, bottom, black);
    for (k, (_, points)) in series.iter().enumerate() {
        let rgb = SERIES_COLOURS[k % SERIES_COLOURS.len()];
        let mut last: Option<(i64, i64)> = None;
        for p in points.iter() {
            if !usable(p) {
                last = None;
                continue;
            }
            let (x, y) = (px(p.0), py(ty(p.1)));
            match last {
                Some((x0, y0)) => line(&mut c, x0, y0, x, y, rgb),
                None => c.put(x, y, rgb),
            }
            last = Some((x, y));
        }
    }
    let names = ["blue", "orange", "green", "red", "purple", "brown"];
    let legend = series
        .iter()
        .enumerate()
        .map(|(k, (name, _))| format!("{name}: {}", names[k % names.len()]))
        .collect::<Vec<_>>()
        .join("; ");
    write_png(path, &c, &[("Legend", legend)])
}

/// Widens an empty or degenerate range so that it can be drawn.
fn widen(lo: &mut f64, hi: &mut f64) {
    if *hi - *lo <= f64::EPSILON * lo.abs().max(1.0) {
        *lo -= 0.5;
        *hi += 0.5;
    }
}

/// Ticks at multiples of the round step (1, 2 or 5 times a power of ten) nearest a fifth of the
/// range `[lo, hi]`, with labels of as many decimals as the step needs.
fn linear_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| (a / raw).ln().abs().total_cmp(&(b / raw).ln().abs()))
        .unwrap_or(mag);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let mut ticks = Vec::new();
    let mut k = (lo / step).ceil();
    while k * step <= hi + step * 1e-9 {
        let v = k * step;
        let label = if v.abs() >= 1e5 || (v != 0.0 && decimals > 4) {
            compact(v)
        } else {
            format!("{:.*}", decimals, v)
        };
        ticks.push((v, label));
        k += 1.0;
    }
    ticks
}

/// Ticks for a log axis (positions are base-10 logarithms): whole decades (thinned to about
/// six) when at least three fall in the range, else 1, 2 and 5 times each power of ten, else
/// round values as on a linear axis.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let (first, last) = (lo.ceil() as i64, hi.floor() as i64);
    if last - first >= 2 {
        let every = (last - first) / 6 + 1;
        return (first..=last)
            .filter(|k| (k - first) % every == 0)
            .map(|k| (k as f64, format!("1e{k}")))
            .collect();
    }
    let mut ticks = Vec::new();
    for k in lo.floor() as i64..=last {
        for m in [1.0, 2.0, 5.0] {
            let t = f64::log10(m) + k as f64;
            if (lo..=hi).contains(&t) {
                let v = m * 10f64.powi(k as i32);
                let label = if (-3..5).contains(&k) {
                    format!("{:.*}", (-k).max(0) as usize, v)
                } else {
                    compact(v)
                };
                ticks.push((t, label));
            }
        }
    }
    if ticks.len() >= 2 {
        return ticks;
    }
    let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
    linear_ticks(a, b)
        .into_iter()
        .filter(|(v, _)| *v > 0.0)
        .map(|(v, s)| (v.log10(), s))
        .collect()
}

/// A short label: `{:e}` with at most two decimals, trailing zeros trimmed (`2.5e-3`).
fn compact(v: f64) -> String {
    let s = format!("{v:.2e}");
    let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    format!("{mantissa}e{exponent}")
}

/// Draws a line from `(x0, y0)` to `(x1, y1)` (Bresenham).
fn line(c: &mut Canvas, x0: i64, y0: i64, x1: i64, y1: i64, rgb: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        c.put(x, y, rgb);
        if x == x1 && y == y1 {
            return;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Draws `s` (digits, `.`, `-` and `e`; anything else as a blank) in black with its top-left
/// corner at `(x, y)`, each font pixel `fs x fs`.
fn text(c: &mut Canvas, x: i64, y: i64, s: &str, fs: usize) {
    for (i, ch) in s.chars().enumerate() {
        let rows = glyph(ch);
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for (u, v) in (0..fs * fs).map(|k| (k % fs, k / fs)) {
                        let gx = x + ((i * 4 + col) * fs + u) as i64;
                        c.put(gx, y + (r * fs + v) as i64, [0, 0, 0]);
                    }
                }
            }
        }
    }
}

/// The 3x5 bitmap of `ch`: five rows, three bits each, the high bit leftmost.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 5, 6, 3],
        _ => [0; 5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_and_clamp() {
        assert_eq!(to_byte(-1.0), 0);
        assert_eq!(to_byte(1.0), 255);
        assert_eq!(to_byte(7.0), 255);
        assert_eq!(to_byte(-3.0), 0);
        assert_eq!(to_byte(0.0), 128); // 127.5 rounds away from zero
        assert_eq!(to_byte(f32::NAN), 0);
        for b in 0..=255u8 {
            assert_eq!(to_byte(f32::from(b) / 127.5 - 1.0), b);
        }
    }

    #[test]
    fn ticks_are_round() {
        let t = linear_ticks(0.0, 1.0);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = linear_ticks(3.0, 1234.0);
        assert_eq!(t[0].1, "200");
        let t = log_ticks(-3.2, 0.5);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["1e-3", "1e-2", "1e-1", "1e0"]);
        let t = log_ticks(-1.1, 0.1);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.1", "0.2", "0.5", "1"]);
        assert!(log_ticks(0.1, 0.2).len() >= 2);
        assert_eq!(compact(0.0025), "2.5e-3");
    }

    #[test]
    fn grid_layout() {
        let imgs = Tensor::from_vec(
            vec![-1.0, 1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0],
            &[2, 1, 2, 2],
        );
        let c = grid(&imgs, 1, 2).unwrap();
        assert_eq!((c.width, c.height), (4 + 2 * PAD, 8 + 3 * PAD));
        let at = |x: usize, y: usize| c.pixels[y * c.width + x];
        assert_eq!(at(0, 0), PAD_GREY);
        assert_eq!(at(PAD, PAD), 0);
        assert_eq!(at(PAD + 3, PAD + 1), 255);
        assert_eq!(at(PAD + 1, PAD + 3), 255);
        assert_eq!(at(PAD, 2 * PAD + 4), 128);
        assert!(grid(&imgs, 0, 1).is_err());
        assert!(grid(&Tensor::zeros(&[1, 2, 2, 2]), 1, 1).is_err());
    }
}
