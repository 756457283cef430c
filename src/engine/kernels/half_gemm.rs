//! Prefill with 16-bit weights on AVX-512: f32 activations (m × k) times the transpose of f16 or
//! bf16 weights (n × k), converting the weights inside the loop.
//!
//! Why by hand: candle 0.11 has no f16 × f32 or bf16 matmul, and its f32 GEMM (the gemm crate
//! without its nightly-only AVX-512 kernels) reached ~70 GFLOP/s on two cores where llama.cpp's
//! reaches ~300, after a widening copy of every weight. This is the dot-product tiling that
//! llama.cpp's tinyBLAS uses: a tile of 4 activation rows × 6 weight rows keeps 24 vector
//! accumulators in registers, so each loaded vector feeds 4 or 6 multiply-adds.

use rayon::prelude::*;

use super::{Half16, SharedOut};

/// Whether this CPU runs the kernel (AVX-512 F, as the standard library detects it: CPUID and
/// the OS's support for the 512-bit registers), for rows of `k` values.
pub fn available(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        k.is_multiple_of(16)
            && super::avx512_enabled()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// Activation rows and weight rows of one register tile.
const RM: usize = 4;
const RN: usize = 6;
/// Weight tiles per task: the task's weight rows stay in L2 while every activation block
/// passes over them.
const TILES_PER_TASK: usize = 8;

/// `x` (m × k) times `w`ᵀ (`w` n × k): m × n, row-major. Call only where `available(k)`.
pub fn matmul<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize) -> Vec<f32> {
    assert!(available(k), "AVX-512 and rows of a multiple of 16");
    assert_eq!(x.len(), m * k, "activations are m × k");
    assert_eq!(w.len(), n * k, "weights are n × k");
    #[cfg(target_arch = "x86_64")]
    let x_bf16 = bf16_activations::<T>(x, k);
    let mut y = vec![0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    let rows_per_task = RN * TILES_PER_TASK;
    (0..n.div_ceil(rows_per_task))
        .into_par_iter()
        .for_each(|t| {
            let out = &out;
            let last = ((t + 1) * rows_per_task).min(n);
            for i in (0..m).step_by(RM) {
                let rm = RM.min(m - i);
                for j in (t * rows_per_task..last).step_by(RN) {
                    let rn = RN.min(last - j);
                    let mut tile = [[0f32; RN]; RM];
                    // SAFETY: AVX-512 F was detected (`available`); rows i..i + rm of x and
                    // j..j + rn of w exist and hold k values, k a multiple of 16.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let wj = w.as_ptr().add(j * k) as *const u16;
                        match &x_bf16 {
                            Some(xb) => avx512::tile_bf16_dot(
                                xb.as_ptr().add(i * k),
                                wj,
                                k,
                                rm,
                                rn,
                                &mut tile,
                            ),
                            None => avx512::tile(
                                T::LOAD16,
                                x.as_ptr().add(i * k),
                                wj,
                                k,
                                rm,
                                rn,
                                &mut tile,
                            ),
                        }
                    };
                    for (a, row) in tile.iter().take(rm).enumerate() {
                        for (b, v) in row.iter().take(rn).enumerate() {
                            // SAFETY: columns j..j + rn belong to this task alone; (i + a, j + b)
                            // is inside the m × n output.
                            unsafe { *out.0.add((i + a) * n + j + b) = *v };
                        }
                    }
                }
            }
        });
    y
}

/// Rows of activations up to which `matvec` runs instead of the tiles.
pub const MATVEC_MAX_ROWS: usize = 4;
/// Weight rows per task in `matvec`: one contiguous stream per task.
const MATVEC_ROWS_PER_TASK: usize = 64;

/// Decoding (m ≤ 4 rows): each weight row is streamed once and multiplied by every activation
/// row, 16 (f16) or 32 (bf16 pairs, where the CPU has AVX-512 BF16) values per instruction.
/// One weight row at a time keeps one memory stream per thread (the 6-row tiles were slower
/// here: 14 against 15.5 tokens/s). Call only where `available(k)`.
pub fn matvec<T: Half16>(x: &[f32], m: usize, k: usize, w: &[T], n: usize) -> Vec<f32> {
    assert!(
        available(k) && m <= MATVEC_MAX_ROWS,
        "AVX-512, k a multiple of 16, m ≤ 4"
    );
    assert_eq!(x.len(), m * k, "activations are m × k");
    assert_eq!(w.len(), n * k, "weights are n × k");
    #[cfg(target_arch = "x86_64")]
    let x_bf16 = bf16_activations::<T>(x, k);
    let mut y = vec![0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(MATVEC_ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|t| {
            let out = &out;
            for j in t * MATVEC_ROWS_PER_TASK..((t + 1) * MATVEC_ROWS_PER_TASK).min(n) {
                let mut dots = [0f32; MATVEC_MAX_ROWS];
                // SAFETY: AVX-512 F/VL (and BF16 where x_bf16 is set) were detected; row j of w
                // and the m rows of x hold k values.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let wj = w.as_ptr().add(j * k) as *const u16;
                    match (&x_bf16, T::LOAD16) {
                        (Some(xb), _) => avx512::row_bf16_dot(xb, m, k, wj, &mut dots),
                        (None, Load16::F16) => avx512::row_f16(x, m, k, wj, &mut dots),
                        (None, Load16::Bf16) => avx512::row_bf16(x, m, k, wj, &mut dots),
                    }
                };
                for (i, d) in dots.iter().take(m).enumerate() {
                    // SAFETY: row j belongs to this task alone; (i, j) is inside the output.
                    unsafe { *out.0.add(i * n + j) = *d };
                }
            }
        });
    y
}

