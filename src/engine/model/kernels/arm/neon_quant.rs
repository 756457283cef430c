//! NEON dot products of one weight row (GGML blocks) with up to 4 rows of int8 activations: the
//! ARM version of `vecdot`, for every block type but the IQ1–IQ3 grids, as `x86::avx2_quant` is
//! for x86. Each block is unpacked once (16 values to a register) and multiplied by every
//! activation row.
//!
//! The integer products are `sdot` (4 int8 products summed into each i32 lane, ARMv8.2's dot
//! product extension, found on every core since the Cortex-A55/A75 and Apple M1) where the CPU
//! has it, else `smull` + `sadalp` (8 products widened to i16, pairs added into i32: baseline
//! NEON). Both treat the weights as signed int8, so unsigned small values, offsets and signed
//! grids all go in as they are; offsets and minimums multiply the activations' 16-value sums,
//! K-quant sub-block scales multiply each 16-value product.

use std::arch::aarch64::*;
use std::arch::asm;

use super::super::acts::ActRow;
use super::super::blocks::{has_simd_row_kernel, q3k_scales, q4k_scales_and_mins, IQ4_VALUES};
use crate::engine::format::ggml::GgmlType;

/// Whether `rows` multiplies `ty`.
pub fn supports(ty: GgmlType) -> bool {
    has_simd_row_kernel(ty)
}

/// `out[r]` = the dot product of weight row `w` (whole blocks of `ty`) with activation row
/// `x[r]`, for `x.len()` ≤ 4 rows, with `sdot`.
///
/// # Safety
/// The CPU has NEON and the dot-product extension; `supports(ty)`; every row of `x` covers `w`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn rows_dotprod(ty: GgmlType, w: &[u8], x: &[ActRow], out: &mut [f32]) {
    dispatch::<true>(ty, w, x, out)
}

/// As [`rows_dotprod`], with baseline NEON only.
///
/// # Safety
/// As [`rows_dotprod`], without the dot-product extension.
#[target_feature(enable = "neon")]
pub unsafe fn rows(ty: GgmlType, w: &[u8], x: &[ActRow], out: &mut [f32]) {
    dispatch::<false>(ty, w, x, out)
}

#[inline(always)]
unsafe fn dispatch<const DOT: bool>(ty: GgmlType, w: &[u8], x: &[ActRow], out: &mut [f32]) {
    macro_rules! by_rows {
        ($f:ident $(, $g:ty)?) => {
            match x.len() {
                1 => $f::<1, DOT $(, $g)?>(w, x, out),
                2 => $f::<2, DOT $(, $g)?>(w, x, out),
                3 => $f::<3, DOT $(, $g)?>(w, x, out),
                _ => $f::<4, DOT $(, $g)?>(w, x, out),
            }
        };
    }
    match ty {
        GgmlType::Q4_0 => by_rows!(blocks32, Q4_0),
        GgmlType::Q4_1 => by_rows!(blocks32, Q4_1),
        GgmlType::Q5_0 => by_rows!(blocks32, Q5_0),
        GgmlType::Q5_1 => by_rows!(blocks32, Q5_1),
        GgmlType::Q8_0 => by_rows!(blocks32, Q8_0),
        GgmlType::IQ4NL => by_rows!(blocks32, Iq4Nl),
        GgmlType::Q2K => by_rows!(q2k),
        GgmlType::Q3K => by_rows!(q3k),
        GgmlType::Q4K => by_rows!(q4k),
        GgmlType::Q5K => by_rows!(q5k),
        GgmlType::Q6K => by_rows!(q6k),
        GgmlType::IQ4XS => by_rows!(iq4xs),
        other => unreachable!("{other:?} has no NEON kernel"),
    }
}

#[inline(always)]
fn f16(p: *const u8) -> f32 {
    // SAFETY: callers point inside a block.
    let b = unsafe { [*p, *p.add(1)] };
    half::f16::from_le_bytes(b).to_f32()
}

