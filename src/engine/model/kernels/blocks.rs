//! GGML's block layouts, as every ISA's kernels read them, and the int8 quantization of
//! activations that the quantized dot products share (as llama.cpp and candle do it).

use candle_core::quantized::GgmlDType;

/// The block types owrun's own quantized kernels multiply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockType {
    Q8_0,
    Q4K,
    Q6K,
}

impl BlockType {
    pub fn of(dtype: GgmlDType) -> Option<BlockType> {
        match dtype {
            GgmlDType::Q8_0 => Some(BlockType::Q8_0),
            GgmlDType::Q4K => Some(BlockType::Q4K),
            GgmlDType::Q6K => Some(BlockType::Q6K),
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

/// Q4_K's eight 6-bit scales and eight 6-bit minimums, unpacked from the 12 bytes GGML packs
/// them into: bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7, bytes
/// 4-7 the same for the minimums, bytes 8-11 the low 4 bits of scales 4-7 and minimums 4-7.
#[inline(always)]
pub fn q4k_scales_and_mins(p: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    // Four lanes of a u32 at a time (the decode kernel unpacks one block per 256 weights).
    let word = |i: usize| u32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let scales_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let mins_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
    let join = |lo: u32, hi: u32| (lo as u64 | (hi as u64) << 32).to_le_bytes();
    (join(a & LOW6, scales_hi), join(b & LOW6, mins_hi))
}

/// One block of activations' int8 scale (its largest magnitude maps to 127) and that scale's
/// inverse (0 for a block of zeros).
#[inline(always)]
pub fn block_scale(values: &[f32]) -> (f32, f32) {
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    (scale, if scale > 0.0 { 1.0 / scale } else { 0.0 })
}

/// `v` quantized with `block_scale`'s inverse: rounded to nearest even; |v| * inverse ≤ 127,
/// so the value fits and is never -128. Inlined into callers compiled for AVX-512, where the
/// rounding is one instruction rather than a libm call.
#[inline(always)]
pub fn to_int8(v: f32, inverse: f32) -> i8 {
    (v * inverse).round_ties_even() as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4k_scales_unpack_as_ggml_packs_them() {
        // GGML's get_scale_min_k4, written out per index.
        let reference = |j: usize, q: &[u8; 12]| -> (u8, u8) {
            if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            }
        };
        for seed in 0..50u32 {
            let q: [u8; 12] = std::array::from_fn(|i| {
                (seed.wrapping_mul(2654435761) >> (i % 24)) as u8 ^ i as u8
            });
            let (scales, mins) = q4k_scales_and_mins(&q);
            for j in 0..8 {
                assert_eq!(
                    (scales[j], mins[j]),
                    reference(j, &q),
                    "seed {seed}, index {j}"
                );
            }
        }
    }
}
