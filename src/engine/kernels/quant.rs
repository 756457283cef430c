//! Quantized weights × f32 activations with AVX-512 (BW + VNNI), for the GGML block types that
//! quantized checkpoints mostly hold: Q8_0, and Q4_K with Q6_K (the Q4_K_M mix).
//!
//! Why by hand: candle 0.11 multiplies these blocks 256 bits at a time at best (its AVX2 code), so
//! on a two-core AVX-512 machine decoding a Q4_K_M model is bound by arithmetic, not by memory, and
//! its faster tiled kernels keep a second, repacked copy of every weight. These kernels read the
//! blocks as stored (one copy), 512 bits at a time. Other CPUs keep candle's kernels (AVX2, NEON
//! or portable), which `supports` says.
//!
//! As llama.cpp and candle do, the activations are quantized once per matmul to 8 bits per value
//! with one f32 scale per block, and each dot product is integer arithmetic per block, scaled once.
//! The tests check every kernel against a scalar reference built from candle's dequantization.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::SharedOut;

/// Whether `matmul` runs `dtype` with rows of `k` values on this CPU.
pub fn supports(dtype: GgmlDType, k: usize) -> bool {
    let Some(kind) = Kind::of(dtype) else {
        return false;
    };
    k.is_multiple_of(kind.block_len().max(64)) && avx512_available()
}

/// The block types this module multiplies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Q8_0,
    Q4K,
    Q6K,
}

impl Kind {
    fn of(dtype: GgmlDType) -> Option<Kind> {
        match dtype {
            GgmlDType::Q8_0 => Some(Kind::Q8_0),
            GgmlDType::Q4K => Some(Kind::Q4K),
            GgmlDType::Q6K => Some(Kind::Q6K),
            _ => None,
        }
    }

    /// Weights per block.
    pub(super) fn block_len(self) -> usize {
        match self {
            Kind::Q8_0 => 32,
            Kind::Q4K | Kind::Q6K => 256,
        }
    }

    /// Bytes per block, as GGML lays them out.
    pub(super) fn block_bytes(self) -> usize {
        match self {
            Kind::Q8_0 => 34,
            Kind::Q4K => 144,
            Kind::Q6K => 210,
        }
    }
}

/// Whether owrun's kernels (rather than candle's) multiply Q8_0, Q4_K and Q6_K on this CPU.
pub fn own_kernels_available() -> bool {
    avx512_available()
}

/// AVX-512 with the byte/word instructions and VNNI's dot products, as the standard library
/// detects them: CPUID and the OS's XCR0 (that the kernel saves the 512-bit registers), so a
/// flag the OS does not back is not trusted. F16C and FMA come with every such CPU.
fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            super::avx512_enabled()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Activations quantized for one weight type: `m` rows of `k` int8 values, one f32 scale per
/// weight block, and the sums of every 32 (Q4_K) or 16 quantized values (K-quants fold their minimums and
/// offsets into those). For Q4_K each run of 128 values is stored in the order its nibbles come
/// out of the weights (0..32, 64..96, 32..64, 96..128), so each 64-byte load lines up.
struct Acts {
    k: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i16>,
}

/// Values per activation sum: Q4_K's minimums apply to 32 values, Q6_K's offsets to 16.
fn sum_len(kind: Kind) -> usize {
    match kind {
        Kind::Q4K => 32,
        Kind::Q6K | Kind::Q8_0 => 16,
    }
}

/// One block of activations' int8 scale (its largest magnitude maps to 127) and that scale's
/// inverse (0 for a block of zeros).
#[inline(always)]
pub(super) fn block_scale(values: &[f32]) -> (f32, f32) {
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    (scale, if scale > 0.0 { 1.0 / scale } else { 0.0 })
}

/// `v` quantized with `block_scale`'s inverse: rounded to nearest even; |v| * inverse ≤ 127,
/// so the value fits and is never -128. Inlined into callers compiled for AVX-512, where the
/// rounding is one instruction rather than a libm call.
#[inline(always)]
pub(super) fn to_int8(v: f32, inverse: f32) -> i8 {
    (v * inverse).round_ties_even() as i8
}

/// Where value `p` of a row is stored for `kind` (the Q4_K order above; identity otherwise).
fn stored_at(kind: Kind, p: usize) -> usize {
    if kind != Kind::Q4K {
        return p;
    }
    let (run, i) = (p / 128 * 128, p % 128);
    run + match i {
        0..32 => i,
        32..64 => i + 32,
        64..96 => i - 32,
        _ => i,
    }
}