/// 16 int8 products summed into 4 i32 lanes, added to `acc`.
#[inline(always)]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        let mut acc = acc;
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack)
        );
        acc
    } else {
        let low = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let high = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, low), high)
    }
}

/// The 32 nibbles of 16 bytes: low nibbles (values 0..16), high nibbles (16..32).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (int8x16_t, int8x16_t) {
    let b = vld1q_u8(p);
    (
        vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))),
        vreinterpretq_s8_u8(vshrq_n_u8(b, 4)),
    )
}

/// 0x10 in byte i of the pair where bit i of `bits` is set (Q5's fifth bits).
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> (int8x16_t, int8x16_t) {
    let spread = |half: u32| {
        let bytes: [u8; 16] = std::array::from_fn(|i| if (half >> i) & 1 != 0 { 0x10 } else { 0 });
        vreinterpretq_s8_u8(vld1q_u8(bytes.as_ptr()))
    };
    (spread(bits & 0xFFFF), spread(bits >> 16))
}

#[inline(always)]
unsafe fn acts16(x: &ActRow, at: usize) -> int8x16_t {
    vld1q_s8(x.qs.as_ptr().add(at))
}

/// A block type of 32 values: its values in two registers, its scale, and what multiplies the
/// activations' sum.
trait Block32 {
    const BYTES: usize;
    const OFFSET: bool;
    unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t, f32, f32);
}

struct Q4_0;
impl Block32 for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
        let d = f16(p);
        let (lo, hi) = nibbles(p.add(2));
        (lo, hi, d, -8.0 * d)
    }
}

struct Q4_1;
impl Block32 for Q4_1 {
    const BYTES: usize = 20;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
        let (lo, hi) = nibbles(p.add(4));
        (lo, hi, f16(p), f16(p.add(2)))
    }
}

struct Q5_0;
impl Block32 for Q5_0 {
    const BYTES: usize = 22;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
        let d = f16(p);
        let (lo, hi) = nibbles(p.add(6));
        let (blo, bhi) = fifth_bits(std::ptr::read_unaligned(p.add(2) as *const u32));
        (vorrq_s8(lo, blo), vorrq_s8(hi, bhi), d, -16.0 * d)
    }
}

struct Q5_1;
impl Block32 for Q5_1 {
    const BYTES: usize = 24;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
        let (lo, hi) = nibbles(p.add(8));
        let (blo, bhi) = fifth_bits(std::ptr::read_unaligned(p.add(4) as *const u32));
        (vorrq_s8(lo, blo), vorrq_s8(hi, bhi), f16(p), f16(p.add(2)))
    }
}

struct Q8_0;
impl Block32 for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
        let q = p.add(2) as *const i8;
        (vld1q_s8(q), vld1q_s8(q.add(16)), f16(p), 0.0)
    }
}

#[inline(always)]
unsafe fn iq4(index: int8x16_t) -> int8x16_t {
    vqtbl1q_s8(vld1q_s8(IQ4_VALUES.as_ptr()), vreinterpretq_u8_s8(index))
}

struct Iq4Nl;
impl Block32 for Iq4Nl {
    const BYTES: usize = 18;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
        let (lo, hi) = nibbles(p.add(2));
        (iq4(lo), iq4(hi), f16(p), 0.0)
    }
}

#[inline(always)]
unsafe fn blocks32<const R: usize, const DOT: bool, B: Block32>(
    w: &[u8],
    x: &[ActRow],
    out: &mut [f32],
) {
    let blocks = w.len() / B::BYTES;
    // Two named sets of accumulators, for even and odd blocks: one block's multiply-add does not
    // wait for the previous one's, and (unlike one array indexed by parity) they stay in
    // registers.
    let mut acc = ([vdupq_n_f32(0.0); R], [vdupq_n_f32(0.0); R]);
    let mut offsets = ([0f32; R], [0f32; R]);
    let wp = w.as_ptr();
    let mut b = 0;
    while b + 2 <= blocks {
        block32::<R, DOT, B>(wp, b, x, &mut acc.0, &mut offsets.0);
        block32::<R, DOT, B>(wp, b + 1, x, &mut acc.1, &mut offsets.1);
        b += 2;
    }
    if b < blocks {
        block32::<R, DOT, B>(wp, b, x, &mut acc.0, &mut offsets.0);
    }
    for (r, o) in out.iter_mut().enumerate().take(R) {
        *o = vaddvq_f32(vaddq_f32(acc.0[r], acc.1[r])) + offsets.0[r] + offsets.1[r];
    }
}

