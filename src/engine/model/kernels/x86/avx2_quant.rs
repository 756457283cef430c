//! AVX2 dot products of one weight row (GGML blocks) with up to 4 rows of int8 activations: the
//! x86 version of `vecdot`, for every block type but the IQ1–IQ3 grids. Each block is unpacked
//! once into registers and multiplied by every activation row.
//!
//! Integer products use `vpmaddubsw` (unsigned weights × signed activations, pairs summed to i16)
//! then `vpmaddwd` (pairs to i32, times a sub-block scale for the K-quants). Weights that are
//! unsigned small integers go in directly, their offsets and minimums applied through the
//! activations' 16-value sums; signed weights (Q8_0, the IQ4 grid) take the usual sign trick
//! (|w| times x with w's sign). With `VNNI` (AVX-512 VNNI on 256-bit registers) the two steps of
//! the 32-value types are one `vpdpbusd`.

use std::arch::x86_64::*;

use super::super::acts::ActRow;
use super::super::blocks::{has_simd_row_kernel, q3k_scales, q4k_scales_and_mins, IQ4_VALUES};
use super::avx2::hsum;
use crate::engine::format::ggml::GgmlType;

/// Whether `rows` multiplies `ty`.
pub fn supports(ty: GgmlType) -> bool {
    has_simd_row_kernel(ty)
}

/// `out[r]` = the dot product of weight row `w` (whole blocks of `ty`) with activation row
/// `x[r]`, for `x.len()` ≤ 4 rows.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `supports(ty)`; every row of `x` covers `w`'s values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows(ty: GgmlType, w: &[u8], x: &[ActRow], out: &mut [f32]) {
    dispatch::<false>(ty, w, x, out)
}

/// As [`rows`], with AVX-512 VNNI's `vpdpbusd` on 256-bit registers.
///
/// # Safety
/// As [`rows`], and the CPU has AVX-512 VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn rows_vnni(ty: GgmlType, w: &[u8], x: &[ActRow], out: &mut [f32]) {
    dispatch::<true>(ty, w, x, out)
}

#[inline(always)]
unsafe fn dispatch<const VNNI: bool>(ty: GgmlType, w: &[u8], x: &[ActRow], out: &mut [f32]) {
    macro_rules! by_rows {
        ($f:ident $(, $g:ty)?) => {
            match x.len() {
                1 => $f::<1, VNNI $(, $g)?>(w, x, out),
                2 => $f::<2, VNNI $(, $g)?>(w, x, out),
                3 => $f::<3, VNNI $(, $g)?>(w, x, out),
                _ => $f::<4, VNNI $(, $g)?>(w, x, out),
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
        other => unreachable!("{other:?} has no AVX2 kernel"),
    }
}

#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)))
}

/// The 32 nibbles of 16 bytes: the low nibbles (values 0..16) then the high ones (16..32).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let b = _mm_loadu_si128(p as *const __m128i);
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(b, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    _mm256_set_m128i(hi, lo)
}

/// 0x10 in byte i where bit i of `bits` is set (Q5's fifth bits).
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let set = _mm256_cmpeq_epi8(
        _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
        _mm256_set1_epi64x(-1),
    );
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Σ u·s over 32 unsigned bytes `u` (each < 128) and signed bytes `s`, as 8 i32 lanes.
#[inline(always)]
unsafe fn udot<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

/// Σ a·s over 32 signed bytes of each, as 8 i32 lanes (|a| times s with a's sign).
#[inline(always)]
unsafe fn sdot<const VNNI: bool>(a: __m256i, s: __m256i) -> __m256i {
    udot::<VNNI>(_mm256_sign_epi8(a, a), _mm256_sign_epi8(s, a))
}

/// Pair sums of u·s as 16 i16 lanes (u unsigned < 64, s signed: no saturation), to be scaled.
#[inline(always)]
unsafe fn pairs(u: __m256i, s: __m256i) -> __m256i {
    _mm256_maddubs_epi16(u, s)
}

/// A block type of 32 values: its values in a register, its scale, and what multiplies the
/// activations' sum (an offset or a minimum).
trait Block32 {
    const BYTES: usize;
    /// The values are signed (else unsigned and < 128).
    const SIGNED: bool;
    /// (values, scale d, coefficient of dx · Σx).
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32);
}

