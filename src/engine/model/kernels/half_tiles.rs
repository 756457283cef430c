//! 16-bit weights (f16, bf16) on SIMD: f32 activations (m × k) times the transpose of 16-bit
//! weights (n × k), converting the weights inside the loop. One portable driver (`tiled`) cuts
//! the work into tasks; each ISA's register tile is in `x86/` or `arm/`: AVX-512's 4 × 6 (bf16
//! pairs multiplied by `vdpbf16ps` where the CPU has AVX-512 BF16), AVX2's 4 × 3, NEON's 4 × 4.
//! For decoding on AVX-512, `matvec` streams one weight row at a time instead.
//!
//! Why by hand: candle 0.11 has no f16 × f32 or bf16 matmul, and its f32 GEMM (the gemm crate
//! without its nightly-only AVX-512 kernels) reached ~70 GFLOP/s on two cores where llama.cpp's
//! reaches ~300, after a widening copy of every weight. This is the dot-product tiling that
//! llama.cpp's tinyBLAS uses: a tile of activation rows × weight rows keeps its accumulators in
//! registers, so each loaded vector feeds several multiply-adds.

use rayon::prelude::*;

use super::half16::Half16;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::half16::Load16;
#[cfg(target_arch = "x86_64")]
use super::x86::avx512_half as avx512;
use super::{cpu, SharedOut};

/// Whether the AVX-512 kernels (F and VL) run rows of `k` values on this CPU.
#[cfg(target_arch = "x86_64")]
pub fn avx512_available(k: usize) -> bool {
    k.is_multiple_of(16) && cpu::features().avx512
}

/// Whether the AVX2 tiles (with FMA and F16C) run rows of `k` values on this CPU.
#[cfg(target_arch = "x86_64")]
pub fn avx2_available(k: usize) -> bool {
    let f = cpu::features();
    k.is_multiple_of(8) && f.avx2_fma && f.f16c
}

/// Whether the NEON tiles run rows of `k` values on this CPU.
#[cfg(target_arch = "aarch64")]
pub fn neon_available(k: usize) -> bool {
    k.is_multiple_of(8) && cpu::features().neon
}

/// Weight tiles per task: the task's weight rows stay in L2 while every activation block
/// passes over them.
const TILES_PER_TASK: usize = 8;

/// `x` (m × k) times `w`ᵀ (`w` n × k): m × n, row-major, through AVX-512's 4 × 6 tiles. Call only
/// where `avx512_available(k)`.
#[cfg(target_arch = "x86_64")]
pub fn matmul_avx512<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize) -> Vec<f32> {
    use avx512::{RM, RN};
    assert!(avx512_available(k), "AVX-512 and rows of a multiple of 16");
    let x_bf16 = bf16_activations::<T>(x, k);
    tiled::<T, RM, RN>(x, m, k, w, n, |i, j, rm, rn, tile| {
        let wp = w.as_ptr() as *const u16;
        // SAFETY: AVX-512 F was detected (`avx512_available`); rows i..i + rm of x and j..j + rn
        // of w exist and hold k values, k a multiple of 16.
        unsafe {
            match &x_bf16 {
                Some(xb) => {
                    avx512::tile_bf16_dot(xb.as_ptr().add(i * k), wp.add(j * k), k, rm, rn, tile)
                }
                None => avx512::tile(
                    T::LOAD16,
                    x.as_ptr().add(i * k),
                    wp.add(j * k),
                    k,
                    rm,
                    rn,
                    tile,
                ),
            }
        }
    })
}

/// As [`matmul_avx512`], through AVX2's 4 × 3 tiles. Call only where `avx2_available(k)`.
#[cfg(target_arch = "x86_64")]
pub fn matmul_avx2<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize) -> Vec<f32> {
    use super::x86::avx2_half::{tile, TM, TN};
    assert!(avx2_available(k), "AVX2, F16C and rows of a multiple of 8");
    // SAFETY: AVX2, FMA and F16C were detected; k is a multiple of 8.
    unsafe { simd_tiles::<T, TM, TN>(x, m, k, w, n, tile) }
}

