//! Decoding (fewer than 16 activation rows) with quantized weights on AVX-512 VNNI, from the
//! blocks as stored: each weight row is read once and multiplied by up to 4 activation rows, one
//! row at a time per thread (one memory stream each). The instructions are in
//! `x86::avx512_quant_rows`.
//!
//! As llama.cpp and candle do, the activations are quantized once per matmul to 8 bits per value
//! with one f32 scale per block, and each dot product is integer arithmetic per block, scaled once.

use rayon::prelude::*;

use super::blocks::{block_scale, to_int8, BlockType};
use super::SharedOut;

/// Activations quantized for one weight type: `m` rows of `k` int8 values, one f32 scale per
/// weight block, and the sums of every 32 (Q4_K) or 16 quantized values (K-quants fold their minimums and
/// offsets into those). For Q4_K each run of 128 values is stored in the order its nibbles come
/// out of the weights (0..32, 64..96, 32..64, 96..128), so each 64-byte load lines up.
pub(super) struct Acts {
    pub k: usize,
    pub qs: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i16>,
}

/// Values per activation sum: Q4_K's minimums apply to 32 values, Q6_K's offsets to 16.
fn sum_len(kind: BlockType) -> usize {
    match kind {
        BlockType::Q4K => 32,
        BlockType::Q6K | BlockType::Q8_0 => 16,
    }
}

/// Where value `p` of a row is stored for `kind` (the Q4_K order above; identity otherwise).
pub(super) fn stored_at(kind: BlockType, p: usize) -> usize {
    if kind != BlockType::Q4K {
        return p;
    }
    let (run, i) = (p / 128 * 128, p % 128);
    run + match i {
        0..32 => i,
        32..64 => i + 32,
        64..96 => i - 32,
        _ => i,
    }
}

/// # Safety
/// AVX-512 F is available (compiled for it so rounding is one instruction, not a libm call).
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx512vl")
)]
pub(super) unsafe fn quantize_acts(kind: BlockType, x: &[f32], m: usize, k: usize) -> Acts {
    let block = kind.block_len();
    let mut acts = Acts {
        k,
        qs: vec![0; m * k],
        scales: vec![0.0; m * k / block],
        sums: vec![0; m * k / sum_len(kind)],
    };
    let bytes = acts.qs.chunks_mut(k);
    let scales = acts.scales.chunks_mut(k / block);
    let sums = acts.sums.chunks_mut(k / sum_len(kind));
    for (((row, qs), scales), sums) in x.chunks(k).zip(bytes).zip(scales).zip(sums) {
        for (b, values) in row.chunks(block).enumerate() {
            let (scale, inverse) = block_scale(values);
            scales[b] = scale;
            for (i, v) in values.iter().enumerate() {
                let p = b * block + i;
                let q = to_int8(*v, inverse);
                qs[stored_at(kind, p)] = q;
                sums[p / sum_len(kind)] += q as i16;
            }
        }
    }
    acts
}

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

/// Activation rows that share one pass over a weight row (their accumulators stay in registers).
pub(super) const ROWS: usize = 4;
