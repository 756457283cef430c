//! Activations prepared for the quantized kernels, in the layouts both the drivers and each
//! ISA's instructions read: int8 values with one f32 scale per block (as llama.cpp and candle
//! quantize them), row by row for decoding ([`Acts`]) and interleaved in groups of 16 rows for
//! prefill ([`GroupedActs`]); and the shapes the two sides agree on.

use super::blocks::{block_scale, to_int8, BlockType};

/// Activations for the vec-dot kernels: each of `m` rows of `k` values as int8 in their natural
/// order, one f32 scale per block of `block` values (the weight type's block: 32 or 256), and
/// the sum of every 16 int8 values (where a weight type has minimums or offsets, they multiply
/// these sums rather than every value).
pub struct RowActs {
    pub k: usize,
    pub block: usize,
    pub qs: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i16>,
    /// Per block: its scale times the sum of its int8 values (what a block's offset or minimum
    /// multiplies), ready in f32.
    pub scaled_sums: Vec<f32>,
}

/// One row of [`RowActs`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub scales: &'a [f32],
    pub sums: &'a [i16],
    pub scaled_sums: &'a [f32],
}

impl RowActs {
    pub fn quantize(x: &[f32], m: usize, k: usize, block: usize) -> RowActs {
        assert!(k.is_multiple_of(block) && block.is_multiple_of(16));
        let mut acts = RowActs {
            k,
            block,
            qs: vec![0; m * k],
            scales: vec![0.0; m * k / block],
            sums: vec![0; m * k / 16],
            scaled_sums: vec![0.0; m * k / block],
        };
        for (b, values) in x[..m * k].chunks_exact(block).enumerate() {
            let (scale, inverse) = block_scale(values);
            acts.scales[b] = scale;
            let qs = &mut acts.qs[b * block..(b + 1) * block];
            for (q, v) in qs.iter_mut().zip(values) {
                *q = to_int8(*v, inverse);
            }
            let mut total = 0i32;
            for (s, sixteen) in qs.chunks_exact(16).enumerate() {
                let sum: i16 = sixteen.iter().map(|&q| q as i16).sum();
                acts.sums[b * block / 16 + s] = sum;
                total += sum as i32;
            }
            acts.scaled_sums[b] = scale * total as f32;
        }
        acts
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let k = self.k;
        ActRow {
            qs: &self.qs[i * k..(i + 1) * k],
            scales: &self.scales[i * k / self.block..(i + 1) * k / self.block],
            sums: &self.sums[i * k / 16..(i + 1) * k / 16],
            scaled_sums: &self.scaled_sums[i * k / self.block..(i + 1) * k / self.block],
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
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx512vl")
)]
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
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx512vl")
)]
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
