//! A LoRA adapter's term added to a layer's output in place: y += s · B·(A·x) for each row, where
//! A is rank × in and B is held transposed (rank × out), both in the precision the adapter was
//! stored in (f32, f16 or bf16: a decode step reads them whole, so 16 bits halve its cost). The
//! rank is small (4 to 64): each row takes `rank` dot products over its input, then `rank`
//! scaled additions of Bᵀ's rows into its output, so a row costs (in + out) · rank
//! multiply-adds and no temporary beyond `rank` floats.

use half::{bf16, f16};
use rayon::prelude::*;

/// The types an adapter's matrices are held in, with the two inner loops of the term, each on
/// the widest path this CPU has (the portable loop elsewhere).
pub trait Element: Copy + Send + Sync + Into<f32> {
    /// x · a.
    fn dot(x: &[f32], a: &[Self]) -> f32;
    /// y += l · b.
    fn spread(y: &mut [f32], l: f32, b: &[Self]);

    /// `dot` on the portable path.
    fn dot_portable(x: &[f32], a: &[Self]) -> f32 {
        x.iter().zip(a).map(|(&x, &w)| x * w.into()).sum()
    }

    /// `spread` on the portable path.
    fn spread_portable(y: &mut [f32], l: f32, b: &[Self]) {
        y.iter_mut().zip(b).for_each(|(y, &w)| *y += l * w.into());
    }
}

impl Element for f32 {
    fn dot(x: &[f32], a: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if super::cpu::features().avx2_fma {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { super::x86::avx2::dot_f32(x, a) };
        }
        Self::dot_portable(x, a)
    }

    fn dot_portable(x: &[f32], a: &[f32]) -> f32 {
        super::dots::dot(x, a)
    }

    fn spread(y: &mut [f32], l: f32, b: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::cpu::features().avx2_fma {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { super::x86::avx2::spread_f32(y, l, b) };
        }
        Self::spread_portable(y, l, b)
    }
}

impl Element for f16 {
    fn dot(x: &[f32], a: &[f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if super::cpu::features().f16c {
            // SAFETY: the CPU has AVX2, FMA and F16C (f16c is only set beside them).
            return unsafe { super::x86::avx2::dot_f16(x, a) };
        }
        Self::dot_portable(x, a)
    }

    fn spread(y: &mut [f32], l: f32, b: &[f16]) {
        #[cfg(target_arch = "x86_64")]
        if super::cpu::features().f16c {
            // SAFETY: the CPU has AVX2, FMA and F16C.
            return unsafe { super::x86::avx2::spread_f16(y, l, b) };
        }
        Self::spread_portable(y, l, b)
    }
}

impl Element for bf16 {
    fn dot(x: &[f32], a: &[bf16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if super::cpu::features().avx2_fma {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { super::x86::avx2::dot_bf16(x, a) };
        }
        Self::dot_portable(x, a)
    }

    fn spread(y: &mut [f32], l: f32, b: &[bf16]) {
        #[cfg(target_arch = "x86_64")]
        if super::cpu::features().avx2_fma {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { super::x86::avx2::spread_bf16(y, l, b) };
        }
        Self::spread_portable(y, l, b)
    }
}

/// Values of Bᵀ from which a decode row's columns are shared by the threads: below, handing
/// them out costs more than reading them (SmolLM2-135M's largest, 16 × 1536, stays on one).
const SHARED_MIN: usize = 1 << 16;

/// `y` (rows × out) += scales[row] · B·(A·x[row]) for every row of `x` (rows × in), with A
/// rank × in and `bt` = Bᵀ, rank × out.
pub fn add<W: Element>(y: &mut [f32], x: &[f32], a: &[W], bt: &[W], rank: usize, scales: &[f32]) {
    let rows = scales.len();
    if rows == 0 || rank == 0 {
        return;
    }
    let (inputs, outputs) = (x.len() / rows, y.len() / rows);
    let a_row = |r: usize| &a[r * inputs..(r + 1) * inputs];
    let threads = rayon::current_num_threads();
    if rows == 1 && threads > 1 && rank * outputs >= SHARED_MIN {
        // One row (a decode step): its dot products on this thread (A is small, and a hand-off
        // to the pool costs about as much as reading it), then its columns shared by the
        // threads, so Bᵀ is read on every core as the base's matrices are.
        let s = scales[0];
        if s == 0.0 {
            return;
        }
        let low: Vec<f32> = (0..rank).map(|r| s * W::dot(x, a_row(r))).collect();
        let columns = outputs.div_ceil(threads).max(64);
        y.par_chunks_mut(columns).enumerate().for_each(|(c, y)| {
            let first = c * columns;
            for (r, &l) in low.iter().enumerate() {
                W::spread(
                    y,
                    l,
                    &bt[r * outputs + first..r * outputs + first + y.len()],
                );
            }
        });
        return;
    }
    let one = |(y, (x, &s)): (&mut [f32], (&[f32], &f32))| {
        if s == 0.0 {
            return;
        }
        for r in 0..rank {
            let l = s * W::dot(x, a_row(r));
            W::spread(y, l, &bt[r * outputs..(r + 1) * outputs]);
        }
    };
    if rows == 1 {
        one((y, (x, &scales[0])));
    } else {
        y.par_chunks_mut(outputs)
            .zip(x.par_chunks(inputs).zip(scales.par_iter()))
            .for_each(one);
    }
}

#[cfg(test)]
mod tests {
    use super::Element;
    use half::{bf16, f16};