/// bf16 weights on a CPU with AVX-512 BF16 multiply bf16 pairs: the activations are rounded to
/// bf16 once per matmul (as llama.cpp does for bf16 models), and each instruction does 32
/// products instead of 16. None: the f32 activations are used as they are.
#[cfg(target_arch = "x86_64")]
fn bf16_activations<T: Half16>(x: &[f32], k: usize) -> Option<Vec<u16>> {
    match T::LOAD16 {
        // SAFETY: AVX-512 BF16 was detected.
        Load16::Bf16 if k.is_multiple_of(32) && bf16_dot_available() => {
            Some(unsafe { avx512::to_bf16(x) })
        }
        _ => None,
    }
}

/// AVX-512 BF16's pair dot products (`vdpbf16ps`), as the standard library detects them.
#[cfg(target_arch = "x86_64")]
fn bf16_dot_available() -> bool {
    is_x86_feature_detected!("avx512bf16")
}

/// Whether bf16 weights with rows of `k` values are multiplied by activations rounded to bf16
/// on this CPU (the pair dot products), for tests that build a reference.
#[cfg(test)]
pub fn rounds_bf16_activations(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        available(k) && k.is_multiple_of(32) && bf16_dot_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// How 16 weights are read: as f16 (converted by the CPU) or as bf16 (the top half of an f32).
#[derive(Clone, Copy)]
pub enum Load16 {
    F16,
    Bf16,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Load16, RM, RN};
    use std::arch::x86_64::*;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn tiles_match_the_scalar_reference() {
        if !available(16) {
            eprintln!(
                "NOTICE: no AVX-512 on this CPU; 16-bit prefill widens and uses candle's GEMM"
            );
            return;
        }
        // Edges in both directions: 9 = 2 tiles + 1 row, 61 = 1 task + 13 rows.
        // k a multiple of 32: bf16 weights take the pair dot products where the CPU has them.
        for (m, k, n) in [(1, 16, 1), (9, 80, 61), (4, 256, 6), (9, 96, 61)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729) % 19) as f32 / 9.0 - 1.0)
                .collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            // That path rounds the activations to bf16 first: so does its reference.
            let rounds_x = rounds_bf16_activations(k);
            let reference = |wf: &dyn Fn(usize) -> f32, round: bool| -> Vec<f32> {
                let xf = |i: usize| match round {
                    true => bf16::from_f32(x[i]).to_f32(),
                    false => x[i],
                };
                let mut y = vec![0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        y[i * n + j] = (0..k)
                            .map(|p| xf(i * k + p) as f64 * wf(j * k + p) as f64)
                            .sum::<f64>() as f32;
                    }
                }
                y
            };
            let cases = [
                (
                    matmul(&x, m, k, &wh, n),
                    reference(&|i| wh[i].to_f32(), false),
                ),
                (
                    matmul(&x, m, k, &wb, n),
                    reference(&|i| wb[i].to_f32(), rounds_x),
                ),
            ];
            for (got, want) in cases {
                let err = super::super::max_difference(&got, &want);
                assert!(err < 1e-4 * k as f32, "{m}x{k}x{n}: max error {err}");
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use half::{bf16, f16};

    /// `cargo test --release time_half_gemm -- --ignored --nocapture`: GFLOP/s of the kernel.
    #[test]
    #[ignore]
    fn time_half_gemm() {
        // TinyLlama's gate/up projection, then its down projection (long rows).
        for (m, k, n) in [(128, 2048, 5632), (128, 5632, 2048)] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 13.0).collect();
            let wh: Vec<f16> = (0..n * k)
                .map(|i| f16::from_f32((i % 7) as f32 / 7.0))
                .collect();
            let wb: Vec<bf16> = wh.iter().map(|v| bf16::from_f32(v.to_f32())).collect();
            for _ in 0..3 {
                let t = std::time::Instant::now();
                std::hint::black_box(matmul(&x, m, k, &wh, n));
                let f16s = t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                std::hint::black_box(matmul(&x, m, k, &wb, n));
                let bf16s = t.elapsed().as_secs_f64();
                let flop = 2.0 * (m * k * n) as f64;
                eprintln!(
                    "{m}x{k}x{n}: f16 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s",
                    flop / f16s / 1e9,
                    flop / bf16s / 1e9
                );
            }
        }
    }
}
