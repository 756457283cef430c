//! Prefill (16 or more activation rows) with quantized weights on AVX-512 VNNI, from the
//! blocks as stored: no second copy of the model.
//!
//! Decoding a token reads each weight once and is bound by memory (`quant_rows`' row dot
//! products). A prompt multiplies every weight by many rows, so the arithmetic counts: here one
//! VNNI instruction multiplies 4 weight values of one row by the same 4 values of 16 activation
//! rows at once (the activations are interleaved in groups of 16 rows when they are quantized,
//! and the 4 weight bytes are broadcast). Each task first unpacks its 8 weight rows into plain
//! bytes with their sub-block scales (cheap, and reused by every group of 16 rows), so the inner
//! loop is one broadcast and one multiply-add per 64 products.
//!
//! candle gets its speed here from a repacked copy of every quantized matrix kept beside the
//! original (twice the memory); unpacking a few rows per task into a buffer that stays in L1
//! gives the same inner loop without it. The instructions are in `x86::avx512_quant_tiles`.

use rayon::prelude::*;

use super::block_acts::{group_acts, LANES, TILE_ROWS as ROWS};
use super::blocks::{q3k_scales, q4k_scales_and_mins, IQ4_VALUES};
use super::SharedOut;
use crate::engine::format::ggml::GgmlType;

/// Activation rows from which `quant::matmul` comes here.
pub(super) const MIN_ROWS: usize = 16;

/// The block types the tiles multiply: every one whose values are small integers times one
/// scale per run of 16 or 32 values, minus one offset per run (the IQ1–IQ3 grids are not).
pub(super) fn supports(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4NL | IQ4XS | Q2K | Q3K | Q4K | Q5K | Q6K
    )
}

/// Values per weight scale (and offset) once unpacked.
fn sub_len(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q6K => 16,
        _ => 32,
    }
}

/// Values per activation scale: 256 for the K-quants (as llama.cpp's Q8_K), 32 otherwise.
fn act_block(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        _ => 32,
    }
}

/// Bits 0..32 of a 32-bit word, as bytes 0 or 1 (Q5_0/Q5_1's fifth bits).
#[inline(always)]
fn bits32(qh: u32) -> [u8; 32] {
    std::array::from_fn(|i| ((qh >> i) & 1) as u8)
}

