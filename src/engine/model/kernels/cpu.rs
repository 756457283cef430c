//! What this CPU can run, detected once for every kernel.
//!
//! Detection is the standard library's (`is_x86_feature_detected!`, `is_aarch64_feature_detected!`):
//! CPUID and, for the wide registers, that the OS saves them (XCR0), so a flag the OS does not
//! back is not trusted. Each field names a set of instructions a kernel family is compiled for; a
//! kernel runs only where its whole set is there.
//!
//! `OWRUN_CPU` caps what the kernels may use, to measure or test each path on one machine:
//! `avx512` (everything an x86 CPU has), `avx2` (no AVX-512), `neon` (everything an ARM CPU has),
//! `portable` (no SIMD kernel at all). Read here, once, and nowhere else; a value that names no
//! path is reported on stderr and ignored.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// AVX2 with FMA: the fused 16-bit dot products and the portable loops compiled wide.
    #[cfg(target_arch = "x86_64")]
    pub avx2_fma: bool,
    /// F16C beside AVX2 + FMA: f16 weights converted in the loop.
    #[cfg(target_arch = "x86_64")]
    pub f16c: bool,
    /// AVX-512 F and VL: the 16-bit tiles.
    #[cfg(target_arch = "x86_64")]
    pub avx512: bool,
    /// AVX-512 F/BW/VL with VNNI (and F16C, FMA): the quantized kernels.
    #[cfg(target_arch = "x86_64")]
    pub avx512_vnni: bool,
    /// AVX-512 BF16 (pair dot products for bf16 weights).
    #[cfg(target_arch = "x86_64")]
    pub avx512_bf16: bool,
    /// ARM NEON (every AArch64 CPU).
    #[cfg(target_arch = "aarch64")]
    pub neon: bool,
    /// ARM's int8 dot products (SDOT): ARMv8.2's extension, on most cores since 2017.
    #[cfg(target_arch = "aarch64")]
    pub dotprod: bool,
}

/// How far `OWRUN_CPU` lets the kernels go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Portable,
    Avx2,
    Everything,
}

fn cap() -> Cap {
    match std::env::var("OWRUN_CPU").ok().as_deref().map(str::trim) {
        None | Some("") | Some("avx512") | Some("neon") | Some("native") => Cap::Everything,
        Some("avx2") => Cap::Avx2,
        Some("portable") => Cap::Portable,
        Some(other) => {
            eprintln!(
                "owrun: warning: OWRUN_CPU={other:?} names no kernel path (avx512, avx2, neon, \
                 portable); using everything this CPU has"
            );
            Cap::Everything
        }
    }
}

/// This CPU's features, as the kernels may use them.
pub fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(|| match cap() {
        Cap::Portable => Features::default(),
        cap => detect(cap),
    })
}

#[cfg(target_arch = "x86_64")]
fn detect(cap: Cap) -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx2_fma = has!("avx2") && has!("fma");
    let avx512 = cap == Cap::Everything && has!("avx512f") && has!("avx512vl");
    Features {
        avx2_fma,
        f16c: avx2_fma && has!("f16c"),
        avx512,
        avx512_vnni: avx512
            && has!("avx512bw")
            && has!("avx512vnni")
            && has!("f16c")
            && has!("fma"),
        avx512_bf16: avx512 && has!("avx512bf16"),
    }
}

#[cfg(target_arch = "aarch64")]
fn detect(_cap: Cap) -> Features {
    use std::arch::is_aarch64_feature_detected as has;
    let neon = has!("neon");
    Features {
        neon,
        dotprod: neon && has!("dotprod"),
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect(_cap: Cap) -> Features {
    Features::default()
}
