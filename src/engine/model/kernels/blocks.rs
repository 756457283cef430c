//! GGML's block layouts, as every ISA's kernels read them, and the int8 quantization of
//! activations that the quantized dot products share (as llama.cpp and candle do it).

use crate::engine::format::ggml::GgmlType;

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

/// Whether the SIMD row kernels (AVX2, NEON) multiply `ty`: every block type but the IQ1–IQ3
/// grids, which run on the portable kernel.
pub fn has_simd_row_kernel(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4NL
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::IQ4XS
    )
}

/// The 16 values IQ4_NL and IQ4_XS's 4-bit indices stand for (a non-linear grid, denser near 0).
pub const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[inline(always)]
pub fn iq4_value(index: u8) -> i8 {
    IQ4_VALUES[(index & 0x0F) as usize]
}

/// Q3_K's sixteen 6-bit scales, unpacked from their 12 bytes and centred (stored value - 32):
/// bytes 0-7 hold the low 4 bits (scales 0-7 in the low nibbles, 8-15 in the high ones), bytes
/// 8-11 the top 2 bits (scale s in bits 2·(s / 4) of byte 8 + s % 4).
#[inline(always)]
pub fn q3k_scales(p: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|s| {
        let low = (p[s % 8] >> (4 * (s / 8))) & 0x0F;
        let high = (p[8 + s % 4] >> (2 * (s / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
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
/// so the value fits and is never -128. Adding and subtracting 1.5 · 2^23 rounds to an integer
/// in the FPU's default mode (ties to even) for any |x| < 2^22: two additions on every target,
/// which vectorise, where `round_ties_even` is a library call without SSE4.1.
#[inline(always)]
pub fn to_int8(v: f32, inverse: f32) -> i8 {
    const ROUND: f32 = 12_582_912.0;
    ((v * inverse + ROUND) - ROUND) as i8
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