    /// Each type's two loops, on the path this CPU takes and on the portable one, against sums
    /// in f64, at lengths with and without a tail.
    #[test]
    fn each_type_s_loops_agree_with_the_sums_on_every_path() {
        loops::<f32>();
        loops::<f16>();
        loops::<bf16>();
    }

    type Spread<W> = fn(&mut [f32], f32, &[W]);

    fn loops<W: FromF32>() {
        let value = |i: usize| ((i * 7919) % 97) as f32 / 97.0 - 0.5;
        for n in [1, 7, 8, 9, 31, 32, 33, 100] {
            let x: Vec<f32> = (0..n).map(value).collect();
            let w: Vec<W> = (0..n).map(|i| W::from(value(i + 5))).collect();
            let want: f64 = x
                .iter()
                .zip(&w)
                .map(|(&x, &w)| x as f64 * w.into() as f64)
                .sum();
            for (path, got) in [
                ("dispatched", W::dot(&x, &w)),
                ("portable", W::dot_portable(&x, &w)),
            ] {
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "{path} dot of {n}: {got} {want}"
                );
            }
            let spread: [Spread<W>; 2] = [W::spread, W::spread_portable];
            for (path, spread) in spread.into_iter().enumerate() {
                let mut y: Vec<f32> = (0..n).map(|i| value(i + 9)).collect();
                spread(&mut y, 0.75, &w);
                for (i, &y) in y.iter().enumerate() {
                    let want = value(i + 9) as f64 + 0.75 * w[i].into() as f64;
                    assert!(
                        (y as f64 - want).abs() < 1e-6,
                        "path {path}, spread of {n} at {i}"
                    );
                }
            }
        }
    }

    /// Against the sum written out term by term, for each element type.
    #[test]
    fn the_low_rank_term_is_added_row_by_row() {
        // Rows in parallel; and one row (a decode step), on one thread or (a large Bᵀ) its
        // columns shared by the threads.
        for (scales, inputs, outputs, rank) in [
            (&[1.0, 0.0, -2.0, 0.5, 3.0][..], 37, 23, 3),
            (&[0.7], 37, 300, 5),
            (&[0.7], 37, 4200, 16),
            (&[0.0], 37, 300, 5),
            (&[1.5], 64, 576, 16),
        ] {
            check::<f32>(scales, inputs, outputs, rank);
            check::<f16>(scales, inputs, outputs, rank);
            check::<bf16>(scales, inputs, outputs, rank);
        }
    }

    trait FromF32: Element {
        fn from(v: f32) -> Self;
    }
    impl FromF32 for f32 {
        fn from(v: f32) -> Self {
            v
        }
    }
    impl FromF32 for f16 {
        fn from(v: f32) -> Self {
            f16::from_f32(v)
        }
    }
    impl FromF32 for bf16 {
        fn from(v: f32) -> Self {
            bf16::from_f32(v)
        }
    }

    fn check<W: FromF32>(scales: &[f32], inputs: usize, outputs: usize, rank: usize) {
        let rows = scales.len();
        let value = |i: usize| ((i * 7919) % 97) as f32 / 97.0 - 0.5;
        let x: Vec<f32> = (0..rows * inputs).map(value).collect();
        let a: Vec<W> = (0..rank * inputs).map(|i| W::from(value(i + 11))).collect();
        let bt: Vec<W> = (0..rank * outputs)
            .map(|i| W::from(value(i + 29)))
            .collect();
        let base: Vec<f32> = (0..rows * outputs).map(|i| value(i + 3)).collect();
        let mut y = base.clone();
        super::add(&mut y, &x, &a, &bt, rank, scales);
        for i in 0..rows {
            for o in 0..outputs {
                let mut want = base[i * outputs + o] as f64;
                for r in 0..rank {
                    let ax: f64 = (0..inputs)
                        .map(|k| x[i * inputs + k] as f64 * a[r * inputs + k].into() as f64)
                        .sum();
                    want += scales[i] as f64 * ax * bt[r * outputs + o].into() as f64;
                }
                let got = y[i * outputs + o] as f64;
                assert!((got - want).abs() < 1e-4, "row {i} col {o}: {got} {want}");
            }
        }
    }
}
