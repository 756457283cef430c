//! The NEON tile of the 16-bit kernels (`half_tiles`): 4 activation rows × 4 weight rows of dot
//! products in 16 of NEON's 32 registers (4 more hold the widened weights, 1 the activations),
//! so each loaded vector feeds 4 multiply-adds. bf16 is widened by a shift; f16 by `fcvtl`
//! (written as assembly: Rust's f16 vector types are not stable). The same tile serves decode
//! (one activation row) and prefill.

use super::super::half16::Load16;
use std::arch::aarch64::*;
use std::arch::asm;

/// Activation rows and weight rows of one tile.
pub const TM: usize = 4;
pub const TN: usize = 4;

/// One tile, dispatched to the kernel compiled for its size (edges are smaller).
///
/// # Safety
/// The CPU has NEON; `x` points at `rm` rows and `w` at `rn` rows of `k` values, `k` a multiple
/// of 8.
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
                    3 => $f::<$m, 3>(x, w, k, out),
                    _ => $f::<$m, 4>(x, w, k, out),
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

#[target_feature(enable = "neon")]
unsafe fn tile_f16<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; TN]; TM],
) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> (float32x4_t, float32x4_t) {
        let h = vld1q_u16(p);
        let (low, high): (float32x4_t, float32x4_t);
        asm!(
            "fcvtl {low:v}.4s, {h:v}.4h",
            "fcvtl2 {high:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            low = out(vreg) low,
            high = out(vreg) high,
            options(pure, nomem, nostack)
        );
        (low, high)
    }
    tile_with::<M, N>(x, w, k, out, load)
}

#[target_feature(enable = "neon")]
unsafe fn tile_bf16<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; TN]; TM],
) {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> (float32x4_t, float32x4_t) {
        let h = vld1q_u16(p);
        (
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
            vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
        )
    }
    tile_with::<M, N>(x, w, k, out, load)
}

#[inline(always)]
unsafe fn tile_with<const M: usize, const N: usize>(
    x: *const f32,
    w: *const u16,
    k: usize,
    out: &mut [[f32; TN]; TM],
    load: unsafe fn(*const u16) -> (float32x4_t, float32x4_t),
) {
    // One array per activation row, index loops over the constant sizes: every accumulator
    // stays in a register. 8 values per step: the low and high halves of one 16-bit load.
    let zero = vdupq_n_f32(0.0);
    let (mut a0, mut a1, mut a2, mut a3) = ([zero; N], [zero; N], [zero; N], [zero; N]);
    let mut low = [zero; N];
    let mut high = [zero; N];
    let mut p = 0;
    while p < k {
        for b in 0..N {
            (low[b], high[b]) = load(w.add(b * k + p));
        }
        macro_rules! row {
            ($acc:ident, $a:expr) => {
                if M > $a {
                    let x0 = vld1q_f32(x.add($a * k + p));
                    let x1 = vld1q_f32(x.add($a * k + p + 4));
                    for b in 0..N {
                        $acc[b] = vfmaq_f32($acc[b], x0, low[b]);
                        $acc[b] = vfmaq_f32($acc[b], x1, high[b]);
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
            out[a][b] = vaddvq_f32(acc[b]);
        }
    }
}