/// As [`matmul_avx512`], through NEON's 4 × 4 tiles (decode and prefill). Call only where
/// `neon_available(k)`.
#[cfg(target_arch = "aarch64")]
pub fn matmul_neon<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize) -> Vec<f32> {
    use super::arm::neon_half::{tile, TM, TN};
    assert!(neon_available(k), "NEON and rows of a multiple of 8");
    // SAFETY: NEON was detected; k is a multiple of 8.
    unsafe { simd_tiles::<T, TM, TN>(x, m, k, w, n, tile) }
}

/// A 16-bit tile kernel of `x86/` or `arm/`: weights read as `Load16`, activation rows at `x`,
/// weight rows at `w`, `k` values each, `rm` × `rn` dot products into the tile.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type Tile16<const TM: usize, const TN: usize> =
    unsafe fn(Load16, *const f32, *const u16, usize, usize, usize, &mut [[f32; TN]; TM]);

/// `tiled` over one ISA's tile kernel, which reads the weights as `T` stores them.
///
/// # Safety
/// The CPU runs `tile`, and `k` is a multiple of its step.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn simd_tiles<T: Half16, const TM: usize, const TN: usize>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[T],
    n: usize,
    tile: Tile16<TM, TN>,
) -> Vec<f32> {
    tiled::<T, TM, TN>(x, m, k, w, n, |i, j, rm, rn, out| {
        let wp = w.as_ptr() as *const u16;
        // SAFETY: the caller's; rows i..i + rm of x and j..j + rn of w hold k values.
        unsafe {
            tile(
                T::LOAD16,
                x.as_ptr().add(i * k),
                wp.add(j * k),
                k,
                rm,
                rn,
                out,
            )
        }
    })
}

/// The driver every ISA's tiles share: tasks own runs of `TN · TILES_PER_TASK` weight rows
/// (which stay in L2 while every run of `TM` activation rows passes over them); `tile(i, j, rm,
/// rn, out)` computes activation rows i..i + rm against weight rows j..j + rn.
fn tiled<T: Half16, const TM: usize, const TN: usize>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[T],
    n: usize,
    tile: impl Fn(usize, usize, usize, usize, &mut [[f32; TN]; TM]) + Sync,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "activations are m × k");
    assert_eq!(w.len(), n * k, "weights are n × k");
    let mut y = vec![0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    let rows_per_task = TN * TILES_PER_TASK;
    (0..n.div_ceil(rows_per_task))
        .into_par_iter()
        .for_each(|t| {
            let out = &out;
            let last = ((t + 1) * rows_per_task).min(n);
            for i in (0..m).step_by(TM) {
                let rm = TM.min(m - i);
                for j in (t * rows_per_task..last).step_by(TN) {
                    let rn = TN.min(last - j);
                    let mut block = [[0f32; TN]; TM];
                    tile(i, j, rm, rn, &mut block);
                    for (a, row) in block.iter().take(rm).enumerate() {
                        for (b, v) in row.iter().take(rn).enumerate() {
                            // SAFETY: columns j..j + rn belong to this task alone; (i + a, j + b)
                            // is inside the m × n output.
                            unsafe { *out.0.add((i + a) * n + j + b) = *v };
                        }
                    }
                }
            }
        });
    y
}

/// Rows of activations up to which `matvec` runs instead of the AVX-512 tiles.
#[cfg(target_arch = "x86_64")]
pub const MATVEC_MAX_ROWS: usize = 4;
/// Weight rows per task in `matvec`: one contiguous stream per task.
#[cfg(target_arch = "x86_64")]
const MATVEC_ROWS_PER_TASK: usize = 64;

