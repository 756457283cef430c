//! Every block type owrun reads, turned back into f32 values: for embedding lookups, for devices
//! and paths that take dense weights, and as the plain statement of each layout that the
//! kernels' faster code must agree with. Each formula is evaluated in the order GGML's reference
//! (and the `gguf` package's) does, so the values are bit-exact; the tests check them against
//! that package's dequantizer on random blocks (`scripts/make_quant_fixtures.py`).

use half::f16;

use super::blocks::{iq4_value, q3k_scales, q4k_scales_and_mins};
use super::iq_tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS,
};
use crate::engine::format::ggml::GgmlType;

#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline(always)]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `bytes` (whole blocks of `ty`, or values of a float type) as f32 values into `out`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (block, size) = (ty.block_len(), ty.block_bytes());
    assert_eq!(
        bytes.len() / size * block,
        out.len(),
        "{} values",
        ty.name()
    );
    let f: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, y| y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2K => q2k,
        GgmlType::Q3K => q3k,
        GgmlType::Q4K => q4k,
        GgmlType::Q5K => q5k,
        GgmlType::Q6K => q6k,
        GgmlType::IQ2XXS => iq2xxs,
        GgmlType::IQ2XS => iq2xs,
        GgmlType::IQ2S => iq2s,
        GgmlType::IQ3XXS => iq3xxs,
        GgmlType::IQ3S => iq3s,
        GgmlType::IQ1S => iq1s,
        GgmlType::IQ1M => iq1m,
        GgmlType::IQ4NL => iq4nl,
        GgmlType::IQ4XS => iq4xs,
    };
    for (b, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        f(b, y);
    }
}

/// Value `i` (of 32) of a block whose low nibbles hold values 0..16 and high nibbles 16..32.
#[inline(always)]
fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0F
    } else {
        qs[i - 16] >> 4
    }
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, v) in y.iter_mut().enumerate() {
        *v = d * (nibble(&b[2..], i) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (i, v) in y.iter_mut().enumerate() {
        *v = d * nibble(&b[4..], i) as f32 + m;
    }
}

/// Q5_0/Q5_1's fifth bit of value `i`: bit i of the 32-bit word `qh`.
#[inline(always)]
fn q5(qh: u32, qs: &[u8], i: usize) -> u8 {
    nibble(qs, i) | ((((qh >> i) & 1) as u8) << 4)
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let (d, qh) = (f16_at(b, 0), u32_at(b, 2));
    for (i, v) in y.iter_mut().enumerate() {
        *v = d * (q5(qh, &b[6..], i) as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m, qh) = (f16_at(b, 0), f16_at(b, 2), u32_at(b, 4));
    for (i, v) in y.iter_mut().enumerate() {
        *v = d * q5(qh, &b[8..], i) as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..34]) {
        *v = q as i8 as f32 * d;
    }
}

/// Q2_K/Q3_K's 2-bit value `i` (of 256): 32-byte halves of `qs`, each holding four runs of 32
/// values at bit shifts 0, 2, 4, 6.
#[inline(always)]
fn two_bits(qs: &[u8], i: usize) -> u8 {
    let (half, run, l) = (i / 128, (i % 128) / 32, i % 32);
    (qs[32 * half + l] >> (2 * run)) & 3
}

fn q2k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (i, v) in y.iter_mut().enumerate() {
        let sc = scales[i / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        *v = dl * two_bits(qs, i) as f32 - ml;
    }
}

fn q3k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3k_scales(b[96..108].try_into().expect("12 bytes"));
    let d = f16_at(b, 108);
    for (i, v) in y.iter_mut().enumerate() {
        let dl = d * scales[i / 16] as f32;
        // The high bit clear means 4 less.
        let high = (hmask[i % 32] >> (i / 32)) & 1;
        let q = two_bits(qs, i) as i32 - if high == 0 { 4 } else { 0 };
        *v = dl * q as f32;
    }
}

/// Q4_K/Q5_K's 4-bit value `i` (of 256): runs of 32 values, the low nibbles of 32 bytes then
/// their high nibbles.
#[inline(always)]
fn k_nibble(qs: &[u8], i: usize) -> u8 {
    let (pair, high, l) = (i / 64, (i / 32) % 2, i % 32);
    (qs[32 * pair + l] >> (4 * high)) & 0x0F
}

