//! Fused scaled dot-product attention: `O = softmax(s Q K^T) V`, forward and backward, without
//! ever writing the `L_q x L_k` score matrix to memory.
//!
//! The composed form (a batched product, a softmax, another product) writes the whole score
//! matrix to memory, reads it back twice, and keeps the probabilities for the backward pass:
//! with 16 heads of 8 channels over 256 positions and a batch of 16 that is 64 MiB per layer,
//! while Q, K and V together are 6 MiB. Here each block of query rows is finished in cache, as
//! in FlashAttention (Dao et al., 2022, Algorithms 1 and 2):
//!
//! - forward, for query row `i`: `s_j = s q_i . k_j`, `m = max_j s_j`,
//!   `l = sum_j e^(s_j - m)`, `o_i = sum_j e^(s_j - m) v_j / l`, and the row's log-sum-exp
//!   `lse_i = m + ln l` is kept for the backward pass;
//! - backward, with `G = dL/dO`: the probabilities are recomputed as `p_j = e^(s_j - lse_i)`,
//!   `dp_j = g_i . v_j`, `D_i = sum_j p_j dp_j = g_i . o_i`, `ds_j = p_j (dp_j - D_i)`
//!   (the softmax Jacobian), then `dq_i = s sum_j ds_j k_j`, `dk_j += s ds_j q_i` and
//!   `dv_j += p_j g_i`.
//!
//! The kernels (`kernel.rs`) put one query per vector lane. Work is split over heads (and,
//! when there are few heads, over fixed blocks of query rows whose key and value gradients are
//! added in block order), so results are bitwise the same for any number of threads.
//!
//! ```
//! use tensor::ops::attention::attention;
//! use tensor::Tensor;
//! // One query attending to two keys with equal scores: the mean of the two values.
//! let q = Tensor::from_vec(vec![0.0, 0.0], &[1, 1, 2]);
//! let k = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 2, 2]);
//! let v = Tensor::from_vec(vec![1.0, 3.0], &[1, 2, 1]);
//! let (o, lse) = attention(&q, &k, &v, 1.0);
//! assert_eq!(o.data(), &[2.0]);
//! assert!((lse.data()[0] - 2f32.ln()).abs() < 1e-6);
//! ```

use wide::f32x8;

use super::simd::{self, SimdF32};
use crate::kernels::cpu::{isa, Isa};
use crate::Tensor;

/// Query rows per task when a head is split (few heads).
const ROW_BLOCK: usize = 64;
/// With at least this many heads, each head is one task and is never split.
const MIN_HEADS_UNSPLIT: usize = 8;

/// Sizes of one call: `n` heads (all leading axes), `lq` queries, `lk` keys, `d` channels of
/// queries and keys, `dv` channels of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    n: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    /// Lanes of the vectors the kernels run on (8, or 32 on AVX-512): rows are padded to
    /// whole vectors.
    lanes: usize,
}

impl Dims {
    /// These sizes with the vector width of `isa`'s kernels.
    fn for_isa(self, isa: Isa) -> Dims {
        Dims {
            lanes: lanes_of(isa),
            ..self
        }
    }

    /// Query-row blocks per head: 1 unless there are few heads (depends on the shape only).
    fn blocks(self) -> usize {
        if self.n >= MIN_HEADS_UNSPLIT {
            1
        } else {
            self.lq.div_ceil(ROW_BLOCK).max(1)
        }
    }

    /// The query rows of block `b`.
    fn rows(self, b: usize) -> std::ops::Range<usize> {
        let per = self.lq.div_ceil(self.blocks()).max(1);
        (b * per).min(self.lq)..((b + 1) * per).min(self.lq)
    }
}

