//! Quantized weights × f32 activations: the entry point for every block type, and the choice of
//! the kernel that runs it on this CPU.
//!
//! - `quant_tiles`: prefill (16 or more rows) on AVX-512 VNNI for every type but the IQ1–IQ3
//!   grids, each task's weight rows unpacked to bytes once for every activation row;
//! - `quant_rows`: decoding Q8_0, Q4_K and Q6_K (the blocks of real Q8_0 and Q4_K_M files) on
//!   AVX-512 VNNI, 512 bits at a time;
//! - `x86::avx2_quant`: every type but the IQ1–IQ3 grids on AVX2 (and with AVX-512 VNNI's dot
//!   products on 256-bit registers), one weight row against up to 4 activation rows;
//! - `arm::neon_quant`: the same types on ARM NEON (with `sdot` where the CPU has it);
//! - `vecdot`: every block type, in portable Rust; the driver the per-ISA row kernels share.
//!
//! Every path reads the blocks as stored: one copy of the model. The tests check each path this
//! CPU can run against a reference built from the dequantized weights (themselves checked
//! against the `gguf` package) and the unrounded activations, within the error the rounding of
//! the activations to 8 bits can make.

#[cfg(target_arch = "x86_64")]
use super::block_acts::BlockType;
use super::{cpu, vecdot};
#[cfg(target_arch = "x86_64")]
use super::{quant_rows, quant_tiles};
use crate::engine::format::ggml::GgmlType;

/// A kernel family that can multiply a block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// AVX-512 VNNI: `quant_tiles` for prefill (every type but the IQ1–IQ3 grids), `quant_rows`
    /// for decoding Q8_0 / Q4_K / Q6_K (the other types decode on `Avx2Vnni`'s rows).
    #[cfg(target_arch = "x86_64")]
    Avx512Blocks,
    /// `x86::avx2_quant` with AVX-512 VNNI's `vpdpbusd` on 256-bit registers.
    #[cfg(target_arch = "x86_64")]
    Avx2Vnni,
    /// `x86::avx2_quant`: AVX2, every type but the IQ1–IQ3 grids.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// `arm::neon_quant` with the dot-product extension (`sdot`).
    #[cfg(target_arch = "aarch64")]
    NeonDot,
    /// `arm::neon_quant` on baseline NEON.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// `vecdot`: every type, portable.
    Portable,
}

