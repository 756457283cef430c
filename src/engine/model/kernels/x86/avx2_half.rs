//! The AVX2 prefill tile of the 16-bit kernels (`half_tiles`): 4 activation rows × 3 weight rows
//! of dot products kept in 12 of AVX2's 16 registers (3 more hold the weights, 1 the
//! activations), so each loaded vector feeds 3 or 4 multiply-adds; f16 is converted with F16C
//! in the loop, bf16 widened by a shift.

use super::super::half16::Load16;
use super::avx2::hsum;
use std::arch::x86_64::*;

/// Activation rows and weight rows of one tile.
pub const TM: usize = 4;
pub const TN: usize = 3;

/// One tile, dispatched to the kernel compiled for its size (edges are smaller).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `x` points at `rm` rows and `w` at `rn` rows of `k` values,
/// `k` a multiple of 8.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(
    load: Load16,
    x: *const f32,
    w: *const u16,
    k: usize,
    rm: usize,
    rn: usize,
    out: &mut [[f32; TN]; TM],
) {
    macro_rules! sizes {
        ($f:ident, $($m:literal),*) => {
            match rm {
                $($m => match rn {
                    1 => $f::<$m, 1>(x, w, k, out),
                    2 => $f::<$m, 2>(x, w, k, out),
                    _ => $f::<$m, 3>(x, w, k, out),
                },)*
                _ => unreachable!("tiles have 1 to {TM} rows"),
            }
        };
    }
    match load {
        Load16::F16 => sizes!(tile_f16, 1, 2, 3, 4),
        Load16::Bf16 => sizes!(tile_bf16, 1, 2, 3, 4),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_f16<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; TN]; TM],
) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    tile_with::<M, N>(x, w, k, out, load)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_bf16<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; TN]; TM],
) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
    }
    tile_with::<M, N>(x, w, k, out, load)
}

#[inline(always)]
unsafe fn tile_with<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; TN]; TM],
    load: unsafe fn(*const u16) -> __m256,
) {
    // One array per activation row, index loops over the constant sizes: every accumulator
    // stays in a register.
    let zero = _mm256_setzero_ps();
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
                    let xv = _mm256_loadu_ps(x.add($a * k + p));
                    for b in 0..N {
                        $acc[b] = _mm256_fmadd_ps(xv, wv[b], $acc[b]);
                    }
                }
            };
        }
        row!(a0, 0);
        row!(a1, 1);
        row!(a2, 2);
        row!(a3, 3);
        p += 8;
    }
    for (a, acc) in [a0, a1, a2, a3].iter().take(M).enumerate() {
        for b in 0..N {
            out[a][b] = hsum(acc[b]);
        }
    }
}
