//! The AVX-512 instructions of the 16-bit kernels (`half_tiles`): the 4 × 6 register tile of dot
//! products for prefill (f16 converted in the loop, bf16 as pairs with AVX-512 BF16) and the
//! one-row products for decoding.

use super::super::half16::Load16;
use std::arch::x86_64::*;

/// Activation rows and weight rows of one prefill tile: 24 accumulators kept in registers.
pub const RM: usize = 4;
pub const RN: usize = 6;

/// One tile, dispatched to the kernel compiled for its size (edges are smaller).
///
/// # Safety
/// AVX-512 F is available; `x` points at `rm` rows and `w` at `rn` rows of `k` values,
/// `k` a multiple of 16.
pub unsafe fn tile(
    load: Load16,
    x: *const f32,
    w: *const u16,
    k: usize,
    rm: usize,
    rn: usize,
    out: &mut [[f32; RN]; RM],
) {
    macro_rules! sizes {
        ($f:ident, $($m:literal),*) => {
            match rm {
                $($m => match rn {
                    1 => $f::<$m, 1>(x, w, k, out),
                    2 => $f::<$m, 2>(x, w, k, out),
                    3 => $f::<$m, 3>(x, w, k, out),
                    4 => $f::<$m, 4>(x, w, k, out),
                    5 => $f::<$m, 5>(x, w, k, out),
                    _ => $f::<$m, 6>(x, w, k, out),
                },)*
                _ => unreachable!("tiles have 1 to {RM} rows"),
            }
        };
    }
    match load {
        Load16::F16 => sizes!(tile_f16, 1, 2, 3, 4),
        Load16::Bf16 => sizes!(tile_bf16, 1, 2, 3, 4),
    }
}

/// One weight row (f16) times m ≤ 4 activation rows, 32 values per step.
///
/// # Safety
/// AVX-512 F/VL are available; `w` holds k values, `x` m rows of k; k a multiple of 16.
#[target_feature(enable = "avx512f,avx512vl")]
pub unsafe fn row_f16(x: &[f32], m: usize, k: usize, w: *const u16, out: &mut [f32; 4]) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    row_with(x, m, k, w, out, load)
}

/// One weight row (bf16, widened) times m ≤ 4 activation rows.
///
/// # Safety
/// As `row_f16`.
#[target_feature(enable = "avx512f,avx512vl")]
pub unsafe fn row_bf16(x: &[f32], m: usize, k: usize, w: *const u16, out: &mut [f32; 4]) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))
    }
    row_with(x, m, k, w, out, load)
}

#[inline(always)]
unsafe fn row_with(
    x: &[f32],
    m: usize,
    k: usize,
    w: *const u16,
    out: &mut [f32; 4],
    load: unsafe fn(*const u16) -> __m512,
) {
    // Two accumulators per row: the multiply-add latency is not on the critical path.
    let mut acc = [[_mm512_setzero_ps(); 2]; 4];
    let xp = x.as_ptr();
    let mut p = 0;
    while p + 32 <= k {
        let (w0, w1) = (load(w.add(p)), load(w.add(p + 16)));
        #[allow(clippy::needless_range_loop)]
        for a in 0..m {
            let xa = xp.add(a * k + p);
            acc[a][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xa), w0, acc[a][0]);
            acc[a][1] = _mm512_fmadd_ps(_mm512_loadu_ps(xa.add(16)), w1, acc[a][1]);
        }
        p += 32;
    }
    if p < k {
        let w0 = load(w.add(p));
        #[allow(clippy::needless_range_loop)]
        for a in 0..m {
            acc[a][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(a * k + p)), w0, acc[a][0]);
        }
    }
    for a in 0..m {
        out[a] = _mm512_reduce_add_ps(_mm512_add_ps(acc[a][0], acc[a][1]));
    }
}

/// One weight row (bf16) times m ≤ 4 activation rows rounded to bf16, 64 values per step.
///
/// # Safety
/// AVX-512 BF16 is available; `w` holds k values, `x` m rows of k; k a multiple of 32.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
pub unsafe fn row_bf16_dot(x: &[u16], m: usize, k: usize, w: *const u16, out: &mut [f32; 4]) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }
    let mut acc = [[_mm512_setzero_ps(); 2]; 4];
    let xp = x.as_ptr();
    let mut p = 0;
    while p + 64 <= k {
        let (w0, w1) = (load(w.add(p)), load(w.add(p + 32)));
        #[allow(clippy::needless_range_loop)]
        for a in 0..m {
            let xa = xp.add(a * k + p);
            acc[a][0] = _mm512_dpbf16_ps(acc[a][0], load(xa), w0);
            acc[a][1] = _mm512_dpbf16_ps(acc[a][1], load(xa.add(32)), w1);
        }
        p += 64;
    }
    if p < k {
        let w0 = load(w.add(p));
        #[allow(clippy::needless_range_loop)]
        for a in 0..m {
            acc[a][0] = _mm512_dpbf16_ps(acc[a][0], load(xp.add(a * k + p)), w0);
        }
    }
    for a in 0..m {
        out[a] = _mm512_reduce_add_ps(_mm512_add_ps(acc[a][0], acc[a][1]));
    }
}

