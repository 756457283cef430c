//! The AVX-512 VNNI instructions of the quantized prefill kernel (`quant_tiles`): 8 unpacked
//! weight rows times a group of 16 interleaved activation rows.

use super::super::block_acts::{GroupedActs, LANES, TILE_ROWS as ROWS};
use std::arch::x86_64::*;

/// ROWS unpacked weight rows times the 16 activation rows of group `g`; `out[r][lane]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI are available; `q` holds ROWS rows of `acts.k` bytes, `scale` and
/// `off` ROWS rows of `acts.k / SUB`; `acts.sub == SUB` and group `g` exists.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub unsafe fn tile<const SUB: usize>(
    q: &[u8],
    scale: &[f32],
    off: &[f32],
    acts: &GroupedActs,
    g: usize,
    out: &mut [[f32; LANES]; ROWS],
) {
    debug_assert_eq!(acts.sub, SUB);
    let k = acts.k;
    let subs = k / SUB;
    let xq = acts.qs.as_ptr().add(g * LANES * k);
    let dx = acts.dx.as_ptr().add(g * subs * LANES);
    let dx_sum = acts.dx_sum.as_ptr().add(g * subs * LANES);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); ROWS];
    for s in 0..subs {
        let mut sums = [zero; ROWS];
        for quad in s * SUB / 4..(s + 1) * SUB / 4 {
            let x = _mm512_loadu_si512(xq.add(quad * 4 * LANES) as *const __m512i);
            #[allow(clippy::needless_range_loop)]
            for r in 0..ROWS {
                let w4 = std::ptr::read_unaligned(q.as_ptr().add(r * k + quad * 4) as *const i32);
                sums[r] = _mm512_dpbusd_epi32(sums[r], _mm512_set1_epi32(w4), x);
            }
        }
        let dxv = _mm512_loadu_ps(dx.add(s * LANES));
        let dx_sumv = _mm512_loadu_ps(dx_sum.add(s * LANES));
        #[allow(clippy::needless_range_loop)]
        for r in 0..ROWS {
            let sc = _mm512_mul_ps(_mm512_set1_ps(scale[r * subs + s]), dxv);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), sc, acc[r]);
            acc[r] = _mm512_fnmadd_ps(_mm512_set1_ps(off[r * subs + s]), dx_sumv, acc[r]);
        }
    }
    for r in 0..ROWS {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