/// Checks the shapes `q [.., lq, d]`, `k [.., lk, d]`, `v [.., lk, dv]` (same leading axes).
fn dims(op: &str, q: &Tensor, k: &Tensor, v: &Tensor) -> Dims {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let ok = qs.len() >= 2
        && ks.len() == qs.len()
        && vs.len() == qs.len()
        && qs[..qs.len() - 2] == ks[..ks.len() - 2]
        && ks[..ks.len() - 2] == vs[..vs.len() - 2]
        && qs[qs.len() - 1] == ks[ks.len() - 1]
        && ks[ks.len() - 2] == vs[vs.len() - 2];
    assert!(
        ok,
        "{op}: expected q [.., Lq, d], k [.., Lk, d], v [.., Lk, dv] with equal leading axes, \
         got q {qs:?}, k {ks:?}, v {vs:?}"
    );
    let r = qs.len();
    assert!(
        ks[r - 2] > 0 && qs[r - 1] > 0 && vs[r - 1] > 0,
        "{op}: expected at least one key and one channel, got q {qs:?}, k {ks:?}, v {vs:?}"
    );
    Dims {
        n: qs[..r - 2].iter().product(),
        lq: qs[r - 2],
        lk: ks[r - 2],
        d: qs[r - 1],
        dv: vs[r - 1],
        lanes: 8,
    }
}

mod heads;
mod kernel;
mod qkv;
#[cfg(test)]
mod tests;
mod tiles;

pub use heads::{attention_heads, attention_heads_backward, HeadLayout};
pub use qkv::{attention_qkv, attention_qkv_backward};

use kernel::{backward_rows, forward_rows, BackwardInputs, Rows, RowsOut, Workspace};

/// What to run over a block of query rows of one head, with its own inputs and outputs.
enum Pass<'a> {
    /// Writes the block's rows of `o` and their log-sum-exps `lse`.
    Forward {
        q: Rows<'a>,
        o: RowsOut<'a>,
        lse: &'a mut [f32],
    },
    /// Writes the block's rows of `dq` and adds its key and value gradients to the workspace's.
    Backward {
        x: BackwardInputs<'a>,
        dq: RowsOut<'a>,
    },
}

/// # Safety
/// The pass's output rows must be this task's alone.
#[inline(always)]
unsafe fn run_pass<V: SimdF32>(
    dm: Dims,
    rows: std::ops::Range<usize>,
    scale: f32,
    ws: &mut Workspace,
    pass: Pass<'_>,
) {
    debug_assert_eq!(V::LANES, dm.lanes);
    // SAFETY: the caller's rows.
    unsafe {
        match pass {
            Pass::Forward { q, o, lse } => forward_rows::<V>(dm, rows, q, scale, ws, o, lse),
            Pass::Backward { x, dq } => backward_rows::<V>(dm, rows, x, scale, ws, dq),
        }
    }
}

/// Declares `$name`, which runs `run_pass::<$v>` compiled with `$features`.
macro_rules! with_features {
    ($name:ident, $features:literal, $v:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            dm: Dims,
            rows: std::ops::Range<usize>,
            scale: f32,
            ws: &mut Workspace,
            pass: Pass<'_>,
        ) {
            // SAFETY: the caller's rows.
            unsafe { run_pass::<$v>(dm, rows, scale, ws, pass) }
        }
    };
}

with_features!(
    run_pass_avx512,
    "avx512f,avx2,fma",
    simd::Pair<simd::Avx512>
);
with_features!(run_pass_avx2, "avx2,fma", simd::Avx2);

/// [`run_pass`] on the implementation for `isa` (which the CPU must have).
///
/// # Safety
/// The pass's output rows must be this task's alone.
unsafe fn run_pass_on(
    isa: Isa,
    dm: Dims,
    rows: std::ops::Range<usize>,
    scale: f32,
    ws: &mut Workspace,
    pass: Pass<'_>,
) {
    // SAFETY: `isa` is the CPU's (cpu::isa) or a lesser one; the caller's rows.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => run_pass_avx512(dm, rows, scale, ws, pass),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => run_pass_avx2(dm, rows, scale, ws, pass),
            _ => run_pass::<f32x8>(dm, rows, scale, ws, pass),
        }
    }
}

