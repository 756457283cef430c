//! AVX2 + FMA (+ F16C) loops for 16-bit weights on CPUs without AVX-512.
//!
//! Fused convert-and-dot loops: decoding reads every weight once per token, so converting it to
//! a buffer first doubles the memory traffic of the step that is bound by it.

use std::arch::x86_64::*;

/// The sum of a vector's eight lanes (every AVX2 kernel's last step).
#[inline(always)]
pub unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Eight weights as f32 from 16-bit storage at `p`.
type Load = unsafe fn(*const u16) -> __m256;

#[target_feature(enable = "avx2,f16c")]
unsafe fn load_f16(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// bf16 is the top half of an f32: widened by a shift.
#[target_feature(enable = "avx2")]
unsafe fn load_bf16(p: *const u16) -> __m256 {
    let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
    _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
}

#[inline(always)]
unsafe fn dot_with(x: &[f32], w: *const u16, load: Load, tail: impl Fn(usize) -> f32) -> f32 {
    let n = x.len();
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (a, acc) in acc.iter_mut().enumerate() {
            let o = i + 8 * a;
            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(o)), load(w.add(o)), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), load(w.add(i)), acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = hsum(sum);
    for (j, xj) in x.iter().enumerate().skip(i) {
        total += xj * tail(j);
    }
    total
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(x: &[f32], w: &[half::f16]) -> f32 {
    dot_with(x, w.as_ptr() as *const u16, load_f16, |j| w[j].to_f32())
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_bf16(x: &[f32], w: &[half::bf16]) -> f32 {
    dot_with(x, w.as_ptr() as *const u16, load_bf16, |j| w[j].to_f32())
}

/// `half`'s portable dot products of every activation row with one widened weight row,
/// compiled for AVX2 + FMA (the default x86-64 target has neither, and without FMA `mul_add`
/// becomes a library call).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dots(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
    super::super::dots::dots_fma(x, k, w, out)
}

/// An f32 dot product (a LoRA adapter's), compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(x: &[f32], a: &[f32]) -> f32 {
    super::super::dots::dot_fma(x, a)
}

/// y += l · w, eight at a time, with `load` widening w's values.
#[inline(always)]
unsafe fn spread_with(
    y: &mut [f32],
    l: f32,
    w: *const u16,
    load: Load,
    tail: impl Fn(usize) -> f32,
) {
    let (n, yp, lv) = (y.len(), y.as_mut_ptr(), _mm256_set1_ps(l));
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(
            yp.add(i),
            _mm256_fmadd_ps(lv, load(w.add(i)), _mm256_loadu_ps(yp.add(i))),
        );
        i += 8;
    }
    for (j, y) in y.iter_mut().enumerate().skip(i) {
        *y += l * tail(j);
    }
}

/// y += l · w for f32 `w` (a LoRA adapter's Bᵀ row).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn spread_f32(y: &mut [f32], l: f32, w: &[f32]) {
    for (y, &w) in y.iter_mut().zip(w) {
        *y = l.mul_add(w, *y);
    }
}

/// y += l · w for f16 `w`, converted in the loop.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` is at least as long as `y`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn spread_f16(y: &mut [f32], l: f32, w: &[half::f16]) {
    let w = &w[..y.len()];
    spread_with(y, l, w.as_ptr() as *const u16, load_f16, |j| w[j].to_f32())
}

/// y += l · w for bf16 `w`, widened in the loop.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `w` is at least as long as `y`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn spread_bf16(y: &mut [f32], l: f32, w: &[half::bf16]) {
    let w = &w[..y.len()];
    spread_with(y, l, w.as_ptr() as *const u16, load_bf16, |j| w[j].to_f32())
}
