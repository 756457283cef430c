//! Activations prepared for the row kernels of every ISA (`vecdot` and its per-ISA versions):
//! int8 values with one f32 scale per weight block, as llama.cpp quantizes them. The AVX-512
//! block kernels read their own layouts (`block_acts`).

use super::blocks::{block_scale, to_int8};

/// Activations for the vec-dot kernels: each of `m` rows of `k` values as int8 in their natural
/// order, one f32 scale per block of `block` values (the weight type's block: 32 or 256), and
/// the sum of every 16 int8 values (where a weight type has minimums or offsets, they multiply
/// these sums rather than every value).
pub struct RowActs {
    pub k: usize,
    pub block: usize,
    pub qs: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i16>,
    /// Per block: its scale times the sum of its int8 values (what a block's offset or minimum
    /// multiplies), ready in f32.
    pub scaled_sums: Vec<f32>,
}

/// One row of [`RowActs`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub scales: &'a [f32],
    pub sums: &'a [i16],
    pub scaled_sums: &'a [f32],
}

impl RowActs {
    pub fn quantize(x: &[f32], m: usize, k: usize, block: usize) -> RowActs {
        assert!(k.is_multiple_of(block) && block.is_multiple_of(16));
        let mut acts = RowActs {
            k,
            block,
            qs: vec![0; m * k],
            scales: vec![0.0; m * k / block],
            sums: vec![0; m * k / 16],
            scaled_sums: vec![0.0; m * k / block],
        };
        for (b, values) in x[..m * k].chunks_exact(block).enumerate() {
            let (scale, inverse) = block_scale(values);
            acts.scales[b] = scale;
            let qs = &mut acts.qs[b * block..(b + 1) * block];
            for (q, v) in qs.iter_mut().zip(values) {
                *q = to_int8(*v, inverse);
            }
            let mut total = 0i32;
            for (s, sixteen) in qs.chunks_exact(16).enumerate() {
                let sum: i16 = sixteen.iter().map(|&q| q as i16).sum();
                acts.sums[b * block / 16 + s] = sum;
                total += sum as i32;
            }
            acts.scaled_sums[b] = scale * total as f32;
        }
        acts
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let k = self.k;
        ActRow {
            qs: &self.qs[i * k..(i + 1) * k],
            scales: &self.scales[i * k / self.block..(i + 1) * k / self.block],
            sums: &self.sums[i * k / 16..(i + 1) * k / 16],
            scaled_sums: &self.scaled_sums[i * k / self.block..(i + 1) * k / self.block],
        }
    }
}
