//! The AVX-512 VNNI instructions of the quantized decode kernel (`quant_rows`): one weight row
//! of Q8_0, Q4_K or Q6_K blocks against up to 4 rows of int8 activations.

use super::super::block_acts::{Acts, BlockType, ROWS};
use super::super::blocks::q4k_scales_and_mins;
use std::arch::x86_64::*;

/// Dot products of one weight row `w` with activation rows `first..first + rows` (≤ ROWS).
///
/// # Safety
/// AVX-512 F/BW/VNNI, F16C and FMA are available; `w` is whole blocks of `kind` covering
/// `acts.k` values; the activation rows exist.
pub unsafe fn dots(
    kind: BlockType,
    w: &[u8],
    acts: &Acts,
    first: usize,
    rows: usize,
    out: &mut [f32; ROWS],
) {
    macro_rules! by_rows {
        ($f:ident) => {
            match rows {
                1 => $f::<1>(w, acts, first, out),
                2 => $f::<2>(w, acts, first, out),
                3 => $f::<3>(w, acts, first, out),
                _ => $f::<4>(w, acts, first, out),
            }
        };
    }
    match kind {
        BlockType::Q8_0 => by_rows!(q8_0),
        BlockType::Q4K => by_rows!(q4k),
        BlockType::Q6K => by_rows!(q6k),
    }
}

#[inline(always)]
unsafe fn half(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Sixteen i16 lanes holding `a` then sixteen holding `b`, picked from `v`'s i16 lanes.
#[inline(always)]
unsafe fn pick2(v: __m512i, a: i16, b: i16) -> __m512i {
    let idx = _mm512_mask_blend_epi16(0xFFFF_0000, _mm512_set1_epi16(a), _mm512_set1_epi16(b));
    _mm512_permutexvar_epi16(idx, v)
}

/// Lane i of this index is i / 8.
static EIGHTHS: [i16; 32] = {
    let mut lanes = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        lanes[i] = (i / 8) as i16;
        i += 1;
    }
    lanes
};