/// # Safety
/// AVX-512 F is available (compiled for it so rounding is one instruction, not a libm call).
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx512vl")
)]
unsafe fn quantize_acts(kind: Kind, x: &[f32], m: usize, k: usize) -> Acts {
    let block = kind.block_len();
    let mut acts = Acts {
        k,
        qs: vec![0; m * k],
        scales: vec![0.0; m * k / block],
        sums: vec![0; m * k / sum_len(kind)],
    };
    let bytes = acts.qs.chunks_mut(k);
    let scales = acts.scales.chunks_mut(k / block);
    let sums = acts.sums.chunks_mut(k / sum_len(kind));
    for (((row, qs), scales), sums) in x.chunks(k).zip(bytes).zip(scales).zip(sums) {
        for (b, values) in row.chunks(block).enumerate() {
            let (scale, inverse) = block_scale(values);
            scales[b] = scale;
            for (i, v) in values.iter().enumerate() {
                let p = b * block + i;
                let q = to_int8(*v, inverse);
                qs[stored_at(kind, p)] = q;
                sums[p / sum_len(kind)] += q as i16;
            }
        }
    }
    acts
}

/// `x` (m × k, row-major) times the transpose of the quantized matrix `w` (n rows of k values
/// in `dtype`'s blocks). Returns m × n, row-major. Call only where `supports(dtype, k)`.
pub fn matmul(dtype: GgmlDType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let kind = Kind::of(dtype).expect("a supported block type");
    assert!(supports(dtype, k), "{dtype:?} rows of {k} on this CPU");
    assert_eq!(x.len(), m * k, "activations are m × k");
    let row_bytes = k / kind.block_len() * kind.block_bytes();
    assert_eq!(w.len(), n * row_bytes, "weights are n rows of k");
    if m >= super::quant_gemm::MIN_ROWS {
        return super::quant_gemm::matmul(kind, w, n, k, x, m);
    }
    // SAFETY: `supports` checked AVX-512 above.
    let acts = unsafe { quantize_acts(kind, x, m, k) };
    let mut y = vec![0f32; m * n];
    // Tasks own disjoint runs of output columns: enough of them to balance the cores, each long
    // enough to amortise its scheduling.
    let threads = rayon::current_num_threads();
    // Measured on TinyLlama Q4_K_M decode (2 threads): one task per thread, or two, were 10%
    // slower; two weight rows per pass (two memory streams per thread) 25% slower.
    let per_task = (n / (threads * 8)).clamp(4, 64);
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let columns = t * per_task..((t + 1) * per_task).min(n);
        let out = &out;
        let mut row = 0;
        while row < m {
            let rows = (m - row).min(ROWS);
            for j in columns.clone() {
                let wj = &w[j * row_bytes..(j + 1) * row_bytes];
                let mut dots = [0f32; ROWS];
                // SAFETY: `supports` checked the CPU's features and the row length; `wj` holds
                // whole blocks of `kind`, `acts` rows `row..row + rows` exist.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::dots(kind, wj, &acts, row, rows, &mut dots)
                };
                for (i, d) in dots.iter().take(rows).enumerate() {
                    // SAFETY: (row + i, j) is written by this task alone (it owns column j),
                    // inside the m × n buffer.
                    unsafe { *out.0.add((row + i) * n + j) = *d };
                }
            }
            row += rows;
        }
    });
    y
}