struct Q4_0;
impl Block32 for Q4_0 {
    const BYTES: usize = 18;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let d = f16(p);
        (nibbles(p.add(2)), d, -8.0 * d)
    }
}

struct Q4_1;
impl Block32 for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        (nibbles(p.add(4)), f16(p), f16(p.add(2)))
    }
}

struct Q5_0;
impl Block32 for Q5_0 {
    const BYTES: usize = 22;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let d = f16(p);
        let qh = std::ptr::read_unaligned(p.add(2) as *const u32);
        (
            _mm256_or_si256(nibbles(p.add(6)), fifth_bits(qh)),
            d,
            -16.0 * d,
        )
    }
}

struct Q5_1;
impl Block32 for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let qh = std::ptr::read_unaligned(p.add(4) as *const u32);
        (
            _mm256_or_si256(nibbles(p.add(8)), fifth_bits(qh)),
            f16(p),
            f16(p.add(2)),
        )
    }
}

struct Q8_0;
impl Block32 for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        (_mm256_loadu_si256(p.add(2) as *const __m256i), f16(p), 0.0)
    }
}

/// The IQ4 grid in both halves of a register, for `vpshufb`.
#[inline(always)]
unsafe fn iq4_grid() -> __m256i {
    let lut = _mm_loadu_si128(IQ4_VALUES.as_ptr() as *const __m128i);
    _mm256_set_m128i(lut, lut)
}

struct Iq4Nl;
impl Block32 for Iq4Nl {
    const BYTES: usize = 18;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        (
            _mm256_shuffle_epi8(iq4_grid(), nibbles(p.add(2))),
            f16(p),
            0.0,
        )
    }
}

#[inline(always)]
unsafe fn blocks32<const R: usize, const VNNI: bool, B: Block32>(
    w: &[u8],
    x: &[ActRow],
    out: &mut [f32],
) {
    let blocks = w.len() / B::BYTES;
    // Two sets of accumulators, for even and odd blocks: one block's multiply-add does not wait
    // for the previous one's (the latency, not the arithmetic, bounds a lone chain). Two named
    // sets, not one array indexed by the block's parity: that index kept them on the stack (a
    // store and a load per block: 41% of Q4_0 decoding's samples).
    let mut acc = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
    let mut offsets = ([0f32; R], [0f32; R]);
    let wp = w.as_ptr();
    let mut b = 0;
    while b + 2 <= blocks {
        block32::<R, VNNI, B>(wp, b, x, &mut acc.0, &mut offsets.0);
        block32::<R, VNNI, B>(wp, b + 1, x, &mut acc.1, &mut offsets.1);
        b += 2;
    }
    if b < blocks {
        block32::<R, VNNI, B>(wp, b, x, &mut acc.0, &mut offsets.0);
    }
    for (r, o) in out.iter_mut().enumerate().take(R) {
        *o = hsum(_mm256_add_ps(acc.0[r], acc.1[r])) + offsets.0[r] + offsets.1[r];
    }
}

/// Block `b` of a 32-value block type against every activation row, into one set of
/// accumulators.
#[inline(always)]
unsafe fn block32<const R: usize, const VNNI: bool, B: Block32>(
    wp: *const u8,
    b: usize,
    x: &[ActRow],
    acc: &mut [__m256; R],
    offsets: &mut [f32; R],
) {
    let (q, d, c) = B::unpack(wp.add(b * B::BYTES));
    for r in 0..R {
        let xr = &x[r];
        let xq = _mm256_loadu_si256(xr.qs.as_ptr().add(32 * b) as *const __m256i);
        let dot = if B::SIGNED {
            sdot::<VNNI>(q, xq)
        } else {
            udot::<VNNI>(q, xq)
        };
        let dx = *xr.scales.get_unchecked(b);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * dx), acc[r]);
        if !B::SIGNED {
            offsets[r] += c * *xr.scaled_sums.get_unchecked(b);
        }
    }
}

/// Sixteen i16 lanes: `a` in the first eight, `b` in the last eight (two 16-value sub-blocks'
/// scales for one 32-value register of pair sums).
#[inline(always)]
unsafe fn two_scales(a: i16, b: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a))
}

/// The 16 activation sums of block `b` of a row, as i16 lanes.
#[inline(always)]
unsafe fn sums16(x: &ActRow, b: usize) -> __m256i {
    _mm256_loadu_si256(x.sums.as_ptr().add(16 * b) as *const __m256i)
}

