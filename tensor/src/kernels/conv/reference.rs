//! Test helpers: a small deterministic random generator and direct f64 convolutions.

use super::Conv2dParams;

/// xorshift64* generator for test data.
pub(crate) struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_f32()).collect()
    }
}

/// Calls `f(n, co, ci, i, j, a, b, y, x)` for every term of the convolution sum whose input
/// pixel `(y, x)` lies inside the image.
fn for_each_term(p: &Conv2dParams, mut f: impl FnMut([usize; 9])) {
    let (oh, ow) = (p.out_h(), p.out_w());
    for n in 0..p.batch {
        for co in 0..p.c_out {
            for ci in 0..p.c_in {
                for i in 0..oh {
                    for j in 0..ow {
                        for a in 0..p.kh {
                            for b in 0..p.kw {
                                let y = (i * p.stride + a) as isize - p.padding as isize;
                                let x = (j * p.stride + b) as isize - p.padding as isize;
                                if y >= 0 && x >= 0 && (y as usize) < p.h && (x as usize) < p.w {
                                    f([n, co, ci, i, j, a, b, y as usize, x as usize]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn x_index(p: &Conv2dParams, n: usize, ci: usize, y: usize, x: usize) -> usize {
    ((n * p.c_in + ci) * p.h + y) * p.w + x
}

fn w_index(p: &Conv2dParams, co: usize, ci: usize, a: usize, b: usize) -> usize {
    ((co * p.c_in + ci) * p.kh + a) * p.kw + b
}

fn y_index(p: &Conv2dParams, n: usize, co: usize, i: usize, j: usize) -> usize {
    ((n * p.c_out + co) * p.out_h() + i) * p.out_w() + j
}

/// Direct forward convolution in f64.
pub(crate) fn forward(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
    let mut y = vec![0.0f64; p.output_shape().iter().product()];
    if let Some(bias) = bias {
        for (idx, v) in y.iter_mut().enumerate() {
            *v = bias[idx / (p.out_h() * p.out_w()) % p.c_out] as f64;
        }
    }
    for_each_term(p, |[n, co, ci, i, j, a, b, yy, xx]| {
        y[y_index(p, n, co, i, j)] +=
            w[w_index(p, co, ci, a, b)] as f64 * x[x_index(p, n, ci, yy, xx)] as f64;
    });
    y
}

/// Direct backward-data in f64: `dX[n, ci, y, x] = sum dY[n, co, i, j] * W[co, ci, a, b]`.
pub(crate) fn backward_data(p: &Conv2dParams, dy: &[f32], w: &[f32]) -> Vec<f64> {
    let mut dx = vec![0.0f64; p.input_shape().iter().product()];
    for_each_term(p, |[n, co, ci, i, j, a, b, yy, xx]| {
        dx[x_index(p, n, ci, yy, xx)] +=
            dy[y_index(p, n, co, i, j)] as f64 * w[w_index(p, co, ci, a, b)] as f64;
    });
    dx
}

/// Direct backward-weight in f64: `dW = sum dY * X`, `db = sum dY`.
pub(crate) fn backward_weight(p: &Conv2dParams, x: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut dw = vec![0.0f64; p.weight_shape().iter().product()];
    for_each_term(p, |[n, co, ci, i, j, a, b, yy, xx]| {
        dw[w_index(p, co, ci, a, b)] +=
            dy[y_index(p, n, co, i, j)] as f64 * x[x_index(p, n, ci, yy, xx)] as f64;
    });
    let mut db = vec![0.0f64; p.c_out];
    for (idx, &v) in dy.iter().enumerate() {
        db[idx / (p.out_h() * p.out_w()) % p.c_out] += v as f64;
    }
    (dw, db)
}
