//! Run-time choice of instruction set.
//!
//! [`isa`] reports the best instruction set this CPU offers among those we have kernels for.
//! [`force_portable`] makes every kernel take its portable path (for tests that must exercise
//! it on any machine, and for comparing paths in benchmarks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The instruction sets our kernels are written for, best last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust (auto-vectorised by the compiler for the baseline target).
    Portable,
    /// x86-64 AVX2 with FMA3: 16 ymm registers of 8 f32.
    Avx2Fma,
    /// x86-64 AVX-512F: 32 zmm registers of 16 f32.
    Avx512,
}

impl Isa {
    /// A short lower-case name for reports (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

static FORCE_PORTABLE: AtomicBool = AtomicBool::new(false);
static DETECTED: OnceLock<Isa> = OnceLock::new();

/// The best instruction set the CPU supports (ignoring [`force_portable`]).
pub fn detected_isa() -> Isa {
    *DETECTED.get_or_init(detect)
}

/// The instruction set kernels should use now: [`Isa::Portable`] while forced, else the
/// detected one.
pub fn isa() -> Isa {
    if FORCE_PORTABLE.load(Ordering::Relaxed) {
        Isa::Portable
    } else {
        detected_isa()
    }
}

/// Forces (or stops forcing) the portable path in every kernel of this process.
pub fn force_portable(on: bool) {
    FORCE_PORTABLE.store(on, Ordering::Relaxed);
}

/// Runs `f` with the portable path forced, restoring the previous setting afterwards.
/// The setting is process-wide, so tests that use it should not race with tests that assert
/// which path ran; results must agree on every path anyway.
pub fn with_portable<R>(f: impl FnOnce() -> R) -> R {
    let before = FORCE_PORTABLE.swap(true, Ordering::SeqCst);
    let result = f();
    FORCE_PORTABLE.store(before, Ordering::SeqCst);
    result
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// Serialises, across the crate's unit tests, the tests that force the portable path with the
/// tests whose results depend on which path runs (the path is a process-wide setting and
/// tests run in parallel threads). Hold the guard for the whole test.
#[cfg(test)]
pub(crate) fn test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