/// One weight row unpacked: byte `u` per value, and per run of `sub_len` values a scale and an
/// offset with weight = scale · u − offset (the tile kernel multiplies unsigned bytes by signed
/// activations). Exact: every type's values are small integers, shifted to be non-negative.
/// Written as plain loops over whole blocks, which the compiler vectorises for AVX-512.
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")
)]
unsafe fn unpack_row(ty: GgmlType, row: &[u8], q: &mut [u8], scale: &mut [f32], off: &mut [f32]) {
    let half = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let bytes = ty.block_bytes();
    let values = ty.block_len();
    let blocks = row.chunks_exact(bytes).zip(q.chunks_exact_mut(values));
    // Nibbles of a 32-value block: low nibbles are values 0..16, high nibbles 16..32.
    let nibbles = |qs: &[u8], out: &mut [u8]| {
        for i in 0..16 {
            out[i] = qs[i] & 0x0F;
            out[i + 16] = qs[i] >> 4;
        }
    };
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::IQ4NL => {
            for (b, (block, out)) in blocks.enumerate() {
                let d = half(block);
                scale[b] = d;
                let start = if ty == GgmlType::Q4_1 { 4 } else { 2 };
                nibbles(&block[start..start + 16], out);
                off[b] = match ty {
                    GgmlType::Q4_0 => 8.0 * d,
                    GgmlType::Q4_1 => -half(&block[2..]),
                    _ => {
                        for v in out.iter_mut() {
                            *v = (IQ4_VALUES[*v as usize] as i16 + 128) as u8;
                        }
                        128.0 * d
                    }
                };
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let one = ty == GgmlType::Q5_1;
            for (b, (block, out)) in blocks.enumerate() {
                let d = half(block);
                let at = if one { 4 } else { 2 };
                let qh = u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
                nibbles(&block[at + 4..at + 20], out);
                for (v, bit) in out.iter_mut().zip(bits32(qh)) {
                    *v |= bit << 4;
                }
                scale[b] = d;
                off[b] = if one { -half(&block[2..]) } else { 16.0 * d };
            }
        }
        GgmlType::Q8_0 => {
            for (b, (block, out)) in blocks.enumerate() {
                let d = half(block);
                scale[b] = d;
                off[b] = 128.0 * d;
                for (o, &v) in out.iter_mut().zip(&block[2..34]) {
                    *o = v ^ 0x80;
                }
            }
        }
        GgmlType::IQ4XS => {
            for (b, (block, out)) in blocks.enumerate() {
                let d = half(block);
                let scales_h = u16::from_le_bytes([block[2], block[3]]);
                for g in 0..8 {
                    let ls = ((block[4 + g / 2] >> (4 * (g % 2))) & 0x0F)
                        | ((((scales_h >> (2 * g)) & 3) as u8) << 4);
                    let dl = d * (ls as i32 - 32) as f32;
                    scale[8 * b + g] = dl;
                    off[8 * b + g] = 128.0 * dl;
                    let run = &mut out[32 * g..32 * (g + 1)];
                    nibbles(&block[8 + 16 * g..24 + 16 * g], run);
                    for v in run.iter_mut() {
                        *v = (IQ4_VALUES[*v as usize] as i16 + 128) as u8;
                    }
                }
            }
        }
        GgmlType::Q2K => {
            for (b, (block, out)) in blocks.enumerate() {
                let (d, dmin) = (half(&block[80..]), half(&block[82..]));
                for s in 0..16 {
                    scale[16 * b + s] = d * (block[s] & 0x0F) as f32;
                    off[16 * b + s] = dmin * (block[s] >> 4) as f32;
                }
                // Two halves of 128 values, each four runs of 32 at bit shifts 0, 2, 4, 6.
                for h in 0..2 {
                    let qs = &block[16 + 32 * h..48 + 32 * h];
                    for run in 0..4 {
                        for l in 0..32 {
                            out[128 * h + 32 * run + l] = (qs[l] >> (2 * run)) & 3;
                        }
                    }
                }
            }
        }
        GgmlType::Q3K => {
            for (b, (block, out)) in blocks.enumerate() {
                let d = half(&block[108..]);
                let sc = q3k_scales(block[96..108].try_into().expect("12 bytes"));
                for s in 0..16 {
                    scale[16 * b + s] = d * sc[s] as f32;
                    off[16 * b + s] = 4.0 * d * sc[s] as f32;
                }
                // Value = 2 bits − 4, plus 4 where its bit of hmask is set: u = 2 bits + 4·bit.
                let hmask = &block[0..32];
                for h in 0..2 {
                    let qs = &block[32 + 32 * h..64 + 32 * h];
                    for run in 0..4 {
                        let i = 4 * h + run;
                        for l in 0..32 {
                            let high = (hmask[l] >> i) & 1;
                            out[32 * i + l] = ((qs[l] >> (2 * run)) & 3) + 4 * high;
                        }
                    }
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let five = ty == GgmlType::Q5K;
            for (b, (block, out)) in blocks.enumerate() {
                let (d, dmin) = (half(block), half(&block[2..]));
                let (sc, mn) = q4k_scales_and_mins(block[4..16].try_into().expect("12 bytes"));
                for g in 0..8 {
                    scale[8 * b + g] = d * sc[g] as f32;
                    off[8 * b + g] = dmin * mn[g] as f32;
                }
                // Runs of 32 values: the low nibbles of 32 bytes, then their high nibbles (and
                // for Q5_K bit g of qh's byte l as the fifth bit of value l of run g).
                let qs = if five {
                    &block[48..176]
                } else {
                    &block[16..144]
                };
                for c in 0..4 {
                    for l in 0..32 {
                        out[64 * c + l] = qs[32 * c + l] & 0x0F;
                        out[64 * c + 32 + l] = qs[32 * c + l] >> 4;
                    }
                }
                if five {
                    let qh = &block[16..48];
                    for g in 0..8 {
                        for l in 0..32 {
                            out[32 * g + l] |= ((qh[l] >> g) & 1) << 4;
                        }
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (b, (block, out)) in blocks.enumerate() {
                let d = half(&block[208..]);
                for s in 0..16 {
                    scale[16 * b + s] = d * block[192 + s] as i8 as f32;
                    off[16 * b + s] = 32.0 * scale[16 * b + s];
                }
                for h in 0..2 {
                    let (ql, qh) = (
                        &block[64 * h..64 * h + 64],
                        &block[128 + 32 * h..160 + 32 * h],
                    );
                    for l in 0..32 {
                        let o = 128 * h + l;
                        out[o] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                        out[o + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                        out[o + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        out[o + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
            }
        }
        other => unreachable!("{other:?} has no tile unpacking (see `supports`)"),
    }
}

/// `x` (m × k) times the transpose of `w` (n rows of `ty` blocks): m × n, row-major.
/// `quant::matmul` calls it for 16 rows and more, where the CPU has AVX-512 VNNI.
pub(super) fn matmul(ty: GgmlType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    assert!(supports(ty), "{ty:?} has no tiles");
    let sub = sub_len(ty);
    // SAFETY: the caller checked for AVX-512 (this path is listed only there).
    let acts = unsafe { group_acts(x, m, k, act_block(ty), sub) };
    let row_bytes = ty.row_bytes(k).expect("rows of whole blocks");
    let groups = m.div_ceil(LANES);
    let mut y = vec![0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(ROWS)).into_par_iter().for_each(|t| {
        SCRATCH.with_borrow_mut(|(q, scale, off)| {
            q.resize(ROWS * k, 0);
            scale.resize(ROWS * k / sub, 0.0);
            off.resize(ROWS * k / sub, 0.0);
            let out = &out;
            let first = t * ROWS;
            let rows = ROWS.min(n - first);
            for r in 0..ROWS {
                let (qr, sr, or) = (
                    &mut q[r * k..(r + 1) * k],
                    &mut scale[r * k / sub..(r + 1) * k / sub],
                    &mut off[r * k / sub..(r + 1) * k / sub],
                );
                if r < rows {
                    let j = first + r;
                    // SAFETY: as for `group_acts`.
                    unsafe { unpack_row(ty, &w[j * row_bytes..(j + 1) * row_bytes], qr, sr, or) };
                } else {
                    // Rows past the end multiply as zeros.
                    sr.fill(0.0);
                    or.fill(0.0);
                }
            }
            for g in 0..groups {
                let mut tile = [[0f32; LANES]; ROWS];
                // SAFETY: `quant::matmul` checked AVX-512 F/BW/VL/VNNI; `q`, `scale`, `off`
                // hold ROWS rows of k values and k / sub sub-blocks; group g exists in `acts`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    match sub {
                        16 => super::x86::avx512_quant_tiles::tile::<16>(
                            q, scale, off, &acts, g, &mut tile,
                        ),
                        _ => super::x86::avx512_quant_tiles::tile::<32>(
                            q, scale, off, &acts, g, &mut tile,
                        ),
                    }
                };
                for (r, lanes) in tile.iter().enumerate().take(rows) {
                    for (lane, v) in lanes.iter().enumerate() {
                        let i = g * LANES + lane;
                        if i < m {
                            // SAFETY: column first + r belongs to this task alone; (i, first + r)
                            // is inside the m × n output.
                            unsafe { *out.0.add(i * n + first + r) = *v };
                        }
                    }
                }
            }
        })
    });
    y
}

thread_local! {
    /// Each thread's unpacked weight rows (bytes, scales, offsets), kept between calls.
    #[allow(clippy::type_complexity)]
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}
