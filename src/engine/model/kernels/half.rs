//! 16-bit weights (f16, bf16) times f32 activations, converted as they are read.
//!
//! candle 0.11's CPU matmul takes both operands in one dtype and has no bf16 at all, so a 16-bit
//! checkpoint would have to be widened to f32 (twice the memory) before it could run. These
//! kernels multiply f32 activations by f16 or bf16 weights as they are stored: the register
//! tiles of `half_tiles` (AVX-512, AVX2 for prefill, NEON); for decoding on AVX2, dot products
//! with the conversion fused in (`x86::avx2`); elsewhere (rows not a multiple of 8, or no SIMD)
//! one weight row at a time widened into a buffer that stays in L1 and reused for every
//! activation row. Each path is checked against a scalar reference in the tests.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::cpu;
use super::dots::dots;
use super::half16::Half16;
use super::half_tiles;

/// Rows of activations at or below which the fused dot products run (decoding, small batches);
/// above it the weights are widened a row at a time and reused across rows.
#[cfg(target_arch = "x86_64")]
const FUSED_MAX_ROWS: usize = 4;

/// A whole 16-bit matrix widened to f32, on every core (for prefill, which then runs as one
/// f32 GEMM: compute-bound, so reading the weights twice costs little).
pub fn widen<T: Half16>(w: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(1 << 16)
        .zip(w.par_chunks(1 << 16))
        .for_each(|(d, s)| T::widen_into(s, d));
    out
}

/// Output columns handled by one task: enough work to amortise scheduling, small enough that
/// two cores share the work evenly on a small matrix.
const COLUMNS_PER_TASK: usize = 16;

/// `x` (m × k, row-major f32) times `w`ᵀ where `w` is n × k (one row per output feature, as
/// checkpoints store linear layers). Returns m × n, row-major.
pub fn matmul<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "activations are m × k");
    assert_eq!(w.len(), n * k, "weights are n × k");
    #[cfg(target_arch = "x86_64")]
    {
        if half_tiles::avx512_available(k) {
            return match m <= half_tiles::MATVEC_MAX_ROWS {
                true => half_tiles::matvec(x, m, k, w, n),
                false => half_tiles::matmul_avx512(x, m, k, w, n),
            };
        }
        if m > FUSED_MAX_ROWS && half_tiles::avx2_available(k) {
            return half_tiles::matmul_avx2(x, m, k, w, n);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if half_tiles::neon_available(k) {
        return half_tiles::matmul_neon(x, m, k, w, n);
    }
    #[cfg(target_arch = "x86_64")]
    let (simd, fused) = {
        let f = cpu::features();
        (f.avx2_fma, m <= FUSED_MAX_ROWS && f.f16c)
    };
    // Each task computes a block of output columns for every row: its rows of `w` are read once.
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(COLUMNS_PER_TASK))
        .into_par_iter()
        .map(|b| {
            let first = b * COLUMNS_PER_TASK;
            let cols = COLUMNS_PER_TASK.min(n - first);
            let mut out = vec![0f32; m * cols];
            #[cfg(target_arch = "x86_64")]
            if fused {
                for c in 0..cols {
                    let j = first + c;
                    let wj = &w[j * k..(j + 1) * k];
                    for i in 0..m {
                        // SAFETY: AVX2, FMA and F16C were detected above; lengths are k.
                        out[i * cols + c] = unsafe { T::dot_x86(&x[i * k..(i + 1) * k], wj) };
                    }
                }
                return out;
            }
            let mut row = vec![0f32; k];
            for c in 0..cols {
                let j = first + c;
                T::widen_into(&w[j * k..(j + 1) * k], &mut row);
                let mut column = vec![0f32; m];
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: the CPU was checked for AVX2 and FMA above.
                    unsafe { super::x86::avx2::dots(x, k, &row, &mut column) };
                } else {
                    dots(x, k, &row, &mut column);
                }
                #[cfg(not(target_arch = "x86_64"))]
                dots(x, k, &row, &mut column);
                for (i, v) in column.into_iter().enumerate() {
                    out[i * cols + c] = v;
                }
            }
            out
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (b, block) in blocks.iter().enumerate() {
        let first = b * COLUMNS_PER_TASK;
        let cols = COLUMNS_PER_TASK.min(n - first);
        for i in 0..m {
            y[i * n + first..i * n + first + cols]
                .copy_from_slice(&block[i * cols..(i + 1) * cols]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::super::max_difference;
    use super::*;
    use half::{bf16, f16};

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A cheap deterministic spread of positive and negative values.
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn half_matmuls_match_the_scalar_reference() {
        // Odd sizes: a partial column block and a dot-product tail.
        for (m, k, n) in [(1, 37, 5), (3, 64, 33), (7, 129, 17)] {
            let x = values(m * k, 1);
            let w32 = values(n * k, 7);
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            // Where the CPU multiplies bf16 pairs, the activations are rounded to bf16 first.
            let xb: Vec<f32> = match half_tiles::rounds_bf16_activations(k) {
                true => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
                false => x.clone(),
            };
            let want_b = reference(
                &xb,
                m,
                k,
                &wb.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                n,
            );
            let want_portable = reference(
                &x,
                m,
                k,
                &wb.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                n,
            );
            let want_h = reference(
                &x,
                m,
                k,
                &wh.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                n,
            );
            let got_b = matmul(&x, m, k, &wb, n);
            let got_h = matmul(&x, m, k, &wh, n);
            // The portable path, whatever this CPU has.
            let row: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let mut portable = vec![0f32; m * n];
            for j in 0..n {
                let mut col = vec![0f32; m];
                dots(&x, k, &row[j * k..(j + 1) * k], &mut col);
                for i in 0..m {
                    portable[i * n + j] = col[i];
                }
            }
            for (got, want) in [(got_b, want_b), (got_h, want_h), (portable, want_portable)] {
                let err = max_difference(&got, &want);
                assert!(err < 1e-4 * k as f32, "{m}x{k}x{n}: max error {err}");
            }
        }
    }
}
