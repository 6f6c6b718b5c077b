//! The reduction kernels behind `reduce.rs`: a tensor viewed as `[outer, r, inner]` reduced
//! over its middle axis in fixed blocks (see `reduce.rs` for the determinism and accuracy
//! argument).

use wide::f32x8;

use super::par::{self, load, load_partial, CHUNK};

/// Elements per f32 run before the run's lanes are added into f64.
const RUN: usize = 1024;
/// Column tile width when the reduced axes are followed by kept ones.
const COLS: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Sum,
    /// Sum of squared deviations from a per-output centre.
    SqDev,
    Max,
    Min,
}

impl Kind {
    pub(crate) fn identity(self) -> f64 {
        match self {
            Kind::Sum | Kind::SqDev => 0.0,
            Kind::Max => f64::NEG_INFINITY,
            Kind::Min => f64::INFINITY,
        }
    }

    fn combine(self, a: f64, b: f64) -> f64 {
        match self {
            Kind::Sum | Kind::SqDev => a + b,
            _ if a.is_nan() || b.is_nan() => f64::NAN,
            Kind::Max => a.max(b),
            Kind::Min => a.min(b),
        }
    }
}

/// The reduction of a contiguous row `x` (centre `c` for [`Kind::SqDev`]).
fn reduce_run(kind: Kind, x: &[f32], c: f32) -> f64 {
    match kind {
        Kind::Sum | Kind::SqDev => {
            let cv = f32x8::splat(c);
            let term = |v: f32x8| {
                if kind == Kind::Sum {
                    v
                } else {
                    let d = v - cv;
                    d * d
                }
            };
            let mut total = 0.0f64;
            for run in x.chunks(RUN) {
                let mut acc = [f32x8::ZERO; 4];
                let main = run.len() - run.len() % 32;
                for quad in run[..main].chunks_exact(32) {
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a += term(load(&quad[8 * k..]));
                    }
                }
                for (k, piece) in run[main..].chunks(8).enumerate() {
                    acc[k] += term(load_partial(piece, if kind == Kind::Sum { 0.0 } else { c }));
                }
                let lanes = (acc[0] + acc[1]) + (acc[2] + acc[3]);
                total += lanes.to_array().iter().map(|&v| v as f64).sum::<f64>();
            }
            total
        }
        Kind::Max | Kind::Min => {
            let fill = kind.identity() as f32;
            let mut acc = f32x8::splat(fill);
            let mut nan = f32x8::ZERO;
            for piece in x.chunks(8) {
                let v = if piece.len() == 8 {
                    load(piece)
                } else {
                    load_partial(piece, fill)
                };
                nan |= v.is_nan();
                acc = if kind == Kind::Max {
                    acc.fast_max(v)
                } else {
                    acc.fast_min(v)
                };
            }
            if nan.any() {
                return f64::NAN;
            }
            let lanes = acc.to_array();
            lanes
                .iter()
                .fold(kind.identity(), |a, &b| kind.combine(a, b as f64))
        }
    }
}

/// Reduces `x`, viewed as `[outer, r, inner]`, over its middle axis, giving `outer * inner`
/// values. `centre` (for [`Kind::SqDev`]) holds one value per output.
pub(crate) fn reduce_3d(
    kind: Kind,
    x: &[f32],
    outer: usize,
    r: usize,
    inner: usize,
    centre: &[f32],
) -> Vec<f32> {
    let mut out = vec![kind.identity(); outer * inner];
    if r == 0 || outer * inner == 0 {
        return out.into_iter().map(|v| v as f32).collect();
    }
    let c = |i: usize| if kind == Kind::SqDev { centre[i] } else { 0.0 };
    if inner == 1 {
        let blocks = r.div_ceil(CHUNK);
        let partials = par::map_indices(outer * blocks, x.len(), |item| {
            let (o, blk) = (item / blocks, item % blocks);
            let row = &x[o * r..(o + 1) * r];
            let end = ((blk + 1) * CHUNK).min(r);
            reduce_run(kind, &row[blk * CHUNK..end], c(o))
        });
        for (item, p) in partials.into_iter().enumerate() {
            let o = item / blocks;
            out[o] = kind.combine(out[o], p);
        }
    } else {
        let width = inner.min(COLS);
        let tiles = inner.div_ceil(width);
        let rows = (CHUNK / width).max(1);
        let blocks = r.div_ceil(rows);
        let partials = par::map_indices(outer * tiles * blocks, x.len(), |item| {
            let blk = item % blocks;
            let tile = (item / blocks) % tiles;
            let o = item / (blocks * tiles);
            let (c0, c1) = (tile * width, ((tile + 1) * width).min(inner));
            let mut acc = vec![kind.identity(); c1 - c0];
            let centre_row = &centre[if kind == Kind::SqDev {
                o * inner + c0..o * inner + c1
            } else {
                0..0
            }];
            for i in blk * rows..((blk + 1) * rows).min(r) {
                let base = (o * r + i) * inner;
                let src = &x[base + c0..base + c1];
                match kind {
                    Kind::Sum => acc.iter_mut().zip(src).for_each(|(a, &v)| *a += v as f64),
                    Kind::SqDev => {
                        for ((a, &v), &m) in acc.iter_mut().zip(src).zip(centre_row) {
                            let d = v - m;
                            *a += (d * d) as f64;
                        }
                    }
                    _ => acc
                        .iter_mut()
                        .zip(src)
                        .for_each(|(a, &v)| *a = kind.combine(*a, v as f64)),
                }
            }
            acc
        });
        for (item, p) in partials.into_iter().enumerate() {
            let tile = (item / blocks) % tiles;
            let o = item / (blocks * tiles);
            let base = o * inner + tile * width;
            for (j, v) in p.into_iter().enumerate() {
                out[base + j] = kind.combine(out[base + j], v);
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}