fn q4k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, m) = q4k_scales_and_mins(b[4..16].try_into().expect("12 bytes"));
    for (i, v) in y.iter_mut().enumerate() {
        let g = i / 32;
        *v = d * sc[g] as f32 * k_nibble(&b[16..144], i) as f32 - dmin * m[g] as f32;
    }
}

fn q5k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, m) = q4k_scales_and_mins(b[4..16].try_into().expect("12 bytes"));
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (i, v) in y.iter_mut().enumerate() {
        let g = i / 32;
        let q = k_nibble(qs, i) | (((qh[i % 32] >> g) & 1) << 4);
        *v = d * sc[g] as f32 * q as f32 - dmin * m[g] as f32;
    }
}

/// Q6_K's 6-bit value `i` (of 256), offset by 32: two halves of 128, each four runs of 32 built
/// from nibbles of `ql` and bit pairs of `qh`.
#[inline(always)]
pub fn q6k_value(b: &[u8], i: usize) -> i32 {
    let (half, run, l) = (i / 128, (i % 128) / 32, i % 32);
    let ql = b[64 * half + 32 * (run % 2) + l];
    let low = if run < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (b[128 + 32 * half + l] >> (2 * run)) & 3;
    (low | (high << 4)) as i32 - 32
}

fn q6k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (i, v) in y.iter_mut().enumerate() {
        let sc = b[192 + i / 16] as i8;
        *v = d * sc as f32 * q6k_value(b, i) as f32;
    }
}

fn iq4nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, v) in y.iter_mut().enumerate() {
        *v = d * iq4_value(nibble(&b[2..], i)) as f32;
    }
}

fn iq4xs(b: &[u8], y: &mut [f32]) {
    let (d, scales_h) = (f16_at(b, 0), u16_at(b, 2));
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        let ls = ((scales_l[g / 2] >> (4 * (g % 2))) & 0x0F)
            | ((((scales_h >> (2 * g)) & 3) as u8) << 4);
        let dl = d * (ls as i32 - 32) as f32;
        for (i, v) in run.iter_mut().enumerate() {
            *v = dl * iq4_value(nibble(&qs[16 * g..], i)) as f32;
        }
    }
}

fn iq2xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        let at = 2 + 8 * g;
        let (idx, aux) = (u32_at(b, at), u32_at(b, at + 4));
        let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
        for (k, eight) in run.chunks_exact_mut(8).enumerate() {
            let entry = IQ2XXS_GRID[((idx >> (8 * k)) & 0xFF) as usize];
            let signs = KSIGNS[((aux >> (7 * k)) & 0x7F) as usize];
            for (v, w) in eight.iter_mut().zip(signed_grid_abs(entry, signs)) {
                *v = db * w.0 * w.1;
            }
        }
    }
}

/// The 8 magnitudes of a grid entry and their signs (±1), for formulas that multiply them in
/// that order.
#[inline(always)]
fn signed_grid_abs(entry: u64, signs: u8) -> [(f32, f32); 8] {
    std::array::from_fn(|j| {
        let v = (entry >> (8 * j)) as u8 as i8 as f32;
        (v, if signs & (1 << j) != 0 { -1.0 } else { 1.0 })
    })
}

fn iq2xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales = &b[66..74];
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        for (k, eight) in run.chunks_exact_mut(8).enumerate() {
            let q = u16_at(b, 2 + 2 * (4 * g + k));
            let s = (scales[g] >> (4 * (k / 2))) & 0x0F;
            let db = d * (0.5 + s as f32) * 0.25;
            let entry = IQ2XS_GRID[(q & 511) as usize];
            let signs = KSIGNS[(q >> 9) as usize];
            for (v, w) in eight.iter_mut().zip(signed_grid_abs(entry, signs)) {
                *v = db * w.0 * w.1;
            }
        }
    }
}

fn iq2s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        for (k, eight) in run.chunks_exact_mut(8).enumerate() {
            let s = (scales[g] >> (4 * (k / 2))) & 0x0F;
            let db = d * (0.5 + s as f32) * 0.25;
            let index = qs[4 * g + k] as usize | ((((qh[g] >> (2 * k)) & 3) as usize) << 8);
            let entry = IQ2S_GRID[index];
            for (v, w) in eight
                .iter_mut()
                .zip(signed_grid_abs(entry, signs[4 * g + k]))
            {
                *v = db * w.0 * w.1;
            }
        }
    }
}

