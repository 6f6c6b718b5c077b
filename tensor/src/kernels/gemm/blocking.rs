//! Block sizes per instruction set, and the micro-kernel that goes with them.
//!
//! The five loops of the driver cut C into `NC`-wide column panels, K into `KC`-deep slices and
//! M into `MC`-tall blocks; the micro-kernel computes one `MR x NR` tile. The sizes aim at the
//! cache levels of the machine they were tuned on (AMD Zen 4: L1d 32 KiB, L2 1 MiB per core,
//! shared L3):
//!
//! - a packed `KC x NR` micro-panel of B stays in L1 while the `MC / MR` micro-panels of A
//!   stream past it,
//! - the packed `MC x KC` block of A stays in L2,
//! - the packed `KC x NC` panel of B lives in L3, shared by every thread.
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
    /// Rows of A packed together (a multiple of `mr`): one block of work for a thread.
    pub mc: usize,
    /// Columns of C one thread sweeps with one block of A (a multiple of `nr`).
    pub nt: usize,
    /// Columns of B packed at once (a multiple of `nt`).
    pub nc: usize,
    /// The micro-kernel.
    pub kernel: MicroKernel,
}

/// The configuration for an instruction set. Callers must only ask for an instruction set the
/// CPU supports (see [`crate::kernels::cpu::detected_isa`]).
pub(super) fn config(isa: Isa) -> Config {
    tune(match isa {
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
    })
}

// TEMPORARY tuning override.
fn tune(mut c: Config) -> Config {
    let get = |name: &str, v: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(v)
    };
    c.kc = get("GEMM_KC", c.kc);
    c.mc = get("GEMM_MC", c.mc);
    c.nt = get("GEMM_NT", c.nt);
    c.nc = get("GEMM_NC", c.nc);
    if c.nr == 32 {
        let mr = get("GEMM_MR", c.mr);
        c.kernel = match mr {
            4 => super::avx512::gemm_avx512_4x32,
            6 => super::avx512::gemm_avx512_6x32,
            12 => super::avx512::gemm_avx512_12x32,
            14 => super::avx512::gemm_avx512_14x32,
            _ => c.kernel,
        };
        c.mr = mr;
        c.mc = (c.mc / mr).max(1) * mr;
    }
    c
}
