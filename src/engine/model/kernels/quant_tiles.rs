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

use super::block_acts::{group_acts, BlockType, LANES, TILE_ROWS as ROWS};
use super::blocks::q4k_scales_and_mins;
use super::SharedOut;

/// Activation rows from which `quant::matmul` comes here.
pub(super) const MIN_ROWS: usize = 16;

/// Values per sub-block with its own scale: Q6_K scales 16 values, Q4_K and Q8_0 32.
fn sub_len(kind: BlockType) -> usize {
    match kind {
        BlockType::Q6K => 16,
        BlockType::Q4K | BlockType::Q8_0 => 32,
    }
}

/// One weight row unpacked: every value as an unsigned byte `q`, and per sub-block `scale` and
/// `off` such that the weight is `scale * q - off`.
///
/// # Safety
/// AVX-512 F/BW/VL are available (compiled for them so the byte loops vectorise).
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")
)]
unsafe fn unpack_row(
    kind: BlockType,
    row: &[u8],
    q: &mut [u8],
    scale: &mut [f32],
    off: &mut [f32],
) {
    let half = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        BlockType::Q8_0 => {
            for (b, block) in row.chunks(34).enumerate() {
                let d = half(block);
                scale[b] = d;
                // Stored signed; +128 makes it the unsigned operand VNNI wants.
                off[b] = 128.0 * d;
                for (o, &v) in q[32 * b..32 * (b + 1)].iter_mut().zip(&block[2..34]) {
                    *o = v ^ 0x80;
                }
            }
        }
        BlockType::Q4K => {
            for (b, block) in row.chunks_exact(144).enumerate() {
                let (d, dmin) = (half(block), half(&block[2..]));
                let (sc, mn) = q4k_scales_and_mins(block[4..16].try_into().expect("12 bytes"));
                for j in 0..8 {
                    scale[8 * b + j] = d * sc[j] as f32;
                    off[8 * b + j] = dmin * mn[j] as f32;
                }
                // Fixed-size views, so the compiler drops the bounds checks and vectorises.
                let qs: &[u8; 128] = block[16..].try_into().expect("128 bytes");
                let out: &mut [u8; 256] = (&mut q[256 * b..256 * (b + 1)]).try_into().expect("256");
                for c in 0..4 {
                    for i in 0..32 {
                        out[64 * c + i] = qs[32 * c + i] & 0x0F;
                        out[64 * c + 32 + i] = qs[32 * c + i] >> 4;
                    }
                }
            }
        }
        BlockType::Q6K => {
            for (b, block) in row.chunks(210).enumerate() {
                let d = half(&block[208..]);
                for s in 0..16 {
                    scale[16 * b + s] = d * block[192 + s] as i8 as f32;
                    // Stored as value + 32.
                    off[16 * b + s] = 32.0 * scale[16 * b + s];
                }
                let out = &mut q[256 * b..256 * (b + 1)];
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
    }
}

/// `x` (m × k) times the transpose of `w` (n rows of `kind` blocks): m × n, row-major.
/// `quant::matmul` calls it for 16 rows and more, where the CPU has AVX-512 VNNI.
pub(super) fn matmul(
    kind: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    let sub = sub_len(kind);
    let block = match kind {
        BlockType::Q8_0 => 32,
        BlockType::Q4K | BlockType::Q6K => 256,
    };
    // SAFETY: `quant::matmul` checked AVX-512 F/BW/VL before calling.
    let acts = unsafe { group_acts(x, m, k, block, sub) };
    let row_bytes = k / kind.block_len() * kind.block_bytes();
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
                    unsafe { unpack_row(kind, &w[j * row_bytes..(j + 1) * row_bytes], qr, sr, or) };
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
