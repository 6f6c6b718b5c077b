//! Block sizes per instruction set, and the micro-kernel that goes with them.
//!
//! The five loops of the driver cut C into `NC`-wide column panels, K into `KC`-deep slices and
//! M into `MC`-tall blocks; the micro-kernel computes one `MR x NR` tile. The sizes aim at the
//! cache levels of the machine they were tuned on (AMD Zen 4: L1d 32 KiB, L2 1 MiB per core,
//! shared L3):
//!
//! - a packed `MR x KC` micro-panel of A stays in L1 while it meets the micro-panels of B of a
//!   task's `NT` columns,
//! - those `KC x NT` of packed B, and the task's `MC x KC` block of A, stay in L2,
//! - the packed `KC x NC` panel of B lives in L3, shared by every thread.
//!
//! For AVX-512 (8 x 32, KC 512): 16 KiB of A in L1, 512 + 256 KiB of B and A in L2.
//!
//! None of the sizes depend on the number of threads, so neither do the results.

use super::MicroKernel;
use crate::kernels::cpu::Isa;

/// A micro-kernel together with the block sizes the driver uses around it.
#[derive(Clone, Copy)]
pub(super) struct Config {
    /// Rows of the C tile the kernel computes.
    pub mr: usize,
    /// Columns of the C tile the kernel computes.
    pub nr: usize,
    /// Largest slice of K packed at once; the driver splits K into equal slices of at most this.
    pub kc: usize,
    /// Rows of one task of the parallel loop (a multiple of `mr`): its block of packed A.
    pub mc: usize,
    /// Columns of one task, at most (a multiple of `nr`); the driver narrows tasks so that a
    /// block gives at least 16 of them.
    pub nt: usize,
    /// Columns of B packed at once (a multiple of `nr`).
    pub nc: usize,
    /// The micro-kernel.
    pub kernel: MicroKernel,
}

/// The configuration for an instruction set. Callers must only ask for an instruction set the
/// CPU supports (see [`crate::kernels::cpu::detected_isa`]).
pub(super) fn config(isa: Isa) -> Config {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Config {
            mr: 8,
            nr: 32,
            kc: 512,
            mc: 128,
            nt: 256,
            nc: 2048,
            kernel: super::avx512::gemm_avx512_8x32,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => Config {
            mr: 6,
            nr: 16,
            kc: 256,
            mc: 120,
            nt: 256,
            nc: 2048,
            kernel: super::avx2::gemm_avx2_6x16,
        },
        _ => Config {
            mr: 4,
            nr: 8,
            kc: 256,
            mc: 64,
            nt: 256,
            nc: 2048,
            kernel: super::portable::gemm_portable_4x8,
        },
    }
}