/// The paths this CPU runs `ty` with rows of `k` values on, fastest first.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn paths(ty: GgmlType, k: usize) -> Vec<Path> {
    let mut paths = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if quant_tiles::supports(ty)
        && k.is_multiple_of(ty.block_len().max(64))
        && cpu::features().avx512_vnni
    {
        paths.push(Path::Avx512Blocks);
    }
    #[cfg(target_arch = "x86_64")]
    if super::x86::avx2_quant::supports(ty) {
        let f = cpu::features();
        if f.avx512_vnni {
            paths.push(Path::Avx2Vnni);
        }
        if f.avx2_fma && f.f16c {
            paths.push(Path::Avx2);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if super::arm::neon_quant::supports(ty) {
        let f = cpu::features();
        if f.dotprod {
            paths.push(Path::NeonDot);
        }
        if f.neon {
            paths.push(Path::Neon);
        }
    }
    paths.push(Path::Portable);
    paths
}

/// `x` (m × k, row-major) times the transpose of the quantized matrix `w` (n rows of k values
/// in `ty`'s blocks). Returns m × n, row-major.
pub fn matmul(ty: GgmlType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    matmul_on(paths(ty, k)[0], ty, w, n, k, x, m)
}

/// As [`matmul`], through one path (one of `paths(ty, k)`).
pub fn matmul_on(
    path: Path,
    ty: GgmlType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    assert!(paths(ty, k).contains(&path), "{path:?} cannot run {ty:?}");
    assert_eq!(x.len(), m * k, "activations are m × k");
    let row_bytes = ty.row_bytes(k).expect("rows of whole blocks");
    assert_eq!(w.len(), n * row_bytes, "weights are n rows of k");
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Blocks => match BlockType::of(ty) {
            _ if m >= quant_tiles::MIN_ROWS => quant_tiles::matmul(ty, w, n, k, x, m),
            Some(kind) => quant_rows::matmul(kind, w, n, k, x, m),
            // Decoding the types without AVX-512 rows: AVX2's rows with VNNI (every CPU with
            // this path has them).
            // SAFETY: AVX-512 VNNI (this path) implies AVX2 and VNNI on 256-bit registers.
            None => unsafe { vecdot::matmul(super::x86::avx2_quant::rows_vnni, ty, w, n, k, x, m) },
        },
        // SAFETY: `paths` listed each only where the CPU has its instructions and it
        // multiplies `ty`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2Vnni => unsafe {
            vecdot::matmul(super::x86::avx2_quant::rows_vnni, ty, w, n, k, x, m)
        },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { vecdot::matmul(super::x86::avx2_quant::rows, ty, w, n, k, x, m) },
        #[cfg(target_arch = "aarch64")]
        Path::NeonDot => unsafe {
            vecdot::matmul(super::arm::neon_quant::rows_dotprod, ty, w, n, k, x, m)
        },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { vecdot::matmul(super::arm::neon_quant::rows, ty, w, n, k, x, m) },
        // SAFETY: the portable kernel runs everywhere.
        Path::Portable => unsafe { vecdot::matmul(vecdot::rows, ty, w, n, k, x, m) },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::model::kernels::dequant::dequantize;

    /// A deterministic stream of pseudo-random numbers (xorshift).
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in [-1, 1).
        pub fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Where each block type keeps its f16 scales (byte offsets in a block).
    fn f16_fields(ty: GgmlType) -> &'static [usize] {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q2K => &[80, 82],
            GgmlType::Q3K => &[108],
            GgmlType::Q6K => &[208],
            GgmlType::IQ1M => &[],
            _ => &[0],
        }
    }

    /// `blocks` blocks of `ty` of random bits, with finite scales in [0.001, 0.1).
    pub fn random_blocks(ty: GgmlType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
        let size = ty.block_bytes();
        let mut bytes: Vec<u8> = (0..blocks * size).map(|_| rng.next() as u8).collect();
        for block in bytes.chunks_exact_mut(size) {
            let scale = || {
                half::f16::from_f32(0.001 + 0.099 * (rng.next() >> 40) as f32 / (1u64 << 24) as f32)
            };
            let mut scale = scale;
            for &at in f16_fields(ty) {
                block[at..at + 2].copy_from_slice(&scale().to_le_bytes());
            }
            if ty == GgmlType::IQ1M {
                // The f16 scale: its nibble i is the top nibble of the last four u16 words' word i.
                let bits = scale().to_bits();
                for (i, shift) in [0, 4, 8, 12].into_iter().enumerate() {
                    let at = size - 8 + 2 * i;
                    let word = u16::from_le_bytes([block[at], block[at + 1]]);
                    let word = (word & 0x0FFF) | (((bits >> shift) & 0xF) << 12);
                    block[at..at + 2].copy_from_slice(&word.to_le_bytes());
                }
            }
        }
        bytes
    }

    /// Per output: the f64 product of the dequantized weights with the activations, and how far
    /// a kernel may be from it: each activation is rounded to the nearest of 255 steps of its
    /// block's largest magnitude (off by at most that / 254), so a block's product moves by at
    /// most Σ|w| · amax / 254; a little more for f32 sums.
    fn reference(
        ty: GgmlType,
        w: &[u8],
        n: usize,
        k: usize,
        x: &[f32],
        m: usize,
    ) -> Vec<(f64, f64)> {
        let mut wf = vec![0f32; n * k];
        dequantize(ty, w, &mut wf);
        let block = ty.block_len();
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            for j in 0..n {
                let wj = &wf[j * k..(j + 1) * k];
                let mut want = 0f64;
                let mut bound = 0f64;
                let mut magnitude = 0f64;
                for (xb, wb) in xi.chunks(block).zip(wj.chunks(block)) {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    let wsum: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                    bound += wsum * amax / 254.0;
                    magnitude += wsum * amax;
                    want += xb
                        .iter()
                        .zip(wb)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>();
                }
                out.push((want, bound * 1.0001 + magnitude * 1e-6 + 1e-6));
            }
        }
        out
    }

    /// Every quantized type on every path this CPU has, at decode and prefill shapes (and
    /// widths that leave partial tasks and tiles).
    #[test]
    fn every_block_type_on_every_path_matches_the_reference() {
        let mut rng = Rng::new(7);
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            for (m, blocks, n) in [(1, 2, 9), (3, 4, 7), (5, 1, 33), (16, 2, 8), (35, 3, 13)] {
                let k = blocks * ty.block_len().max(64);
                let w = random_blocks(ty, n * k / ty.block_len(), &mut rng);
                let x: Vec<f32> = (0..m * k).map(|_| rng.unit() * 4.0).collect();
                let want = reference(ty, &w, n, k, &x, m);
                for path in paths(ty, k) {
                    let got = matmul_on(path, ty, &w, n, k, &x, m);
                    for (idx, (g, (w, bound))) in got.iter().zip(&want).enumerate() {
                        let err = (*g as f64 - w).abs();
                        assert!(
                            err <= *bound,
                            "{ty:?} on {path:?}, {m}x{k}x{n}, output {idx}: {g} vs {w} (bound {bound})"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::tests::{random_blocks, Rng};
    use super::*;

    fn best(reps: usize, mut f: impl FnMut()) -> f64 {
        (0..reps)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    /// `cargo test --release time_kernels -- --ignored --nocapture`: the best of several runs of
    /// every path on one TinyLlama-sized matrix (`OWRUN_TIME_ONLY=Q4_K` for one type).
    #[test]
    #[ignore]
    fn time_kernels() {
        let (n, k) = (5632, 2048);
        let only = std::env::var("OWRUN_TIME_ONLY").ok();
        let mut rng = Rng::new(1);
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            if only.as_ref().is_some_and(|o| o != ty.name()) {
                continue;
            }
            let w = random_blocks(ty, n * k / ty.block_len(), &mut rng);
            for m in [1usize, 16, 128] {
                let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
                let reps = if m == 1 { 50 } else { 5 };
                for path in paths(ty, k) {
                    let t = best(reps, || {
                        std::hint::black_box(matmul_on(path, ty, &w, n, k, &x, m));
                    });
                    eprintln!(
                        "{} m={m} {path:?}: {:.3} ms ({:.1} GMAC/s)",
                        ty.name(),
                        t * 1e3,
                        (m * n * k) as f64 / t / 1e9
                    );
                }
            }
        }
    }
}
