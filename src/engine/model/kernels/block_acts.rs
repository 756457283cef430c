//! Activations in the layouts the AVX-512 block kernels (`quant_rows`, `quant_tiles`) read:
//! int8 values with one f32 scale per block (as llama.cpp quantizes them), row by row for
//! decoding ([`Acts`]) and interleaved in groups of 16 rows for prefill ([`GroupedActs`]); and
//! the shapes the drivers and the instructions agree on.

use super::blocks::{block_scale, to_int8};
use crate::engine::format::ggml::GgmlType;

/// The block types the AVX-512 block kernels (`quant_rows`, `quant_tiles`) multiply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockType {
    Q8_0,
    Q4K,
    Q6K,
}

impl BlockType {
    pub fn of(ty: GgmlType) -> Option<BlockType> {
        match ty {
            GgmlType::Q8_0 => Some(BlockType::Q8_0),
            GgmlType::Q4K => Some(BlockType::Q4K),
            GgmlType::Q6K => Some(BlockType::Q6K),
            _ => None,
        }
    }

    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            BlockType::Q8_0 => 32,
            BlockType::Q4K | BlockType::Q6K => 256,
        }
    }

    /// Bytes per block, as GGML lays them out.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockType::Q8_0 => 34,
            BlockType::Q4K => 144,
            BlockType::Q6K => 210,
        }
    }
}

/// Activation rows that share one pass over a weight row (their accumulators stay in registers).
pub const ROWS: usize = 4;

/// Activations quantized for one weight type: `m` rows of `k` int8 values, one f32 scale per
/// weight block, and the sums of every 32 (Q4_K) or 16 quantized values (K-quants fold their minimums and
/// offsets into those). For Q4_K each run of 128 values is stored in the order its nibbles come
/// out of the weights (0..32, 64..96, 32..64, 96..128), so each 64-byte load lines up.
pub struct Acts {
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
pub fn stored_at(kind: BlockType, p: usize) -> usize {
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn quantize_acts(kind: BlockType, x: &[f32], m: usize, k: usize) -> Acts {
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

/// Activation rows per group: the 16 lanes of a 512-bit vector of i32 sums.
pub const LANES: usize = 16;
/// Weight rows unpacked and multiplied together by one step of the prefill kernel.
pub const TILE_ROWS: usize = 8;

/// Activations quantized to int8 and interleaved for the kernel: for each group of 16 rows and
/// each run of 4 values, the 16 rows' 4 bytes side by side (one 64-byte vector). Per weight
/// sub-block of `sub` values and per row: the activation scale `dx` and `dx` times the sum of
/// the sub-block's quantized values (which folds in the weights' minimums and offsets).
pub struct GroupedActs {
    pub k: usize,
    pub sub: usize,
    pub qs: Vec<i8>,
    pub dx: Vec<f32>,
    pub dx_sum: Vec<f32>,
}

/// `block`: values per activation scale (256 for K-quants, 32 for Q8_0, as llama.cpp uses).
///
/// # Safety
/// AVX-512 F is available (compiled for it so rounding is one instruction, not a libm call).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn group_acts(x: &[f32], m: usize, k: usize, block: usize, sub: usize) -> GroupedActs {
    let groups = m.div_ceil(LANES);
    let subs = k / sub;
    let mut acts = GroupedActs {
        k,
        sub,
        qs: vec![0; groups * LANES * k],
        dx: vec![0.0; groups * subs * LANES],
        dx_sum: vec![0.0; groups * subs * LANES],
    };
    let mut q = vec![0i8; k];
    let mut scales = vec![0f32; k / block];
    for (r, row) in x.chunks(k).enumerate() {
        let (g, lane) = (r / LANES, r % LANES);
        for (b, values) in row.chunks(block).enumerate() {
            let (scale, inverse) = block_scale(values);
            scales[b] = scale;
            for (i, v) in values.iter().enumerate() {
                q[b * block + i] = to_int8(*v, inverse);
            }
        }
        for (p, quad) in q.chunks(4).enumerate() {
            let at = ((g * (k / 4) + p) * LANES + lane) * 4;
            acts.qs[at..at + 4].copy_from_slice(quad);
        }
        for s in 0..subs {
            let dx = scales[s * sub / block];
            let sum: i32 = q[s * sub..(s + 1) * sub].iter().map(|&v| v as i32).sum();
            let at = (g * subs + s) * LANES + lane;
            acts.dx[at] = dx;
            acts.dx_sum[at] = dx * sum as f32;
        }
    }
    acts
}
