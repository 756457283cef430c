//! AVX2 + FMA loops of streaming attention (also what AVX-512 CPUs run: a tile of 64 keys is
//! eight 256-bit vectors, and the loops are bound by loads more than by vector width).
//!
//! Keys come transposed (head_dim × 64), so scores are vectorised over keys: a broadcast query
//! element times eight keys, no horizontal sums. Values come as rows, so the weighted sum is
//! vectorised over the head's dimensions.

use std::arch::x86_64::*;

use super::super::attend::{exp, EXP_POLY, LN2_HI, LN2_LO, TILE};

/// s[r][j] = q_r · k_j for `rows` query rows (row-major, `hd` each) against the transposed key
/// tile `kt` (hd × TILE); `s` is rows × TILE.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `q` holds rows × hd values, `kt` hd × TILE, `s` rows × TILE.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn scores(q: &[f32], kt: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
    assert!(q.len() >= rows * hd && kt.len() >= hd * TILE && s.len() >= rows * TILE);
    let mut r = 0;
    while r + 4 <= rows {
        score_rows::<4>(
            q.as_ptr().add(r * hd),
            kt.as_ptr(),
            hd,
            s.as_mut_ptr().add(r * TILE),
        );
        r += 4;
    }
    while r < rows {
        score_rows::<1>(
            q.as_ptr().add(r * hd),
            kt.as_ptr(),
            hd,
            s.as_mut_ptr().add(r * TILE),
        );
        r += 1;
    }
}

/// R query rows against the tile, 16 keys (two vectors) at a time: 2·R accumulators.
#[inline(always)]
unsafe fn score_rows<const R: usize>(q: *const f32, kt: *const f32, hd: usize, s: *mut f32) {
    for c in (0..TILE).step_by(16) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for d in 0..hd {
            let k0 = _mm256_loadu_ps(kt.add(d * TILE + c));
            let k1 = _mm256_loadu_ps(kt.add(d * TILE + c + 8));
            for (i, a) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*q.add(i * hd + d));
                a[0] = _mm256_fmadd_ps(b, k0, a[0]);
                a[1] = _mm256_fmadd_ps(b, k1, a[1]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(s.add(i * TILE + c), a[0]);
            _mm256_storeu_ps(s.add(i * TILE + c + 8), a[1]);
        }
    }
}

/// o_r += Σ_j p[r][j] · v_j over the tile's first `n` keys, for `rows` rows: `p` is rows × TILE,
/// `v` n × hd, `o` rows × hd.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the slices hold what is said above.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn accumulate(p: &[f32], v: &[f32], n: usize, hd: usize, rows: usize, o: &mut [f32]) {
    assert!(p.len() >= rows * TILE && v.len() >= n * hd && o.len() >= rows * hd && n <= TILE);
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
    let mut r = 0;
    while r + 2 <= rows {
        weigh_rows::<2>(pp.add(r * TILE), vp, n, hd, op.add(r * hd));
        r += 2;
    }
    if r < rows {
        weigh_rows::<1>(pp.add(r * TILE), vp, n, hd, op.add(r * hd));
    }
}

/// R rows of output, 32 dimensions (four vectors) at a time: 4·R accumulators.
#[inline(always)]
unsafe fn weigh_rows<const R: usize>(
    p: *const f32,
    v: *const f32,
    n: usize,
    hd: usize,
    o: *mut f32,
) {
    let mut d = 0;
    while d + 32 <= hd {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for (i, a) in acc.iter_mut().enumerate() {
            for (x, a) in a.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(o.add(i * hd + d + 8 * x));
            }
        }
        for j in 0..n {
            let vj: [__m256; 4] =
                std::array::from_fn(|x| _mm256_loadu_ps(v.add(j * hd + d + 8 * x)));
            for (i, a) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*p.add(i * TILE + j));
                for x in 0..4 {
                    a[x] = _mm256_fmadd_ps(w, vj[x], a[x]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (x, a) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(i * hd + d + 8 * x), *a);
            }
        }
        d += 32;
    }
    while d + 8 <= hd {
        let mut acc: [__m256; R] = std::array::from_fn(|i| _mm256_loadu_ps(o.add(i * hd + d)));
        for j in 0..n {
            let vj = _mm256_loadu_ps(v.add(j * hd + d));
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p.add(i * TILE + j)), vj, *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(i * hd + d), *a);
        }
        d += 8;
    }
    for d in d..hd {
        for i in 0..R {
            let mut x = *o.add(i * hd + d);
            for j in 0..n {
                x += *p.add(i * TILE + j) * *v.add(j * hd + d);
            }
            *o.add(i * hd + d) = x;
        }
    }
}

/// s[i] = e^(s[i] - m) for every element; returns their sum. The portable `exp`'s polynomial,
/// eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_sum(s: &mut [f32], m: f32) -> f32 {
    let n = s.len();
    let sp = s.as_mut_ptr();
    let mv = _mm256_set1_ps(m);
    let mut sum = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm256_sub_ps(_mm256_loadu_ps(sp.add(i)), mv);
        let e = exp8(x);
        _mm256_storeu_ps(sp.add(i), e);
        sum = _mm256_add_ps(sum, e);
        i += 8;
    }
    let mut total = super::avx2::hsum(sum);
    for x in &mut s[i..] {
        *x = exp(*x - m);
        total += *x;
    }
    total
}

#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_floor_ps(_mm256_fmadd_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
        _mm256_set1_ps(0.5),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let e = _mm256_add_ps(
        _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
        _mm256_set1_ps(1.0),
    );
    let bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(e, _mm256_castsi256_ps(bits))
}