/// 32 activations of row `x` from value `at`.
#[inline(always)]
unsafe fn acts32(x: &ActRow, at: usize) -> __m256i {
    _mm256_loadu_si256(x.qs.as_ptr().add(at) as *const __m256i)
}

/// Bits `shift..shift + 2` of every byte, as values 0..4.
#[inline(always)]
unsafe fn two_bits(v: __m256i, shift: i32) -> __m256i {
    _mm256_and_si256(
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)),
        _mm256_set1_epi8(3),
    )
}

#[inline(always)]
unsafe fn q2k<const R: usize, const VNNI: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 84;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0f32; R];
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 84);
        let scales = std::slice::from_raw_parts(p, 16);
        let (d, dmin) = (f16(p.add(80)), f16(p.add(82)));
        let m16 = _mm256_cvtepu8_epi16(_mm_srli_epi16(
            _mm_and_si128(
                _mm_loadu_si128(p as *const __m128i),
                _mm_set1_epi8(0xF0u8 as i8),
            ),
            4,
        ));
        let mut isum = [_mm256_setzero_si256(); R];
        for h in 0..2 {
            let q = _mm256_loadu_si256(p.add(16 + 32 * h) as *const __m256i);
            for t in 0..4 {
                let s = 8 * h + 2 * t;
                let sc = two_scales((scales[s] & 0x0F) as i16, (scales[s + 1] & 0x0F) as i16);
                let q2 = two_bits(q, 2 * t as i32);
                for r in 0..R {
                    let xq = acts32(&x[r], 256 * b + 128 * h + 32 * t);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(pairs(q2, xq), sc));
                }
            }
        }
        for r in 0..R {
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * dx), acc[r]);
            let msum = hsum_i32(_mm256_madd_epi16(m16, sums16(&x[r], b)));
            mins[r] += dmin * dx * msum as f32;
        }
    }
    for r in 0..R {
        out[r] = hsum(acc[r]) - mins[r];
    }
}

#[inline(always)]
unsafe fn q3k<const R: usize, const VNNI: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 110;
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 110);
        let d = f16(p.add(108));
        let sc = q3k_scales(&*(p.add(96) as *const [u8; 12]));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
        let hmask = _mm256_loadu_si256(p as *const __m256i);
        let one = _mm256_set1_epi8(1);
        let mut isum = [_mm256_setzero_si256(); R];
        for h in 0..2 {
            let q = _mm256_loadu_si256(p.add(32 + 32 * h) as *const __m256i);
            for t in 0..4 {
                let s = 8 * h + 2 * t;
                // The high bit (bit 4h + t of each hmask byte) set means +4: values 0..8, 4 less.
                let shift = _mm_cvtsi32_si128((4 * h + t) as i32);
                let high = _mm256_and_si256(_mm256_srl_epi16(hmask, shift), one);
                let q3 = _mm256_or_si256(two_bits(q, 2 * t as i32), _mm256_slli_epi16(high, 2));
                let scale = two_scales(sc[s] as i16, sc[s + 1] as i16);
                for r in 0..R {
                    let xq = acts32(&x[r], 256 * b + 128 * h + 32 * t);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(pairs(q3, xq), scale));
                }
            }
        }
        for r in 0..R {
            // The values are stored 4 high: take 4 · Σ scale · (sum of 16 activations).
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, sums16(&x[r], b)), 2);
            let total = _mm256_sub_epi32(isum[r], offset);
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(d * dx), acc[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
}

