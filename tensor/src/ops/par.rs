//! Shared machinery for the element-wise ops: 8-lane loads and stores, slice kernels that apply
//! an 8-lane function, and fixed-size chunking over rayon.
//!
//! Work is cut into chunks of [`CHUNK`] elements whatever the number of threads, and tensors
//! below [`PAR_MIN`] elements run on the calling thread, so every result (including reductions,
//! whose per-chunk partials are combined in chunk order) is bitwise the same on 1 or 64 threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;
use wide::f32x8;

/// Elements per unit of parallel work (256 KiB of f32).
pub(crate) const CHUNK: usize = 1 << 16;
/// Below this many elements an op runs serially (same chunks, same results).
pub(crate) const PAR_MIN: usize = 1 << 17;

/// The first 8 values of `s` as a vector.
#[inline(always)]
pub(crate) fn load(s: &[f32]) -> f32x8 {
    let a: [f32; 8] = s[..8].try_into().unwrap();
    f32x8::new(a)
}

/// Writes `v` to the first 8 values of `d`.
#[inline(always)]
pub(crate) fn store(v: f32x8, d: &mut [f32]) {
    d[..8].copy_from_slice(&v.to_array());
}

/// Writes `v` to the first 8 slots of `d`, which may be uninitialised (and are initialised
/// afterwards).
#[inline(always)]
pub(crate) fn store_u(v: f32x8, d: &mut [MaybeUninit<f32>]) {
    let a = v.to_array();
    let d = &mut d[..8];
    // SAFETY: `d` has 8 slots and MaybeUninit<f32> has f32's layout.
    unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), d.as_mut_ptr() as *mut f32, 8) };
}

/// Writes the first `d.len()` (at most 8) lanes of `v` to the possibly uninitialised `d`.
#[inline(always)]
pub(crate) fn store_partial_u(v: f32x8, d: &mut [MaybeUninit<f32>]) {
    let a = v.to_array();
    let n = d.len().min(8);
    // SAFETY: `d` has at least n slots and MaybeUninit<f32> has f32's layout.
    unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), d.as_mut_ptr() as *mut f32, n) };
}

/// Up to 8 values of `s` as a vector, the missing lanes set to `fill`.
#[inline(always)]
pub(crate) fn load_partial(s: &[f32], fill: f32) -> f32x8 {
    let mut a = [fill; 8];
    a[..s.len()].copy_from_slice(s);
    f32x8::new(a)
}

/// Writes the first `d.len()` (at most 8) lanes of `v` to `d`.
#[inline(always)]
pub(crate) fn store_partial(v: f32x8, d: &mut [f32]) {
    let n = d.len();
    d.copy_from_slice(&v.to_array()[..n]);
}

/// One operand of a binary slice kernel: a run of values, or one value repeated.
#[derive(Clone, Copy)]
pub(crate) enum Operand<'a> {
    Run(&'a [f32]),
    Splat(f32),
}

impl Operand<'_> {
    #[inline(always)]
    fn at(&self, i: usize) -> f32x8 {
        match *self {
            Operand::Run(s) => load(&s[i..]),
            Operand::Splat(v) => f32x8::splat(v),
        }
    }

    #[inline(always)]
    fn tail(&self, i: usize, fill: f32) -> f32x8 {
        match *self {
            Operand::Run(s) => load_partial(&s[i..], fill),
            Operand::Splat(v) => f32x8::splat(v),
        }
    }
}

/// `dst[i] = f(src[i])`, initialising every element of `dst`; the tail goes through `f`
/// padded to 8 lanes, so every element sees the same code.
#[inline(always)]
pub(crate) fn unary_slice<F: Fn(f32x8) -> f32x8>(src: &[f32], dst: &mut [MaybeUninit<f32>], f: &F) {
    let n = dst.len();
    let main = n - n % 8;
    for (s, d) in src[..main]
        .chunks_exact(8)
        .zip(dst[..main].chunks_exact_mut(8))
    {
        store_u(f(load(s)), d);
    }
    if main < n {
        store_partial_u(f(load_partial(&src[main..n], 1.0)), &mut dst[main..]);
    }
}

