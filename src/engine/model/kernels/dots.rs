//! Portable f32 dot-product loops, written so the compiler vectorises them for whatever target it
//! compiles them for (the baseline, or AVX2 + FMA through `x86::avx2::dots`).

/// Dot products of every row of `x` (rows of `k`) with `w`, four rows at a time so each loaded
/// weight feeds four multiply-adds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn dots_fma(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
    const LANES: usize = 8;
    let m = out.len();
    let chunks = k / LANES;
    let mut i = 0;
    while i + 4 <= m {
        let rows: [&[f32]; 4] = std::array::from_fn(|r| &x[(i + r) * k..(i + r + 1) * k]);
        let mut acc = [[0f32; LANES]; 4];
        for c in 0..chunks {
            let wc = &w[c * LANES..(c + 1) * LANES];
            for (r, row) in rows.iter().enumerate() {
                let xc = &row[c * LANES..(c + 1) * LANES];
                for l in 0..LANES {
                    acc[r][l] = xc[l].mul_add(wc[l], acc[r][l]);
                }
            }
        }
        for (r, row) in rows.iter().enumerate() {
            let mut sum: f32 = acc[r].iter().sum();
            for p in chunks * LANES..k {
                sum += row[p] * w[p];
            }
            out[i + r] = sum;
        }
        i += 4;
    }
    for (r, o) in out.iter_mut().enumerate().skip(i) {
        *o = dot_fma(&x[r * k..(r + 1) * k], w);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = a.len() / LANES;
    for c in 0..chunks {
        let (pa, pb) = (
            &a[c * LANES..(c + 1) * LANES],
            &b[c * LANES..(c + 1) * LANES],
        );
        for l in 0..LANES {
            acc[l] = pa[l].mul_add(pb[l], acc[l]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * LANES..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// The portable path: plain multiply and add (vectorised with the baseline SIMD of any target).
pub fn dots(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(&x[r * k..(r + 1) * k], w);
    }
}

/// Dot product with 16 independent accumulators, so the compiler emits vector instructions.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = a.len() / LANES;
    for c in 0..chunks {
        let (pa, pb) = (
            &a[c * LANES..(c + 1) * LANES],
            &b[c * LANES..(c + 1) * LANES],
        );
        for l in 0..LANES {
            acc[l] += pa[l] * pb[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * LANES..a.len() {
        sum += a[i] * b[i];
    }
    sum
}