/// Decoding on AVX-512 (m ≤ 4 rows): each weight row is streamed once and multiplied by every
/// activation row, 16 (f16) or 32 (bf16 pairs, where the CPU has AVX-512 BF16) values per
/// instruction. One weight row at a time keeps one memory stream per thread (the 6-row tiles
/// were slower here: 14 against 15.5 tokens/s). Call only where `avx512_available(k)`.
#[cfg(target_arch = "x86_64")]
pub fn matvec<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize) -> Vec<f32> {
    assert!(
        avx512_available(k) && m <= MATVEC_MAX_ROWS,
        "AVX-512, k a multiple of 16, m ≤ 4"
    );
    assert_eq!(x.len(), m * k, "activations are m × k");
    assert_eq!(w.len(), n * k, "weights are n × k");
    let x_bf16 = bf16_activations::<T>(x, k);
    let mut y = vec![0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(MATVEC_ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|t| {
            let out = &out;
            for j in t * MATVEC_ROWS_PER_TASK..((t + 1) * MATVEC_ROWS_PER_TASK).min(n) {
                let mut dots = [0f32; MATVEC_MAX_ROWS];
                // SAFETY: AVX-512 F/VL (and BF16 where x_bf16 is set) were detected; row j of w
                // and the m rows of x hold k values.
                unsafe {
                    let wj = w.as_ptr().add(j * k) as *const u16;
                    match (&x_bf16, T::LOAD16) {
                        (Some(xb), _) => avx512::row_bf16_dot(xb, m, k, wj, &mut dots),
                        (None, Load16::F16) => avx512::row_f16(x, m, k, wj, &mut dots),
                        (None, Load16::Bf16) => avx512::row_bf16(x, m, k, wj, &mut dots),
                    }
                };
                for (i, d) in dots.iter().take(m).enumerate() {
                    // SAFETY: row j belongs to this task alone; (i, j) is inside the output.
                    unsafe { *out.0.add(i * n + j) = *d };
                }
            }
        });
    y
}

/// bf16 weights on a CPU with AVX-512 BF16 multiply bf16 pairs: the activations are rounded to
/// bf16 once per matmul (as llama.cpp does for bf16 models), and each instruction does 32
/// products instead of 16. None: the f32 activations are used as they are.
#[cfg(target_arch = "x86_64")]
fn bf16_activations<T: Half16>(x: &[f32], k: usize) -> Option<Vec<u16>> {
    match T::LOAD16 {
        // SAFETY: AVX-512 BF16 was detected.
        Load16::Bf16 if k.is_multiple_of(32) && cpu::features().avx512_bf16 => {
            Some(unsafe { avx512::to_bf16(x) })
        }
        _ => None,
    }
}

/// Whether bf16 weights with rows of `k` values are multiplied by activations rounded to bf16
/// on this CPU (the pair dot products), for tests that build a reference.
#[cfg(all(test, target_arch = "x86_64"))]
pub fn rounds_bf16_activations(k: usize) -> bool {
    avx512_available(k) && k.is_multiple_of(32) && cpu::features().avx512_bf16
}
#[cfg(all(test, not(target_arch = "x86_64")))]
pub fn rounds_bf16_activations(_k: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn tiles_match_the_scalar_reference() {
        // Edges in both directions: 9 = 2 tiles + 1 row, 61 = 1 task + 13 rows.
        // k a multiple of 32: bf16 weights take the pair dot products where the CPU has them.
        for (m, k, n) in [(1, 16, 1), (9, 80, 61), (4, 256, 6), (9, 96, 61)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729) % 19) as f32 / 9.0 - 1.0)
                .collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let reference = |wf: &dyn Fn(usize) -> f32, round: bool| -> Vec<f32> {
                let xf = |i: usize| match round {
                    true => bf16::from_f32(x[i]).to_f32(),
                    false => x[i],
                };
                let mut y = vec![0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        y[i * n + j] = (0..k)
                            .map(|p| xf(i * k + p) as f64 * wf(j * k + p) as f64)
                            .sum::<f64>() as f32;
                    }
                }
                y
            };
            let mut cases = Vec::new();
            // Each ISA this CPU has, through the same `_available` checks `half::matmul`
            // dispatches on.
            #[cfg(target_arch = "x86_64")]
            {
                if avx512_available(k) {
                    // That path may round the activations to bf16 first: so does its reference.
                    let rounds_x = rounds_bf16_activations(k);
                    let (h, b) = (
                        matmul_avx512(&x, m, k, &wh, n),
                        matmul_avx512(&x, m, k, &wb, n),
                    );
                    cases.push((h, reference(&|i| wh[i].to_f32(), false)));
                    cases.push((b, reference(&|i| wb[i].to_f32(), rounds_x)));
                }
                if avx2_available(k) {
                    // The AVX2 tiles take the f32 activations as they are.
                    let (h, b) = (matmul_avx2(&x, m, k, &wh, n), matmul_avx2(&x, m, k, &wb, n));
                    cases.push((h, reference(&|i| wh[i].to_f32(), false)));
                    cases.push((b, reference(&|i| wb[i].to_f32(), false)));
                }
            }
            #[cfg(target_arch = "aarch64")]
            if neon_available(k) {
                let (h, b) = (matmul_neon(&x, m, k, &wh, n), matmul_neon(&x, m, k, &wb, n));
                cases.push((h, reference(&|i| wh[i].to_f32(), false)));
                cases.push((b, reference(&|i| wb[i].to_f32(), false)));
            }
            // Every AArch64 CPU has NEON and owrun's x86 users AVX2: a run where no tile kernel
            // ran tested nothing, unless OWRUN_CPU=portable asked for exactly that.
            let portable = std::env::var("OWRUN_CPU").is_ok_and(|v| v.trim() == "portable");
            assert!(
                portable || !cases.is_empty(),
                "no 16-bit tile kernel runs on this CPU"
            );
            for (got, want) in cases {
                let err = super::super::max_difference(&got, &want);
                assert!(err < 1e-4 * k as f32, "{m}x{k}x{n}: max error {err}");
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod timing {
    use super::*;
    use half::{bf16, f16};

    /// `cargo test --release time_half_gemm -- --ignored --nocapture`: GFLOP/s of the kernel.
    #[test]
    #[ignore]
    fn time_half_gemm() {
        // TinyLlama's gate/up projection, then its down projection (long rows).
        for (m, k, n) in [(128, 2048, 5632), (128, 5632, 2048)] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 13.0).collect();
            let wh: Vec<f16> = (0..n * k)
                .map(|i| f16::from_f32((i % 7) as f32 / 7.0))
                .collect();
            let wb: Vec<bf16> = wh.iter().map(|v| bf16::from_f32(v.to_f32())).collect();
            for _ in 0..3 {
                let t = std::time::Instant::now();
                std::hint::black_box(matmul_avx512(&x, m, k, &wh, n));
                let f16s = t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                std::hint::black_box(matmul_avx512(&x, m, k, &wb, n));
                let bf16s = t.elapsed().as_secs_f64();
                let flop = 2.0 * (m * k * n) as f64;
                eprintln!(
                    "{m}x{k}x{n} AVX-512: f16 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s",
                    flop / f16s / 1e9,
                    flop / bf16s / 1e9
                );
                {
                    let t = std::time::Instant::now();
                    std::hint::black_box(matmul_avx2(&x, m, k, &wh, n));
                    let f16s = t.elapsed().as_secs_f64();
                    let t = std::time::Instant::now();
                    std::hint::black_box(matmul_avx2(&x, m, k, &wb, n));
                    let bf16s = t.elapsed().as_secs_f64();
                    eprintln!(
                        "{m}x{k}x{n} AVX2: f16 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s",
                        flop / f16s / 1e9,
                        flop / bf16s / 1e9
                    );
                }
            }
        }
    }
}
