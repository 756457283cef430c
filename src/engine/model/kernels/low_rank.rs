//! A LoRA adapter's term added to a layer's output in place: y += s · B·(A·x) for each row, where
//! A is rank × in and B is held transposed (rank × out). The rank is small (4 to 64): each row
//! takes `rank` dot products over its input, then `rank` scaled additions of B's rows into its
//! output, so a row costs (in + out) · rank multiply-adds and no temporary beyond `rank` floats.

use rayon::prelude::*;

use super::dots::dot;

/// `y` (rows × out) += scales[row] · B·(A·x[row]) for every row of `x` (rows × in).
pub fn add(y: &mut [f32], x: &[f32], a: &[f32], bt: &[f32], rank: usize, scales: &[f32]) {
    let rows = scales.len();
    if rows == 0 || rank == 0 {
        return;
    }
    let (inputs, outputs) = (x.len() / rows, y.len() / rows);
    let row = |(y, (x, &s)): (&mut [f32], (&[f32], &f32))| {
        if s == 0.0 {
            return;
        }
        let mut low = [0f32; 64];
        let mut wide = Vec::new();
        let low: &mut [f32] = if rank <= low.len() {
            &mut low[..rank]
        } else {
            wide.resize(rank, 0.0);
            &mut wide
        };
        for (r, l) in low.iter_mut().enumerate() {
            *l = s * dot(x, &a[r * inputs..(r + 1) * inputs]);
        }
        for (r, &l) in low.iter().enumerate() {
            let b = &bt[r * outputs..(r + 1) * outputs];
            for (o, &w) in y.iter_mut().zip(b) {
                *o += l * w;
            }
        }
    };
    let work = y.chunks_mut(outputs).zip(x.chunks(inputs).zip(scales));
    if rows == 1 {
        work.for_each(row);
    } else {
        y.par_chunks_mut(outputs)
            .zip(x.par_chunks(inputs).zip(scales.par_iter()))
            .for_each(row);
    }
}

#[cfg(test)]
mod tests {
    /// Against the sum written out term by term.
    #[test]
    fn the_low_rank_term_is_added_row_by_row() {
        let (rows, inputs, outputs, rank) = (5, 37, 23, 3);
        let value = |i: usize| ((i * 7919) % 97) as f32 / 97.0 - 0.5;
        let x: Vec<f32> = (0..rows * inputs).map(value).collect();
        let a: Vec<f32> = (0..rank * inputs).map(|i| value(i + 11)).collect();
        let bt: Vec<f32> = (0..rank * outputs).map(|i| value(i + 29)).collect();
        let base: Vec<f32> = (0..rows * outputs).map(|i| value(i + 3)).collect();
        let scales = [1.0, 0.0, -2.0, 0.5, 3.0];
        let mut y = base.clone();
        super::add(&mut y, &x, &a, &bt, rank, &scales);
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