/// Two 4-value grid entries as one 8-value entry.
#[inline(always)]
fn pair(a: u32, b: u32) -> u64 {
    a as u64 | (b as u64) << 32
}

fn iq3xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, aux) = (&b[2..66], &b[66..98]);
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        let aux = u32_at(aux, 4 * g);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for (k, eight) in run.chunks_exact_mut(8).enumerate() {
            let entry = pair(
                IQ3XXS_GRID[qs[8 * g + 2 * k] as usize],
                IQ3XXS_GRID[qs[8 * g + 2 * k + 1] as usize],
            );
            let signs = KSIGNS[((aux >> (7 * k)) & 0x7F) as usize];
            for (v, w) in eight.iter_mut().zip(signed_grid_abs(entry, signs)) {
                *v = db * w.0 * w.1;
            }
        }
    }
}

fn iq3s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        let s = (scales[g / 2] >> (4 * (g % 2))) & 0x0F;
        let db = d * (1 + 2 * s as i32) as f32;
        for (k, eight) in run.chunks_exact_mut(8).enumerate() {
            let index = |j: usize| {
                let n = 8 * g + 2 * k + j;
                qs[n] as usize | ((((qh[g] >> (2 * k + j)) & 1) as usize) << 8)
            };
            let entry = pair(IQ3S_GRID[index(0)], IQ3S_GRID[index(1)]);
            for (v, w) in eight
                .iter_mut()
                .zip(signed_grid_abs(entry, signs[4 * g + k]))
            {
                *v = db * w.0 * w.1;
            }
        }
    }
}

/// IQ1_S/IQ1_M's shift of every grid value: +1/8, or -1/8 where the sign bit is set.
const IQ1_DELTA: f32 = 0.125;

fn iq1s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        let qh = u16_at(b, 34 + 2 * g);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1_DELTA
        } else {
            IQ1_DELTA
        };
        for (k, eight) in run.chunks_exact_mut(8).enumerate() {
            let index = qs[4 * g + k] as usize | ((((qh >> (3 * k)) & 7) as usize) << 8);
            let entry = IQ1S_GRID[index];
            for (j, v) in eight.iter_mut().enumerate() {
                let grid = (entry >> (8 * j)) as u8 as i8 as f32;
                *v = dl * (grid + delta);
            }
        }
    }
}

fn iq1m(b: &[u8], y: &mut [f32]) {
    let (qs, qh, sc) = (&b[0..32], &b[32..48], &b[48..56]);
    let word = |i: usize| u16_at(sc, 2 * i);
    // The block's f16 scale is the top nibbles of the four scale words.
    let bits = (word(0) >> 12)
        | ((word(1) >> 8) & 0x00F0)
        | ((word(2) >> 4) & 0x0F00)
        | (word(3) & 0xF000);
    let d = f16::from_bits(bits).to_f32();
    for (g, run) in y.chunks_exact_mut(32).enumerate() {
        for (k, eight) in run.chunks_exact_mut(8).enumerate() {
            // Two 3-bit scales per 16 values; four per scale word.
            let s = (word(g / 2) >> (3 * (2 * (g % 2) + k / 2))) & 7;
            let dl = d * (2 * s + 1) as f32;
            let h = (qh[2 * g + k / 2] >> (4 * (k % 2))) & 0x0F;
            let index = qs[4 * g + k] as usize | (((h & 7) as usize) << 8);
            let delta = if h & 8 != 0 { -IQ1_DELTA } else { IQ1_DELTA };
            let entry = IQ1S_GRID[index];
            for (j, v) in eight.iter_mut().enumerate() {
                let grid = (entry >> (8 * j)) as u8 as i8 as f32;
                *v = dl * (grid + delta);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks and values `scripts/make_quant_fixtures.py` wrote with the `gguf` package.
    fn fixture(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quants");
        let blocks = std::fs::read(dir.join(format!("{}.blocks", ty.name()))).unwrap();
        let values = std::fs::read(dir.join(format!("{}.f32", ty.name())))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (blocks, values)
    }

    #[test]
    fn every_block_type_dequantizes_as_the_gguf_package_does() {
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let (blocks, want) = fixture(ty);
            let mut got = vec![0f32; want.len()];
            dequantize(ty, &blocks, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{}: value {i} (block {}, index {}): {g} where gguf has {w}",
                    ty.name(),
                    i / ty.block_len(),
                    i % ty.block_len()
                );
            }
        }
    }
}