/// Block `b` of a 32-value block type against every activation row, into one set of
/// accumulators.
#[inline(always)]
unsafe fn block32<const R: usize, const DOT: bool, B: Block32>(
    wp: *const u8,
    b: usize,
    x: &[ActRow],
    acc: &mut [float32x4_t; R],
    offsets: &mut [f32; R],
) {
    let (lo, hi, d, c) = B::unpack(wp.add(b * B::BYTES));
    for r in 0..R {
        let xr = &x[r];
        let dot = dot16::<DOT>(vdupq_n_s32(0), lo, acts16(xr, 32 * b));
        let dot = dot16::<DOT>(dot, hi, acts16(xr, 32 * b + 16));
        let dx = *xr.scales.get_unchecked(b);
        acc[r] = vmlaq_n_f32(acc[r], vcvtq_f32_s32(dot), d * dx);
        if B::OFFSET {
            offsets[r] += c * *xr.scaled_sums.get_unchecked(b);
        }
    }
}

/// Σ scale_s · sum_s over a block's sixteen 16-value sums (K-quants' minimums and offsets).
#[inline(always)]
unsafe fn scaled_sums(scales: &[i16; 16], x: &ActRow, b: usize) -> i32 {
    let s = x.sums.as_ptr().add(16 * b);
    let (s0, s1) = (vld1q_s16(s), vld1q_s16(s.add(8)));
    let (c0, c1) = (
        vld1q_s16(scales.as_ptr()),
        vld1q_s16(scales.as_ptr().add(8)),
    );
    let p = vmull_s16(vget_low_s16(s0), vget_low_s16(c0));
    let p = vmlal_high_s16(p, s0, c0);
    let p = vmlal_s16(p, vget_low_s16(s1), vget_low_s16(c1));
    let p = vmlal_high_s16(p, s1, c1);
    vaddvq_s32(p)
}

/// Bits `shift..shift + 2` of every byte, as values 0..4.
#[inline(always)]
unsafe fn two_bits(v: uint8x16_t, shift: i32) -> int8x16_t {
    let shifted = vshlq_u8(v, vdupq_n_s8(-shift as i8));
    vreinterpretq_s8_u8(vandq_u8(shifted, vdupq_n_u8(3)))
}

/// Bit `bit` of every byte, moved to `to`.
#[inline(always)]
unsafe fn bit_to(v: uint8x16_t, bit: i32, to: i32) -> int8x16_t {
    let b = vandq_u8(vshlq_u8(v, vdupq_n_s8(-bit as i8)), vdupq_n_u8(1));
    vreinterpretq_s8_u8(vshlq_u8(b, vdupq_n_s8(to as i8)))
}

#[inline(always)]
unsafe fn q2k<const R: usize, const DOT: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 84;
    let mut acc = [0f32; R];
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 84);
        let scales = std::slice::from_raw_parts(p, 16);
        let (d, dmin) = (f16(p.add(80)), f16(p.add(82)));
        let mins: [i16; 16] = std::array::from_fn(|s| (scales[s] >> 4) as i16);
        let mut isum = [vdupq_n_s32(0); R];
        for h in 0..2 {
            for half16 in 0..2 {
                let q = vld1q_u8(p.add(16 + 32 * h + 16 * half16));
                for t in 0..4 {
                    let s = 8 * h + 2 * t + half16;
                    let sc = (scales[s] & 0x0F) as i32;
                    let q2 = two_bits(q, 2 * t as i32);
                    for r in 0..R {
                        let xq = acts16(&x[r], 256 * b + 128 * h + 32 * t + 16 * half16);
                        let dot = dot16::<DOT>(vdupq_n_s32(0), q2, xq);
                        isum[r] = vmlaq_n_s32(isum[r], dot, sc);
                    }
                }
            }
        }
        for r in 0..R {
            let dx = *x[r].scales.get_unchecked(b);
            let msum = scaled_sums(&mins, &x[r], b);
            acc[r] += dx * (d * vaddvq_s32(isum[r]) as f32 - dmin * msum as f32);
        }
    }
    out[..R].copy_from_slice(&acc);
}

