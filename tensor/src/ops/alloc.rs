//! Output buffers for the ops, and an allocator setting for programs.
//!
//! An op on a large tensor returns a new tensor, so it allocates a large buffer each time. With
//! glibc's default settings a buffer above 32 MiB is a fresh `mmap`, and the first write to
//! each 4 KiB page then costs a page fault in which the kernel zeroes the page: for 64 MiB that
//! is slower than the op itself (about 50 ms here, against 10 ms for a copy). Two remedies:
//!
//! - The ops' output buffers (`output` in this module) get the advice to use transparent huge
//!   pages (`madvise`, Linux only, effective when THP is in `madvise` or `always` mode), which
//!   cuts the fault cost by about 3x, and are initialised chunk by chunk right before the op
//!   writes each chunk (while it is in cache), never in a separate pass over memory.
//! - [`retain_freed_memory`], which a program may call once at start-up, keeps freed memory in
//!   the process (glibc `mallopt`), so the next buffer of the same size reuses pages that are
//!   already mapped. This is the CPU counterpart of a GPU framework's caching allocator.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::par::{CHUNK, PAR_MIN};

/// Buffers from this size (in f32) get the huge-page advice.
const HUGE_MIN: usize = 1 << 20;

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &mut Vec<f32>) {
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    const MADV_HUGEPAGE: i32 = 14;
    const HUGE: usize = 1 << 21;
    let begin = v.as_mut_ptr() as usize;
    let end = begin + v.capacity() * std::mem::size_of::<f32>();
    let (lo, hi) = ((begin + HUGE - 1) & !(HUGE - 1), end & !(HUGE - 1));
    if hi > lo {
        // SAFETY: the range lies inside this vector's allocation, and MADV_HUGEPAGE only
        // changes how the kernel backs the pages, never their contents. Failure (THP off, an
        // old kernel) is harmless, so the result is ignored.
        unsafe { madvise(lo as *mut std::ffi::c_void, hi - lo, MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut Vec<f32>) {}

/// `piece` filled with zeros, as initialised values.
pub(crate) fn init_chunk(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in piece.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just initialised.
    unsafe { assume_init(piece) }
}

/// `buf` filled with zeros, as initialised values: chunk by chunk in parallel when it is large
/// (a single `memset` on the calling thread would leave the other threads idle).
pub(crate) fn init_zeroed(buf: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    if buf.len() < PAR_MIN {
        return init_chunk(buf);
    }
    buf.par_chunks_mut(CHUNK).for_each(|piece| {
        init_chunk(piece);
    });
    // SAFETY: every chunk was just initialised.
    unsafe { assume_init(buf) }
}

/// `piece`, every element of which has been written, as initialised values.
///
/// # Safety
/// Every element of `piece` must be initialised.
pub(crate) unsafe fn assume_init(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: the caller guarantees every element is initialised, and MaybeUninit<f32> has
    // f32's layout.
    unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `values` viewed as possibly-uninitialised memory, for a kernel that writes through the view
/// (the same kernel then serves fresh and initialised outputs).
pub(crate) fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the safe MaybeUninit API can only store
    // initialised f32 values through the view, so `values` stays initialised.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A buffer of `n` values written by `fill`, which must initialise every element of the slice
/// it is given (it is handed the buffer's uninitialised storage).
///
/// # Safety
/// `fill` must write every element.
pub(crate) unsafe fn filled_by(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller's `fill` initialised all n elements.
    unsafe { v.set_len(n) };
    v
}

/// A buffer of `n` values filled by `body(start, piece)` over consecutive pieces of
/// [`CHUNK`] elements (in parallel from [`PAR_MIN`] elements). Each piece is zeroed just before
/// `body` sees it, so the buffer is never swept in a separate pass.
pub(crate) fn output<F>(n: usize, body: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    output_in(n, CHUNK, body)
}

/// As [`output`] with pieces of `piece` elements (at least 1).
pub(crate) fn output_in<F>(n: usize, piece: usize, body: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let piece = piece.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(n);
    if n >= HUGE_MIN {
        advise_huge_pages(&mut v);
    }
    let spare = &mut v.spare_capacity_mut()[..n];
    if n < PAR_MIN {
        for (i, p) in spare.chunks_mut(piece).enumerate() {
            body(i * piece, init_chunk(p));
        }
    } else {
        spare
            .par_chunks_mut(piece)
            .enumerate()
            .for_each(|(i, p)| body(i * piece, init_chunk(p)));
    }
    // SAFETY: all n elements were initialised above.
    unsafe { v.set_len(n) };
    v
}

/// A buffer of `n` values written by `body(start, piece)` over consecutive pieces of
/// [`CHUNK`] elements (in parallel from [`PAR_MIN`] elements), with no initialisation at all.
///
/// # Safety
/// `body` must write every element of each piece it is given.
pub(crate) unsafe fn output_uninit<F>(n: usize, body: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    // SAFETY: passed on to the caller.
    unsafe { output_uninit_in(n, CHUNK, body) }
}

/// As [`output_uninit`] with pieces of `piece` elements (at least 1).
///
/// # Safety
/// `body` must write every element of each piece it is given.
pub(crate) unsafe fn output_uninit_in<F>(n: usize, piece: usize, body: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let piece = piece.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(n);
    if n >= HUGE_MIN {
        advise_huge_pages(&mut v);
    }
    let spare = &mut v.spare_capacity_mut()[..n];
    if n < PAR_MIN {
        for (i, p) in spare.chunks_mut(piece).enumerate() {
            body(i * piece, p);
        }
    } else {
        spare
            .par_chunks_mut(piece)
            .enumerate()
            .for_each(|(i, p)| body(i * piece, p));
    }
    // SAFETY: the caller's `body` initialised all n elements.
    unsafe { v.set_len(n) };
    v
}

/// An empty buffer with room for `n` values (with the huge-page advice when large), for ops
/// that write every element of their output, in an order of their own, through a raw pointer
/// and then set its length.
pub(crate) fn with_capacity(n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    if n >= HUGE_MIN {
        advise_huge_pages(&mut v);
    }
    v
}

/// A zeroed buffer of `n` values (with the huge-page advice when large), for ops that do not
/// write their output in chunk order.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    output(n, |_, _| {})
}

/// Keeps freed memory inside the process for reuse instead of returning it to the OS, so that
/// the large buffers of successive ops do not each pay for fresh pages. Glibc only (a no-op
/// elsewhere): every thread allocates from the one main heap (`M_ARENA_MAX` 1; a worker
/// thread's own arena unmaps a heap as soon as it empties), no block is served by `mmap`
/// (`M_MMAP_MAX` 0; glibc caps the mmap threshold at 32 MiB, so raising it cannot keep a
/// 64 MiB buffer), and the heap is never trimmed (`M_TRIM_THRESHOLD`). Call once at start-up,
/// before heavy work. Returns true if every setting was applied.
///
/// The cost is memory: the process's footprint stays at its high-water mark.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes allocator tunables; every value is in its range.
        unsafe {
            let one_arena = mallopt(M_ARENA_MAX, 1) == 1;
            let no_mmap = mallopt(M_MMAP_MAX, 0) == 1;
            let no_trim = mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1;
            one_arena && no_mmap && no_trim
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_every_setting() {
        assert!(super::retain_freed_memory());
    }
}
