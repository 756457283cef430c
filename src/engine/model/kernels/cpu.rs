//! What this CPU can run, detected once for every kernel.
//!
//! Detection is the standard library's (`is_x86_feature_detected!`): CPUID and, for the wide
//! registers, that the OS saves them (XCR0), so a flag the OS does not back is not trusted. Each
//! field names a set of instructions a kernel family is compiled for; a kernel runs only where
//! its whole set is there.
//!
//! `OWRUN_NO_AVX512=1` turns the AVX-512 sets off (to compare with the AVX2 paths on one machine,
//! or to rule them out when a result looks wrong): read here, once, and nowhere else.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// AVX2 with FMA: the fused 16-bit dot products and the portable loops compiled wide.
    pub avx2_fma: bool,
    /// F16C beside AVX2 + FMA: f16 weights converted in the loop.
    pub f16c: bool,
    /// AVX-512 F and VL: the 16-bit tiles.
    pub avx512: bool,
    /// AVX-512 F/BW/VL with VNNI (and F16C, FMA): the quantized kernels.
    pub avx512_vnni: bool,
    /// AVX-512 BF16 (pair dot products for bf16 weights).
    pub avx512_bf16: bool,
}

/// This CPU's features, as the kernels may use them.
pub fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        let avx512_allowed = std::env::var_os("OWRUN_NO_AVX512").is_none();
        detect(avx512_allowed)
    })
}

#[cfg(target_arch = "x86_64")]
fn detect(avx512_allowed: bool) -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx2_fma = has!("avx2") && has!("fma");
    let avx512 = avx512_allowed && has!("avx512f") && has!("avx512vl");
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

#[cfg(not(target_arch = "x86_64"))]
fn detect(_avx512_allowed: bool) -> Features {
    Features::default()
}