#[inline(always)]
unsafe fn q3k<const R: usize, const DOT: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 110;
    let mut acc = [0f32; R];
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 110);
        let d = f16(p.add(108));
        let sc = q3k_scales(&*(p.add(96) as *const [u8; 12]));
        let sc16: [i16; 16] = std::array::from_fn(|s| sc[s] as i16);
        let mut isum = [vdupq_n_s32(0); R];
        for h in 0..2 {
            for half16 in 0..2 {
                let q = vld1q_u8(p.add(32 + 32 * h + 16 * half16));
                let hmask = vld1q_u8(p.add(16 * half16));
                for t in 0..4 {
                    let s = 8 * h + 2 * t + half16;
                    let q3 = vorrq_s8(
                        two_bits(q, 2 * t as i32),
                        bit_to(hmask, (4 * h + t) as i32, 2),
                    );
                    for r in 0..R {
                        let xq = acts16(&x[r], 256 * b + 128 * h + 32 * t + 16 * half16);
                        let dot = dot16::<DOT>(vdupq_n_s32(0), q3, xq);
                        isum[r] = vmlaq_n_s32(isum[r], dot, sc[s] as i32);
                    }
                }
            }
        }
        for r in 0..R {
            // Stored 4 high: 4 · Σ scale · (sum of 16 activations) comes off.
            let offset = 4 * scaled_sums(&sc16, &x[r], b);
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] += d * dx * (vaddvq_s32(isum[r]) - offset) as f32;
        }
    }
    out[..R].copy_from_slice(&acc);
}

#[inline(always)]
unsafe fn k4k5<const R: usize, const DOT: bool, const FIVE: bool>(
    w: &[u8],
    x: &[ActRow],
    out: &mut [f32],
) {
    let size = if FIVE { 176 } else { 144 };
    let blocks = w.len() / size;
    let mut acc = [0f32; R];
    for b in 0..blocks {
        let p = w.as_ptr().add(b * size);
        let (d, dmin) = (f16(p), f16(p.add(2)));
        let (sc, mn) = q4k_scales_and_mins(&*(p.add(4) as *const [u8; 12]));
        let mins: [i16; 16] = std::array::from_fn(|s| mn[s / 2] as i16);
        let qs = p.add(if FIVE { 48 } else { 16 });
        let mut isum = [vdupq_n_s32(0); R];
        for j in 0..4 {
            for half16 in 0..2 {
                let q = vld1q_u8(qs.add(32 * j + 16 * half16));
                let mut lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F)));
                let mut hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
                if FIVE {
                    let qh = vld1q_u8(p.add(16 + 16 * half16));
                    lo = vorrq_s8(lo, bit_to(qh, 2 * j as i32, 4));
                    hi = vorrq_s8(hi, bit_to(qh, 2 * j as i32 + 1, 4));
                }
                for r in 0..R {
                    let at = 256 * b + 64 * j + 16 * half16;
                    let dlo = dot16::<DOT>(vdupq_n_s32(0), lo, acts16(&x[r], at));
                    let dhi = dot16::<DOT>(vdupq_n_s32(0), hi, acts16(&x[r], at + 32));
                    isum[r] = vmlaq_n_s32(isum[r], dlo, sc[2 * j] as i32);
                    isum[r] = vmlaq_n_s32(isum[r], dhi, sc[2 * j + 1] as i32);
                }
            }
        }
        for r in 0..R {
            let dx = *x[r].scales.get_unchecked(b);
            let msum = scaled_sums(&mins, &x[r], b);
            acc[r] += dx * (d * vaddvq_s32(isum[r]) as f32 - dmin * msum as f32);
        }
    }
    out[..R].copy_from_slice(&acc);
}