/// Vector lanes of the implementation for `isa`: on AVX-512, two registers side by side
/// ([`simd::Pair`]), so that each broadcast key or value entry serves 32 queries. Measured
/// against one register (16 queries) with `ddpm bench attention --threads 1
/// --channels-first`, four runs each, interleaved: forward 6.90-7.27 against 7.49-7.68 ms,
/// backward 17.40-18.42 against 18.39-18.82 ms.
fn lanes_of(isa: Isa) -> usize {
    if cfg!(target_arch = "x86_64") && isa == Isa::Avx512 {
        32
    } else {
        8
    }
}

/// Attention over the last two axes of `q [.., Lq, d]`, `k [.., Lk, d]`, `v [.., Lk, dv]`
/// (equal leading axes, each a separate head): returns `O = softmax(scale Q K^T) V`
/// `[.., Lq, dv]` and the log-sum-exp of each row of scaled scores `[.., Lq]`, which
/// [`attention_backward`] needs. Adds the work of the two products, `2 Lq Lk (d + dv)` per
/// head, to the FLOP counter. Panics if the shapes disagree.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> (Tensor, Tensor) {
    let dm = dims("attention", q, k, v);
    let _prof = crate::profile::scope("attention", || {
        format!("q {:?} k {:?} v {:?}", q.shape(), k.shape(), v.shape())
    });
    attention_with(dm, q, k, v, scale, isa())
}

/// The shapes of `o` and `lse` for `q`'s leading axes.
fn output_shapes(dm: Dims, q: &Tensor) -> (Vec<usize>, Vec<usize>) {
    let lead = &q.shape()[..q.shape().len() - 2];
    let mut o_shape = lead.to_vec();
    o_shape.extend([dm.lq, dm.dv]);
    let mut lse_shape = lead.to_vec();
    lse_shape.push(dm.lq);
    (o_shape, lse_shape)
}

fn attention_with(
    dm: Dims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    isa: Isa,
) -> (Tensor, Tensor) {
    // Each head is a batch entry of one head: `[n, L, 1 d]` in the layout of `attention_heads`.
    let (o, lse) = heads::forward_with(
        dm,
        dm.n,
        (1, HeadLayout::TokensFirst),
        (q, k, v),
        scale,
        isa,
    );
    let (o_shape, lse_shape) = output_shapes(dm, q);
    (
        Tensor::from_vec(o, &o_shape),
        Tensor::from_vec(lse, &lse_shape),
    )
}

/// The gradients `(dQ, dK, dV)` of [`attention`] given its inputs, its outputs `o` and `lse`,
/// and the gradient `g` of the loss with respect to `o`. Panics if the shapes disagree.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    scale: f32,
) -> (Tensor, Tensor, Tensor) {
    let _prof = crate::profile::scope("attention_backward", || {
        format!("q {:?} k {:?} v {:?}", q.shape(), k.shape(), v.shape())
    });
    attention_backward_with(q, k, v, o, lse, g, scale, isa())
}

#[allow(clippy::too_many_arguments)]
fn attention_backward_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    scale: f32,
    isa: Isa,
) -> (Tensor, Tensor, Tensor) {
    let dm = dims("attention_backward", q, k, v);
    let (o_shape, lse_shape) = output_shapes(dm, q);
    assert!(
        o.shape() == o_shape && g.shape() == o_shape && lse.shape() == lse_shape,
        "attention_backward: expected o and g {o_shape:?} and lse {lse_shape:?}, got o {:?}, \
         g {:?}, lse {:?}",
        o.shape(),
        g.shape(),
        lse.shape()
    );
    let (dq, dk, dv) = heads::backward_with(
        dm,
        (1, HeadLayout::TokensFirst),
        (q, k, v),
        (o, lse, g),
        scale,
        isa,
    );
    (
        Tensor::from_vec(dq, q.shape()),
        Tensor::from_vec(dk, k.shape()),
        Tensor::from_vec(dv, v.shape()),
    )
}