/// `dst[i] = f(dst[i])`.
#[inline(always)]
pub(crate) fn unary_inplace<F: Fn(f32x8) -> f32x8>(dst: &mut [f32], f: &F) {
    let n = dst.len();
    let main = n - n % 8;
    for d in dst[..main].chunks_exact_mut(8) {
        let v = f(load(d));
        store(v, d);
    }
    if main < n {
        let v = f(load_partial(&dst[main..], 1.0));
        store_partial(v, &mut dst[main..]);
    }
}

/// `dst[i] = f(a[i], b[i])` where a splat operand repeats one value; initialises every
/// element of `dst`.
#[inline(always)]
pub(crate) fn binary_slice<F: Fn(f32x8, f32x8) -> f32x8>(
    a: Operand,
    b: Operand,
    dst: &mut [MaybeUninit<f32>],
    f: &F,
) {
    let n = dst.len();
    let main = n - n % 8;
    match (a, b) {
        // The common same-shape case gets its own loop with no operand matching inside.
        (Operand::Run(a), Operand::Run(b)) => {
            let it = a[..main].chunks_exact(8).zip(b[..main].chunks_exact(8));
            for ((x, y), d) in it.zip(dst[..main].chunks_exact_mut(8)) {
                store_u(f(load(x), load(y)), d);
            }
        }
        (Operand::Run(a), Operand::Splat(y)) => {
            let y = f32x8::splat(y);
            for (x, d) in a[..main]
                .chunks_exact(8)
                .zip(dst[..main].chunks_exact_mut(8))
            {
                store_u(f(load(x), y), d);
            }
        }
        (Operand::Splat(x), Operand::Run(b)) => {
            let x = f32x8::splat(x);
            for (y, d) in b[..main]
                .chunks_exact(8)
                .zip(dst[..main].chunks_exact_mut(8))
            {
                store_u(f(x, load(y)), d);
            }
        }
        (a, b) => {
            for i in (0..main).step_by(8) {
                store_u(f(a.at(i), b.at(i)), &mut dst[i..]);
            }
        }
    }
    if main < n {
        let v = f(a.tail(main, 1.0), b.tail(main, 1.0));
        store_partial_u(v, &mut dst[main..]);
    }
}

/// `dst[i] = f(dst[i], b[i])`.
#[inline(always)]
pub(crate) fn binary_inplace<F: Fn(f32x8, f32x8) -> f32x8>(dst: &mut [f32], b: Operand, f: &F) {
    let n = dst.len();
    let main = n - n % 8;
    for i in (0..main).step_by(8) {
        let v = f(load(&dst[i..]), b.at(i));
        store(v, &mut dst[i..]);
    }
    if main < n {
        let v = f(load_partial(&dst[main..], 1.0), b.tail(main, 1.0));
        store_partial(v, &mut dst[main..]);
    }
}

/// Calls `body(start, piece)` for consecutive pieces of `dst` of [`CHUNK`] elements (the last
/// may be shorter), in parallel when `dst` has at least [`PAR_MIN`] elements.
pub(crate) fn for_chunks_mut<F>(dst: &mut [f32], body: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if dst.len() < PAR_MIN {
        for (i, piece) in dst.chunks_mut(CHUNK).enumerate() {
            body(i * CHUNK, piece);
        }
    } else {
        dst.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, piece)| body(i * CHUNK, piece));
    }
}

/// `f(i)` for every `i in 0..count`, collected in order; in parallel when `work` (an estimate of
/// the elements touched) reaches [`PAR_MIN`].
pub(crate) fn map_indices<T, F>(count: usize, work: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync + Send,
{
    if work < PAR_MIN {
        (0..count).map(f).collect()
    } else {
        (0..count).into_par_iter().map(f).collect()
    }
}

/// A raw pointer that may cross threads: for kernels whose tasks write provably disjoint
/// elements of one output that are not one contiguous slice per task.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only used by kernels that write disjoint elements from each task.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
