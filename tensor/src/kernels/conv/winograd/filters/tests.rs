//! The filter transforms and the fold against the matrices, and the packed form against the
//! plane form.

use super::*;
use crate::kernels::conv::direct;
use crate::kernels::conv::reference::TestRng;

const G: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `G g G^T` by the matrices, in f64.
fn transform_ref(g: &[f64]) -> Vec<f64> {
    (0..XI)
        .map(|xi| {
            let (i, j) = (xi / 6, xi % 6);
            let mut s = 0.0;
            for a in 0..3 {
                for b in 0..3 {
                    s += G[i][a] * g[a * 3 + b] * G[j][b];
                }
            }
            s
        })
        .collect()
}

#[test]
fn plane_transform_matches_the_matrices_in_both_orientations() {
    let (c_out, c_in) = (5, 3);
    let w = TestRng::new(3).vec(c_out * c_in * 9);
    for orientation in [Orientation::Forward, Orientation::Adjoint] {
        let u = transform_weights(c_out, c_in, &w, orientation);
        let plane = weight_plane(c_out, c_in);
        for co in 0..c_out {
            for ci in 0..c_in {
                let g: Vec<f64> = (0..9)
                    .map(|t| f64::from(w[orientation.tap(c_out, c_in, co, ci, t)]))
                    .collect();
                for (xi, want) in transform_ref(&g).into_iter().enumerate() {
                    let got = f64::from(u[xi * plane + co * c_in + ci]);
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "{orientation:?} ({co}, {ci}) xi {xi}: got {got}, want {want}"
                    );
                }
            }
        }
    }
    // The adjoint of filter (co, ci) is weight[ci, co] turned by 180 degrees.
    assert_eq!(Orientation::Adjoint.tap(5, 3, 1, 2, 0), 9 * (2 * 5 + 1) + 8);
}

#[test]
fn packed_transform_is_the_plane_transform_packed_bitwise() {
    // Held so that no other test forces the portable path meanwhile (the test would skip).
    let _guard = cpu::test_lock();
    // 20 outputs: two whole blocks of eight and a partial one.
    let (c_out, c_in) = (20, 7);
    let w = TestRng::new(4).vec(c_out * c_in * 9);
    if !direct::available() {
        return;
    }
    for orientation in [Orientation::Forward, Orientation::Adjoint] {
        let u = transform_weights(c_out, c_in, &w, orientation);
        let u_plane = weight_plane(c_out, c_in);
        let pp = direct::packed_rows_len(c_out, c_in);
        let plane = pp + 16;
        let mut packed = vec![f32::NAN; XI * plane];
        pack_weights(c_out, c_in, &w, orientation, &mut packed, plane);
        let mut want = Vec::new();
        for xi in 0..XI {
            direct::pack_rows(&u[xi * u_plane..], c_out, c_in, c_in, 0, &mut want);
            let got = &packed[xi * plane..xi * plane + pp];
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "{orientation:?} xi {xi} value {i}: packed {a}, planes {b}"
                );
            }
        }
    }
}

#[test]
fn fold_is_g_transpose_du_g() {
    let _guard = cpu::test_lock();
    // 70 filters: a whole block of 64 and a partial one, folded in groups of eight.
    let (c_out, c_in) = (10, 7);
    let plane = weight_plane(c_out, c_in) + 16;
    let du = TestRng::new(5).vec(XI * plane);
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    fold_filter_gradients(&du, plane, &mut dw);
    // The portable path gives the same bits.
    let mut portable = vec![0.0f32; c_out * c_in * 9];
    cpu::with_portable(|| fold_filter_gradients(&du, plane, &mut portable));
    assert!(dw
        .iter()
        .zip(&portable)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    for f in 0..c_out * c_in {
        for a in 0..3 {
            for b in 0..3 {
                let mut want = 0.0;
                for i in 0..6 {
                    for j in 0..6 {
                        want += G[i][a] * f64::from(du[(i * 6 + j) * plane + f]) * G[j][b];
                    }
                }
                let got = f64::from(dw[f * 9 + a * 3 + b]);
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "filter {f} tap ({a}, {b}): got {got}, want {want}"
                );
            }
        }
    }
}