/// Four runs of eight i16 lanes holding `a`, `a + 1`, `a + 2`, `a + 3` from `v`.
#[inline(always)]
unsafe fn pick4(v: __m512i, a: i16) -> __m512i {
    let idx = _mm512_add_epi16(
        _mm512_loadu_si512(EIGHTHS.as_ptr() as *const __m512i),
        _mm512_set1_epi16(a),
    );
    _mm512_permutexvar_epi16(idx, v)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn q8_0<const R: usize>(w: &[u8], acts: &Acts, first: usize, out: &mut [f32; ROWS]) {
    let k = acts.k;
    let blocks = k / 32;
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); R];
    let x: [*const i8; R] = std::array::from_fn(|r| acts.qs.as_ptr().add((first + r) * k));
    let xd: [*const f32; R] =
        std::array::from_fn(|r| acts.scales.as_ptr().add((first + r) * blocks));
    let wp = w.as_ptr();
    let mut b = 0;
    while b < blocks {
        let p0 = wp.add(b * 34);
        let p1 = p0.add(34);
        let wq = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(2) as *const __m256i)),
            _mm256_loadu_si256(p1.add(2) as *const __m256i),
            1,
        );
        // Signed × signed through VNNI's unsigned × signed: |w| times x with w's sign.
        let wabs = _mm512_abs_epi8(wq);
        let negative = _mm512_movepi8_mask(wq);
        let wd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half(p0)), _mm512_set1_ps(half(p1)));
        for r in 0..R {
            let xq = _mm512_loadu_si512(x[r].add(b * 32) as *const __m512i);
            let xs = _mm512_mask_sub_epi8(xq, negative, zero, xq);
            let dot = _mm512_dpbusd_epi32(zero, wabs, xs);
            let d = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(*xd[r].add(b)),
                _mm512_set1_ps(*xd[r].add(b + 1)),
            );
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(wd, d), acc[r]);
        }
        b += 2;
    }
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn q4k<const R: usize>(w: &[u8], acts: &Acts, first: usize, out: &mut [f32; ROWS]) {
    let k = acts.k;
    let blocks = k / 256;
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_min = [_mm_setzero_ps(); R];
    let x: [*const i8; R] = std::array::from_fn(|r| acts.qs.as_ptr().add((first + r) * k));
    let xd: [*const f32; R] =
        std::array::from_fn(|r| acts.scales.as_ptr().add((first + r) * blocks));
    let xs: [*const i16; R] = std::array::from_fn(|r| acts.sums.as_ptr().add((first + r) * k / 32));
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 144);
        let d = half(p);
        let dmin = half(p.add(2));
        let (scales, mins) = q4k_scales_and_mins(&*(p.add(4) as *const [u8; 12]));
        let (scales, mins) = (u64::from_le_bytes(scales), u64::from_le_bytes(mins));
        let sc = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(_mm_cvtsi64_si128(scales as i64)));
        let mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64));
        let s: [__m512i; 4] = [
            pick2(sc, 0, 2),
            pick2(sc, 1, 3),
            pick2(sc, 4, 6),
            pick2(sc, 5, 7),
        ];
        let mut sum = [_mm512_setzero_si512(); R];
        for h in 0..2 {
            let q4 = _mm512_loadu_si512(p.add(16 + 64 * h) as *const __m512i);
            let lo = _mm512_and_si512(q4, m4);
            let hi = _mm512_and_si512(_mm512_srli_epi16(q4, 4), m4);
            for r in 0..R {
                let xp = x[r].add(b * 256 + 128 * h);
                let xlo = _mm512_loadu_si512(xp as *const __m512i);
                let xhi = _mm512_loadu_si512(xp.add(64) as *const __m512i);
                sum[r] = _mm512_dpwssd_epi32(sum[r], _mm512_maddubs_epi16(lo, xlo), s[2 * h]);
                sum[r] = _mm512_dpwssd_epi32(sum[r], _mm512_maddubs_epi16(hi, xhi), s[2 * h + 1]);
            }
        }
        for r in 0..R {
            let dx = *xd[r].add(b);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r]), _mm512_set1_ps(d * dx), acc[r]);
            let s32 = _mm_loadu_si128(xs[r].add(b * 8) as *const __m128i);
            let m = _mm_cvtepi32_ps(_mm_madd_epi16(mn, s32));
            acc_min[r] = _mm_fmadd_ps(m, _mm_set1_ps(dmin * dx), acc_min[r]);
        }
    }
    for r in 0..R {
        let mins = _mm_add_ps(acc_min[r], _mm_movehl_ps(acc_min[r], acc_min[r]));
        let mins = _mm_add_ss(mins, _mm_movehdup_ps(mins));
        out[r] = _mm512_reduce_add_ps(acc[r]) - _mm_cvtss_f32(mins);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn q6k<const R: usize>(w: &[u8], acts: &Acts, first: usize, out: &mut [f32; ROWS]) {
    let k = acts.k;
    let blocks = k / 256;
    let m4 = _mm512_set1_epi8(0x0F);
    let m3 = _mm512_set1_epi8(0x03);
    let m30 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_offset = [_mm256_setzero_ps(); R];
    let x: [*const i8; R] = std::array::from_fn(|r| acts.qs.as_ptr().add((first + r) * k));
    let xd: [*const f32; R] =
        std::array::from_fn(|r| acts.scales.as_ptr().add((first + r) * blocks));
    let xs: [*const i16; R] = std::array::from_fn(|r| acts.sums.as_ptr().add((first + r) * k / 16));
    for b in 0..blocks {
        let p = w.as_ptr().add(b * 210);
        let d = half(p.add(208));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
        let sc = _mm512_castsi256_si512(sc16);
        let mut sum = [_mm512_setzero_si512(); R];
        for h in 0..2 {
            let ql = _mm512_loadu_si512(p.add(64 * h) as *const __m512i);
            let qh32 = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            let qh =
                _mm512_inserti64x4(_mm512_castsi256_si512(qh32), _mm256_srli_epi16(qh32, 2), 1);
            // Values 0..64 (stored + 32): low nibbles with bits 0-1 / 2-3 of qh on top, then
            // high nibbles with bits 4-5 / 6-7.
            let q_lo = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_slli_epi16(_mm512_and_si512(qh, m3), 4),
            );
            let q_hi = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                _mm512_and_si512(qh, m30),
            );
            let s_lo = pick4(sc, 8 * h as i16);
            let s_hi = pick4(sc, 8 * h as i16 + 4);
            for r in 0..R {
                let xp = x[r].add(b * 256 + 128 * h);
                let x0 = _mm512_loadu_si512(xp as *const __m512i);
                let x1 = _mm512_loadu_si512(xp.add(64) as *const __m512i);
                sum[r] = _mm512_dpwssd_epi32(sum[r], _mm512_maddubs_epi16(q_lo, x0), s_lo);
                sum[r] = _mm512_dpwssd_epi32(sum[r], _mm512_maddubs_epi16(q_hi, x1), s_hi);
            }
        }
        for r in 0..R {
            let dx = d * *xd[r].add(b);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r]), _mm512_set1_ps(dx), acc[r]);
            // The stored values are offset by 32: take 32 × scale × (sum of 16 activations).
            let s16 = _mm256_loadu_si256(xs[r].add(b * 16) as *const __m256i);
            let off = _mm256_cvtepi32_ps(_mm256_madd_epi16(sc16, s16));
            acc_offset[r] = _mm256_fmadd_ps(off, _mm256_set1_ps(32.0 * dx), acc_offset[r]);
        }
    }
    for r in 0..R {
        let off = _mm512_reduce_add_ps(_mm512_castps256_ps512(acc_offset[r]));
        out[r] = _mm512_reduce_add_ps(acc[r]) - off;
    }
}