#[inline(always)]
unsafe fn q4k<const R: usize, const DOT: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    k4k5::<R, DOT, false>(w, x, out)
}

#[inline(always)]
unsafe fn q5k<const R: usize, const DOT: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    k4k5::<R, DOT, true>(w, x, out)
}

#[inline(always)]
unsafe fn q6k<const R: usize, const DOT: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 210;
    let mut acc = [0f32; R];
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 210);
        let d = f16(p.add(208));
        let sc = std::slice::from_raw_parts(p.add(192) as *const i8, 16);
        let sc16: [i16; 16] = std::array::from_fn(|s| sc[s] as i16);
        let mut isum = [vdupq_n_s32(0); R];
        for h in 0..2 {
            for half16 in 0..2 {
                let ql0 = vld1q_u8(p.add(64 * h + 16 * half16));
                let ql1 = vld1q_u8(p.add(64 * h + 32 + 16 * half16));
                let qh = vld1q_u8(p.add(128 + 32 * h + 16 * half16));
                let high = |shift: i32| {
                    let bits = vandq_u8(vshlq_u8(qh, vdupq_n_s8(-shift as i8)), vdupq_n_u8(3));
                    vshlq_n_u8(bits, 4)
                };
                let m4 = vdupq_n_u8(0x0F);
                let runs = [
                    vorrq_u8(vandq_u8(ql0, m4), high(0)),
                    vorrq_u8(vandq_u8(ql1, m4), high(2)),
                    vorrq_u8(vshrq_n_u8(ql0, 4), high(4)),
                    vorrq_u8(vshrq_n_u8(ql1, 4), high(6)),
                ];
                for (t, q) in runs.into_iter().enumerate() {
                    let s = 8 * h + 2 * t + half16;
                    for r in 0..R {
                        let xq = acts16(&x[r], 256 * b + 128 * h + 32 * t + 16 * half16);
                        let dot = dot16::<DOT>(vdupq_n_s32(0), vreinterpretq_s8_u8(q), xq);
                        isum[r] = vmlaq_n_s32(isum[r], dot, sc[s] as i32);
                    }
                }
            }
        }
        for r in 0..R {
            // Stored 32 high: 32 · Σ scale · (sum of 16 activations) comes off.
            let offset = 32 * scaled_sums(&sc16, &x[r], b);
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] += d * dx * (vaddvq_s32(isum[r]) - offset) as f32;
        }
    }
    out[..R].copy_from_slice(&acc);
}

#[inline(always)]
unsafe fn iq4xs<const R: usize, const DOT: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 136;
    let mut acc = [0f32; R];
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 136);
        let d = f16(p);
        let scales_h = u16::from_le_bytes([*p.add(2), *p.add(3)]);
        let mut isum = [vdupq_n_s32(0); R];
        for g in 0..8 {
            let low = (*p.add(4 + g / 2) >> (4 * (g % 2))) & 0x0F;
            let ls = (low as u16 | ((scales_h >> (2 * g)) & 3) << 4) as i32 - 32;
            let (lo, hi) = nibbles(p.add(8 + 16 * g));
            let (lo, hi) = (iq4(lo), iq4(hi));
            for r in 0..R {
                let dot = dot16::<DOT>(vdupq_n_s32(0), lo, acts16(&x[r], 256 * b + 32 * g));
                let dot = dot16::<DOT>(dot, hi, acts16(&x[r], 256 * b + 32 * g + 16));
                isum[r] = vmlaq_n_s32(isum[r], dot, ls);
            }
        }
        for r in 0..R {
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] += d * dx * vaddvq_s32(isum[r]) as f32;
        }
    }
    out[..R].copy_from_slice(&acc);
}
