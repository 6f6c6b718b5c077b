//! The time embedding: a sinusoidal code of the timestep (diffusers' `Timesteps`, which has
//! no parameters) and the two-layer MLP on it (`TimestepEmbedding`, named `time_embedding`).

use autograd::nn::{Ctx, Linear, Module, ParamStore};
use autograd::Var;
use tensor::rng::Rng;
use tensor::Tensor;

/// The sinusoidal timestep code of width `dim` (Vaswani et al., 2017; DDPM's `get_timestep_embedding`):
///
/// ```text
/// half = dim / 2,   f_i = exp(-ln(10^4) i / (half - freq_shift)),   i = 0 .. half - 1
/// e(t) = [sin(t f_0) .. sin(t f_{half-1}), cos(t f_0) .. cos(t f_{half-1})]
/// ```
///
/// With `flip_sin_to_cos` the two halves swap ([cos, sin]); an odd `dim` gets a zero last
/// column. `freq_shift = 1` gives the original DDPM's `/(half - 1)`, diffusers' default 0 gives
/// `/half`. The arithmetic follows diffusers' order of float32 operations (exponent, division,
/// `exp`, product with `t`), so the codes agree with PyTorch's to the last bit or so; only
/// `sin` and `cos` are evaluated in f64 and rounded.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Tensor {
    let half = dim / 2;
    let denominator = half as f32 - freq_shift;
    let log_period = -(10_000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_period * i as f32) / denominator).exp())
        .collect();
    let mut out = vec![0.0f32; timesteps.len() * dim];
    for (row, &t) in out.chunks_exact_mut(dim).zip(timesteps) {
        let (first, second) = row.split_at_mut(half);
        let (sin_half, cos_half) = if flip_sin_to_cos {
            (&mut second[..half], first)
        } else {
            (first, &mut second[..half])
        };
        for ((s, c), &f) in sin_half.iter_mut().zip(cos_half.iter_mut()).zip(&freqs) {
            let arg = (t * f) as f64;
            *s = arg.sin() as f32;
            *c = arg.cos() as f32;
        }
    }
    Tensor::from_vec(out, &[timesteps.len(), dim])
}

/// The MLP on the sinusoidal code (diffusers' `TimestepEmbedding`):
/// `emb = linear_2(silu(linear_1(e(t))))`, `dim -> 4 dim -> 4 dim`.
pub struct TimeEmbedding {
    /// `linear_1`: code width to embedding width.
    pub linear_1: Linear,
    /// `linear_2`: embedding width to embedding width.
    pub linear_2: Linear,
    /// Width of the sinusoidal code (`block_out_channels[0]`).
    pub dim: usize,
    /// Order [cos, sin].
    pub flip_sin_to_cos: bool,
    /// Frequency denominator shift.
    pub freq_shift: f32,
}

impl TimeEmbedding {
    /// Registers `linear_1` and `linear_2` under `store` (diffusers: `time_embedding`).
    pub fn new(
        store: &ParamStore,
        rng: &mut Rng,
        dim: usize,
        embed_dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> TimeEmbedding {
        TimeEmbedding {
            linear_1: Linear::new(&store.sub("linear_1"), rng, dim, embed_dim, true),
            linear_2: Linear::new(&store.sub("linear_2"), rng, embed_dim, embed_dim, true),
            dim,
            flip_sin_to_cos,
            freq_shift,
        }
    }

    /// The embedding `[N, embed_dim]` of `N` timesteps.
    pub fn forward(&self, ctx: &mut Ctx, timesteps: &[f32]) -> Var {
        let code = timestep_embedding(timesteps, self.dim, self.flip_sin_to_cos, self.freq_shift);
        let h = self.linear_1.forward(ctx, &Var::constant(code)).silu();
        self.linear_2.forward(ctx, &h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_has_the_documented_values_and_order() {
        let e = timestep_embedding(&[0.0, 3.0], 6, false, 1.0);
        assert_eq!(e.shape(), &[2, 6]);
        assert_eq!(&e.data()[..6], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        // half = 3, denominator 2: frequencies 1, 1e-2, 1e-4.
        let row = &e.data()[6..];
        let expected = [
            3f64.sin(),
            0.03f64.sin(),
            3e-4f64.sin(),
            3f64.cos(),
            0.03f64.cos(),
        ];
        for (a, b) in row.iter().zip(expected) {
            assert!((*a as f64 - b).abs() < 1e-6, "{row:?}");
        }
        let flipped = timestep_embedding(&[3.0], 6, true, 1.0);
        assert_eq!(&flipped.data()[..3], &row[3..]);
        assert_eq!(&flipped.data()[3..], &row[..3]);
    }

    #[test]
    fn an_odd_width_ends_in_a_zero() {
        let e = timestep_embedding(&[5.0], 7, true, 0.0);
        assert_eq!(e.data()[6], 0.0);
    }
}
