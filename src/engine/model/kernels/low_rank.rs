//! A LoRA adapter's term added to a layer's output in place: y += s · B·(A·x) for each row, where
//! A is rank × in and B is held transposed (rank × out). The rank is small (4 to 64): each row
//! takes `rank` dot products over its input, then `rank` scaled additions of B's rows into its
//! output, so a row costs (in + out) · rank multiply-adds and no temporary beyond `rank` floats.

use rayon::prelude::*;

/// `y` (rows × out) += scales[row] · B·(A·x[row]) for every row of `x` (rows × in).
pub fn add(y: &mut [f32], x: &[f32], a: &[f32], bt: &[f32], rank: usize, scales: &[f32]) {
    let rows = scales.len();
    if rows == 0 || rank == 0 {
        return;
    }
    let (inputs, outputs) = (x.len() / rows, y.len() / rows);
    #[cfg(target_arch = "x86_64")]
    let fma = super::cpu::features().avx2_fma;
    let one = |(y, (x, &s)): (&mut [f32], (&[f32], &f32))| {
        if s == 0.0 {
            return;
        }
        let factors = Factors { a, bt, rank };
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { super::x86::avx2::low_rank_row(y, x, factors, s) };
        }
        row(y, x, factors, s, super::dots::dot, |acc, l, w| acc + l * w);
    };
    let threads = rayon::current_num_threads();
    if rows == 1 && threads > 1 {
        // One row (a decode step): the threads share its dot products, then its columns, so
        // the adapter's matrices are read on every core as the base's are.
        let s = scales[0];
        if s == 0.0 {
            return;
        }
        let mut low = vec![0f32; rank];
        low.par_iter_mut().enumerate().for_each(|(r, l)| {
            let a = &a[r * inputs..(r + 1) * inputs];
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU has AVX2 and FMA.
                *l = s * unsafe { super::x86::avx2::low_rank_dot(x, a) };
                return;
            }
            *l = s * super::dots::dot(x, a);
        });
        let columns = outputs.div_ceil(threads).max(64);
        y.par_chunks_mut(columns).enumerate().for_each(|(c, y)| {
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe {
                    super::x86::avx2::low_rank_spread(y, c * columns, outputs, &low, bt)
                };
            }
            spread(y, c * columns, outputs, &low, bt, |acc, l, w| acc + l * w);
        });
        return;
    }
    let work = y.chunks_mut(outputs).zip(x.chunks(inputs).zip(scales));
    if rows == 1 {
        work.for_each(one);
    } else {
        y.par_chunks_mut(outputs)
            .zip(x.par_chunks(inputs).zip(scales.par_iter()))
            .for_each(one);
    }
}

/// An adapter's matrices for one layer: A (rank × in) and Bᵀ (rank × out).
#[derive(Clone, Copy)]
pub struct Factors<'f> {
    pub a: &'f [f32],
    pub bt: &'f [f32],
    pub rank: usize,
}

/// One row: `rank` dot products over the input, then `rank` scaled additions of B's rows into
/// the output; `dot` and `madd` are the path's own (fused multiply-add where the CPU has it).
#[inline(always)]
pub fn row(
    y: &mut [f32],
    x: &[f32],
    f: Factors,
    s: f32,
    dot: impl Fn(&[f32], &[f32]) -> f32,
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    let Factors { a, bt, rank } = f;
    let (inputs, outputs) = (x.len(), y.len());
    let mut small = [0f32; 64];
    let mut wide = Vec::new();
    let low: &mut [f32] = if rank <= small.len() {
        &mut small[..rank]
    } else {
        wide.resize(rank, 0.0);
        &mut wide
    };
    for (r, l) in low.iter_mut().enumerate() {
        *l = s * dot(x, &a[r * inputs..(r + 1) * inputs]);
    }
    spread(y, 0, outputs, low, bt, madd);
}

/// Columns `first..first + y.len()` of a row's output += Σ_r low[r] · Bᵀ[r] (rows of `outputs`).
#[inline(always)]
pub fn spread(
    y: &mut [f32],
    first: usize,
    outputs: usize,
    low: &[f32],
    bt: &[f32],
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    for (r, &l) in low.iter().enumerate() {
        let b = &bt[r * outputs + first..r * outputs + first + y.len()];
        for (o, &w) in y.iter_mut().zip(b) {
            *o = madd(*o, l, w);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Against the sum written out term by term.
    #[test]
    fn the_low_rank_term_is_added_row_by_row() {
        // Rows in parallel; and one row (a decode step), its columns shared by the threads.
        check(&[1.0, 0.0, -2.0, 0.5, 3.0], 37, 23, 3);
        check(&[0.7], 37, 300, 5);
        check(&[0.0], 37, 300, 5);
    }

    fn check(scales: &[f32], inputs: usize, outputs: usize, rank: usize) {
        let rows = scales.len();
        let value = |i: usize| ((i * 7919) % 97) as f32 / 97.0 - 0.5;
        let x: Vec<f32> = (0..rows * inputs).map(value).collect();
        let a: Vec<f32> = (0..rank * inputs).map(|i| value(i + 11)).collect();
        let bt: Vec<f32> = (0..rank * outputs).map(|i| value(i + 29)).collect();
        let base: Vec<f32> = (0..rows * outputs).map(|i| value(i + 3)).collect();
        let mut y = base.clone();
        super::add(&mut y, &x, &a, &bt, rank, scales);
        for i in 0..rows {
            for o in 0..outputs {
                let mut want = base[i * outputs + o] as f64;
                for r in 0..rank {
                    let ax: f64 = (0..inputs)
                        .map(|k| x[i * inputs + k] as f64 * a[r * inputs + k] as f64)
                        .sum();
                    want += scales[i] as f64 * ax * bt[r * outputs + o] as f64;
                }
                let got = y[i * outputs + o] as f64;
                assert!((got - want).abs() < 1e-4, "row {i} col {o}: {got} {want}");
            }
        }
    }
}