/// Activations rounded to bf16 (to nearest even), 16 at a time.
///
/// # Safety
/// AVX-512 BF16 is available; `x.len()` is a multiple of 16.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
pub unsafe fn to_bf16(x: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; x.len()];
    for (o, v) in out.chunks_exact_mut(16).zip(x.chunks_exact(16)) {
        let b = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr()));
        _mm256_storeu_si256(
            o.as_mut_ptr() as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(b),
        );
    }
    out
}

/// One tile of bf16 activations times bf16 weights, 32 products per instruction.
///
/// # Safety
/// AVX-512 BF16 is available; `x` points at `rm` rows and `w` at `rn` rows of `k` values,
/// `k` a multiple of 32.
pub unsafe fn tile_bf16_dot(
    x: *const u16,
    w: *const u16,
    k: usize,
    rm: usize,
    rn: usize,
    out: &mut [[f32; RN]; RM],
) {
    macro_rules! sizes {
        ($($m:literal),*) => {
            match rm {
                $($m => match rn {
                    1 => dot_tile::<$m, 1>(x, w, k, out),
                    2 => dot_tile::<$m, 2>(x, w, k, out),
                    3 => dot_tile::<$m, 3>(x, w, k, out),
                    4 => dot_tile::<$m, 4>(x, w, k, out),
                    5 => dot_tile::<$m, 5>(x, w, k, out),
                    _ => dot_tile::<$m, 6>(x, w, k, out),
                },)*
                _ => unreachable!("tiles have 1 to {RM} rows"),
            }
        };
    }
    sizes!(1, 2, 3, 4)
}

#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn dot_tile<const M: usize, const N: usize>(
    x: *const u16,
    w: *const u16,
    k: usize,
    out: &mut [[f32; RN]; RM],
) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }
    let zero = _mm512_setzero_ps();
    let (mut a0, mut a1, mut a2, mut a3) = ([zero; N], [zero; N], [zero; N], [zero; N]);
    let mut wv = [load(w); N];
    let mut p = 0;
    while p < k {
        #[allow(clippy::needless_range_loop)]
        for b in 0..N {
            wv[b] = load(w.add(b * k + p));
        }
        macro_rules! row {
            ($acc:ident, $a:expr) => {
                if M > $a {
                    let xv = load(x.add($a * k + p));
                    for b in 0..N {
                        $acc[b] = _mm512_dpbf16_ps($acc[b], xv, wv[b]);
                    }
                }
            };
        }
        row!(a0, 0);
        row!(a1, 1);
        row!(a2, 2);
        row!(a3, 3);
        p += 32;
    }
    for (a, acc) in [a0, a1, a2, a3].iter().take(M).enumerate() {
        for b in 0..N {
            out[a][b] = _mm512_reduce_add_ps(acc[b]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn tile_f16<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; RN]; RM],
) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    tile_with::<M, N>(x, w, k, out, load)
}

#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn tile_bf16<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; RN]; RM],
) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))
    }
    tile_with::<M, N>(x, w, k, out, load)
}

#[inline(always)]
unsafe fn tile_with<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; RN]; RM],
    load: unsafe fn(*const u16) -> __m512,
) {
    // One array per activation row and index loops over the constant sizes: LLVM then
    // keeps every accumulator in a register (one M × N array, or iterator chains, left
    // them on the stack).
    let zero = _mm512_setzero_ps();
    let (mut a0, mut a1, mut a2, mut a3) = ([zero; N], [zero; N], [zero; N], [zero; N]);
    let mut wv = [zero; N];
    let mut p = 0;
    while p < k {
        #[allow(clippy::needless_range_loop)]
        for b in 0..N {
            wv[b] = load(w.add(b * k + p));
        }
        macro_rules! row {
            ($acc:ident, $a:expr) => {
                if M > $a {
                    let xv = _mm512_loadu_ps(x.add($a * k + p));
                    for b in 0..N {
                        $acc[b] = _mm512_fmadd_ps(xv, wv[b], $acc[b]);
                    }
                }
            };
        }
        row!(a0, 0);
        row!(a1, 1);
        row!(a2, 2);
        row!(a3, 3);
        p += 16;
    }
    for (a, acc) in [a0, a1, a2, a3].iter().take(M).enumerate() {
        for b in 0..N {
            out[a][b] = _mm512_reduce_add_ps(acc[b]);
        }
    }
}