/// Activation rows that share one pass over a weight row (their accumulators stay in registers).
const ROWS: usize = 4;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Acts, Kind, ROWS};
    use std::arch::x86_64::*;

    /// Dot products of one weight row `w` with activation rows `first..first + rows` (≤ ROWS).
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI, F16C and FMA are available; `w` is whole blocks of `kind` covering
    /// `acts.k` values; the activation rows exist.
    pub unsafe fn dots(
        kind: Kind,
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
            Kind::Q8_0 => by_rows!(q8_0),
            Kind::Q4K => by_rows!(q4k),
            Kind::Q6K => by_rows!(q6k),
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
            let wd =
                _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half(p0)), _mm512_set1_ps(half(p1)));
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
        let xs: [*const i16; R] =
            std::array::from_fn(|r| acts.sums.as_ptr().add((first + r) * k / 32));
        for b in 0..blocks {
            let p = w.as_ptr().add(b * 144);
            let d = half(p);
            let dmin = half(p.add(2));
            let (scales, mins) = scales_and_mins(p.add(4));
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
                    sum[r] =
                        _mm512_dpwssd_epi32(sum[r], _mm512_maddubs_epi16(hi, xhi), s[2 * h + 1]);
                }
            }
            for r in 0..R {
                let dx = *xd[r].add(b);
                acc[r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r]), _mm512_set1_ps(d * dx), acc[r]);
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

    /// Q4_K's eight 6-bit scales and eight 6-bit minimums, unpacked from their 12 bytes, as
    /// eight bytes each (little-endian u64s).
    #[inline(always)]
    unsafe fn scales_and_mins(p: *const u8) -> (u64, u64) {
        let word =
            |i: usize| u32::from_le_bytes(std::ptr::read_unaligned(p.add(4 * i) as *const [u8; 4]));
        let (a, b, c) = (word(0), word(1), word(2));
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const LOW2: u32 = 0x0303_0303;
        let scales_lo = a & LOW6;
        let mins_lo = b & LOW6;
        let scales_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
        let mins_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
        (
            scales_lo as u64 | (scales_hi as u64) << 32,
            mins_lo as u64 | (mins_hi as u64) << 32,
        )
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
        let xs: [*const i16; R] =
            std::array::from_fn(|r| acts.sums.as_ptr().add((first + r) * k / 16));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// The scalar reference: candle's dequantized weights times the quantized activations,
    /// summed in f64.
    fn reference(dtype: GgmlDType, w: &QTensor, x: &[f32], m: usize, k: usize) -> Vec<f32> {
        let kind = Kind::of(dtype).unwrap();
        // SAFETY: the test runs only where AVX-512 is available.
        let acts = unsafe { quantize_acts(kind, x, m, k) };
        let wf: Vec<f32> = w
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = wf.len() / k;
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0f64;
                for p in 0..k {
                    let q = acts.qs[i * k + stored_at(kind, p)] as f64;
                    let scale = acts.scales[(i * k + p) / kind.block_len()] as f64;
                    sum += q * scale * wf[j * k + p] as f64;
                }
                y[i * n + j] = sum as f32;
            }
        }
        y
    }

    #[test]
    fn kernels_match_the_scalar_reference() {
        if !avx512_available() {
            eprintln!("NOTICE: no AVX-512 VNNI on this CPU; owrun uses candle's kernels here");
            return;
        }
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            // 1 to 7 rows: the row dot products; 16 and 35: the prefill tiles (a partial group
            // of 16 rows, a partial tile of 8 weight rows).
            for (m, k, n) in [
                (1, 256, 9),
                (4, 512, 7),
                (7, 768, 70),
                (16, 256, 8),
                (35, 512, 13),
            ] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let x: Vec<f32> = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let want = reference(dtype, &q, &x, m, k);
                let got = matmul(dtype, &q.data().unwrap(), n, k, &x, m);
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                let err = super::super::max_difference(&got, &want);
                assert!(
                    err <= 1e-5 * scale.max(1.0) * (k as f32).sqrt(),
                    "{dtype:?} {m}x{k}x{n}: {err} of {scale}"
                );
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn best(reps: usize, mut f: impl FnMut()) -> f64 {
        (0..reps)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    /// `cargo test --release time_kernels -- --ignored --nocapture`: the best of several runs
    /// of owrun's kernels and candle's QTensor op (its repacked copy) on one TinyLlama matrix.
    #[test]
    #[ignore]
    fn time_kernels() {
        let (n, k) = (5632, 2048);
        let only = std::env::var("OWRUN_TIME_ONLY").ok();
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8_0] {
            if only.as_ref().is_some_and(|o| o != &format!("{dtype:?}")) {
                continue;
            }
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let data = q.data().unwrap();
            for m in [1usize, 16, 128] {
                let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let reps = if m == 1 { 200 } else { 20 };
                let ours = best(reps, || {
                    std::hint::black_box(matmul(dtype, &data, n, k, &x, m));
                });
                let theirs = best(reps, || {
                    std::hint::black_box(xt.apply_op1_no_bwd(&q).unwrap());
                });
                eprintln!(
                    "{dtype:?} m={m}: ours {:.3} ms ({:.0} GMAC/s), candle {:.3} ms",
                    ours * 1e3,
                    (m * n * k) as f64 / ours / 1e9,
                    theirs * 1e3
                );
            }
        }
    }
}