/// Q4_K and Q5_K: eight runs of 32 with 6-bit scales and minimums; `FIVE`: a fifth bit per
/// value from the 32 bytes before the nibbles.
#[inline(always)]
unsafe fn k4k5<const R: usize, const FIVE: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let size = if FIVE { 176 } else { 144 };
    let blocks = w.len() / size;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0f32; R];
    let m4 = _mm256_set1_epi8(0x0F);
    for b in 0..blocks {
        let p = w.as_ptr().add(b * size);
        let (d, dmin) = (f16(p), f16(p.add(2)));
        let (sc, mn) = q4k_scales_and_mins(&*(p.add(4) as *const [u8; 12]));
        // Each minimum twice: it applies to two 16-value sums.
        let mn16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(
            _mm_loadl_epi64(mn.as_ptr() as *const __m128i),
            _mm_loadl_epi64(mn.as_ptr() as *const __m128i),
        ));
        let qs = p.add(if FIVE { 48 } else { 16 });
        let qh = if FIVE {
            _mm256_loadu_si256(p.add(16) as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        let mut isum = [_mm256_setzero_si256(); R];
        for j in 0..4 {
            let q = _mm256_loadu_si256(qs.add(32 * j) as *const __m256i);
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if FIVE {
                let bit = |g: i32| {
                    let b = _mm256_and_si256(
                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(g)),
                        _mm256_set1_epi8(1),
                    );
                    _mm256_slli_epi16(b, 4)
                };
                lo = _mm256_or_si256(lo, bit(2 * j as i32));
                hi = _mm256_or_si256(hi, bit(2 * j as i32 + 1));
            }
            let (s_lo, s_hi) = (
                _mm256_set1_epi16(sc[2 * j] as i16),
                _mm256_set1_epi16(sc[2 * j + 1] as i16),
            );
            for r in 0..R {
                let x0 = acts32(&x[r], 256 * b + 64 * j);
                let x1 = acts32(&x[r], 256 * b + 64 * j + 32);
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(pairs(lo, x0), s_lo),
                    _mm256_madd_epi16(pairs(hi, x1), s_hi),
                );
                isum[r] = _mm256_add_epi32(isum[r], s);
            }
        }
        for r in 0..R {
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * dx), acc[r]);
            let msum = hsum_i32(_mm256_madd_epi16(mn16, sums16(&x[r], b)));
            mins[r] += dmin * dx * msum as f32;
        }
    }
    for r in 0..R {
        out[r] = hsum(acc[r]) - mins[r];
    }
}

#[inline(always)]
unsafe fn q4k<const R: usize, const VNNI: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    k4k5::<R, false>(w, x, out)
}

#[inline(always)]
unsafe fn q5k<const R: usize, const VNNI: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    k4k5::<R, true>(w, x, out)
}

#[inline(always)]
unsafe fn q6k<const R: usize, const VNNI: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 210;
    let mut acc = [_mm256_setzero_ps(); R];
    let m4 = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 210);
        let d = f16(p.add(208));
        let sc = std::slice::from_raw_parts(p.add(192) as *const i8, 16);
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); R];
        for h in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            let high = |shift: i32| {
                let bits = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)), three);
                _mm256_slli_epi16(bits, 4)
            };
            let runs = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(6)),
            ];
            for (t, q) in runs.into_iter().enumerate() {
                let s = 8 * h + 2 * t;
                let scale = two_scales(sc[s] as i16, sc[s + 1] as i16);
                for r in 0..R {
                    let xq = acts32(&x[r], 256 * b + 128 * h + 32 * t);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(pairs(q, xq), scale));
                }
            }
        }
        for r in 0..R {
            // The values are stored 32 high: take 32 · Σ scale · (sum of 16 activations).
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, sums16(&x[r], b)), 5);
            let total = _mm256_sub_epi32(isum[r], offset);
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(d * dx), acc[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
}

#[inline(always)]
unsafe fn iq4xs<const R: usize, const VNNI: bool>(w: &[u8], x: &[ActRow], out: &mut [f32]) {
    let blocks = w.len() / 136;
    let mut acc = [_mm256_setzero_ps(); R];
    let grid = iq4_grid();
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 136);
        let d = f16(p);
        let scales_h = u16::from_le_bytes([*p.add(2), *p.add(3)]);
        let mut isum = [_mm256_setzero_si256(); R];
        for g in 0..8 {
            let low = (*p.add(4 + g / 2) >> (4 * (g % 2))) & 0x0F;
            let ls = (low as u16 | ((scales_h >> (2 * g)) & 3) << 4) as i16 - 32;
            let q = _mm256_shuffle_epi8(grid, nibbles(p.add(8 + 16 * g)));
            let (qa, scale) = (_mm256_sign_epi8(q, q), _mm256_set1_epi16(ls));
            for r in 0..R {
                let xq = acts32(&x[r], 256 * b + 32 * g);
                let prod = _mm256_maddubs_epi16(qa, _mm256_sign_epi8(xq, q));
                isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(prod, scale));
            }
        }
        for r in 0..R {
            let dx = *x[r].scales.get_unchecked(b);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * dx), acc[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
}
