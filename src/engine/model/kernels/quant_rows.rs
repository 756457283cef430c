//! Decoding (fewer than 16 activation rows) with quantized weights on AVX-512 VNNI, from the
//! blocks as stored: each weight row is read once and multiplied by up to 4 activation rows, one
//! row at a time per thread (one memory stream each). The instructions are in
//! `x86::avx512_quant_rows`.
//!
//! As llama.cpp and candle do, the activations are quantized once per matmul to 8 bits per value
//! with one f32 scale per block, and each dot product is integer arithmetic per block, scaled once.

use rayon::prelude::*;

use super::block_acts::{quantize_acts, BlockType, ROWS};
use super::SharedOut;

/// `x` (m × k, row-major) times the transpose of `w` (n rows of k values in `kind`'s blocks).
/// Returns m × n, row-major. `quant::matmul` calls it where the CPU has AVX-512 VNNI.
pub(super) fn matmul(
    kind: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    let row_bytes = k / kind.block_len() * kind.block_bytes();
    // SAFETY: `quant::matmul` checked AVX-512 before calling.
    let acts = unsafe { quantize_acts(kind, x, m, k) };
    let mut y = vec![0f32; m * n];
    // Tasks own disjoint runs of output columns: enough of them to balance the cores, each long
    // enough to amortise its scheduling.
    let threads = rayon::current_num_threads();
    // Measured on TinyLlama Q4_K_M decode (2 threads): one task per thread, or two, were 10%
    // slower; two weight rows per pass (two memory streams per thread) 25% slower.
    let per_task = (n / (threads * 8)).clamp(4, 64);
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let columns = t * per_task..((t + 1) * per_task).min(n);
        let out = &out;
        let mut row = 0;
        while row < m {
            let rows = (m - row).min(ROWS);
            for j in columns.clone() {
                let wj = &w[j * row_bytes..(j + 1) * row_bytes];
                let mut dots = [0f32; ROWS];
                // SAFETY: the caller checked the CPU's features and the row length; `wj` holds
                // whole blocks of `kind`, `acts` rows `row..row + rows` exist.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    super::x86::avx512_quant_rows::dots(kind, wj, &acts, row, rows, &mut dots)
                };
                for (i, d) in dots.iter().take(rows).enumerate() {
                    // SAFETY: (row + i, j) is written by this task alone (it owns column j),
                    // inside the m × n buffer.
                    unsafe { *out.0.add((row + i) * n + j) = *d };
                }
            }
            row += rows;
        }
    });
    y
}
