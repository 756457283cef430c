//! The portable kernels: one weight row (whole blocks of any type) against rows of int8
//! activations ([`RowActs`]), in plain Rust. They run on every CPU, and state what each ISA's
//! faster code computes: per block, an integer dot product of the weights' small integers with
//! the activations' int8 values, times the weight and activation scales; minimums and offsets
//! multiply the activations' 16-value sums. The IQ1–IQ3 types, whose values come from lookup
//! grids, are dequantized a block at a time and multiplied in f32.

use super::acts::{ActRow, RowActs};
use super::blocks::{iq4_value, q3k_scales, q4k_scales_and_mins};
use super::dequant::{self, f16_at, q6k_value};
use super::SharedOut;
use crate::engine::format::ggml::GgmlType;

/// Dot product of one weight row of `ty` with one activation row.
pub fn row_dot(ty: GgmlType, w: &[u8], x: ActRow) -> f32 {
    let size = ty.block_bytes();
    let block = ty.block_len();
    let blocks = w.chunks_exact(size).enumerate();
    let f: fn(&[u8], &[i8], f32, &[i16]) -> f32 = match ty {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::IQ4NL => iq4nl,
        GgmlType::Q2K => q2k,
        GgmlType::Q3K => q3k,
        GgmlType::Q4K => q4k,
        GgmlType::Q5K => q5k,
        GgmlType::Q6K => q6k,
        GgmlType::IQ4XS => iq4xs,
        other => return dequantized_dot(other, w, x),
    };
    let mut sum = 0f32;
    for (b, wb) in blocks {
        let qs = &x.qs[b * block..(b + 1) * block];
        let sums = &x.sums[b * block / 16..(b + 1) * block / 16];
        sum += f(wb, qs, x.scales[b], sums);
    }
    sum
}

/// Σ a[i]·b[i] over int8 and small integers.
#[inline(always)]
fn idot(w: impl Iterator<Item = i32>, x: &[i8]) -> i32 {
    w.zip(x).map(|(a, &b)| a * b as i32).sum()
}

/// The 32 nibbles of a Q4_0-style block: low nibbles are values 0..16, high ones 16..32.
#[inline(always)]
fn nibbles(qs: &[u8]) -> impl Iterator<Item = i32> + '_ {
    (0..32).map(|i| {
        if i < 16 {
            (qs[i] & 0x0F) as i32
        } else {
            (qs[i - 16] >> 4) as i32
        }
    })
}

fn sum32(sums: &[i16]) -> i32 {
    sums[0] as i32 + sums[1] as i32
}

fn q4_0(b: &[u8], x: &[i8], dx: f32, sums: &[i16]) -> f32 {
    let d = f16_at(b, 0);
    d * dx * (idot(nibbles(&b[2..18]), x) - 8 * sum32(sums)) as f32
}

fn q4_1(b: &[u8], x: &[i8], dx: f32, sums: &[i16]) -> f32 {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    d * dx * idot(nibbles(&b[4..20]), x) as f32 + m * dx * sum32(sums) as f32
}

fn fives(qh: u32, qs: &[u8]) -> impl Iterator<Item = i32> + '_ {
    nibbles(qs)
        .enumerate()
        .map(move |(i, n)| n | ((((qh >> i) & 1) as i32) << 4))
}

fn q5_0(b: &[u8], x: &[i8], dx: f32, sums: &[i16]) -> f32 {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    d * dx * (idot(fives(qh, &b[6..22]), x) - 16 * sum32(sums)) as f32
}

fn q5_1(b: &[u8], x: &[i8], dx: f32, sums: &[i16]) -> f32 {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    d * dx * idot(fives(qh, &b[8..24]), x) as f32 + m * dx * sum32(sums) as f32
}

fn q8_0(b: &[u8], x: &[i8], dx: f32, _: &[i16]) -> f32 {
    let d = f16_at(b, 0);
    d * dx * idot(b[2..34].iter().map(|&q| q as i8 as i32), x) as f32
}

fn iq4nl(b: &[u8], x: &[i8], dx: f32, _: &[i16]) -> f32 {
    let d = f16_at(b, 0);
    d * dx * idot(nibbles(&b[2..18]).map(|n| iq4_value(n as u8) as i32), x) as f32
}

/// 16 values of a Q2_K / Q3_K block's 2-bit quants: sub-block `s` of 16.
fn two_bits(qs: &[u8], s: usize) -> impl Iterator<Item = i32> + '_ {
    let (half, run, l0) = (s / 8, (s % 8) / 2, 16 * (s % 2));
    (l0..l0 + 16).map(move |l| ((qs[32 * half + l] >> (2 * run)) & 3) as i32)
}

fn q2k(b: &[u8], x: &[i8], dx: f32, sums: &[i16]) -> f32 {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let (mut isum, mut msum) = (0i32, 0i32);
    for s in 0..16 {
        let sc = scales[s];
        isum += (sc & 0x0F) as i32 * idot(two_bits(qs, s), &x[16 * s..16 * s + 16]);
        msum += (sc >> 4) as i32 * sums[s] as i32;
    }
    dx * (d * isum as f32 - dmin * msum as f32)
}

fn q3k(b: &[u8], x: &[i8], dx: f32, _: &[i16]) -> f32 {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3k_scales(b[96..108].try_into().expect("12 bytes"));
    let d = f16_at(b, 108);
    let mut isum = 0i32;
    for (s, &sc) in scales.iter().enumerate() {
        let high = |i: usize| (hmask[i % 32] >> (i / 32)) & 1;
        let q = two_bits(qs, s)
            .enumerate()
            .map(|(j, q)| q - if high(16 * s + j) == 0 { 4 } else { 0 });
        isum += sc as i32 * idot(q, &x[16 * s..16 * s + 16]);
    }
    d * dx * isum as f32
}

/// The 32 values of run `g` of a Q4_K / Q5_K block's nibbles.
fn k_nibbles(qs: &[u8], g: usize) -> impl Iterator<Item = i32> + '_ {
    let (pair, shift) = (g / 2, 4 * (g % 2));
    qs[32 * pair..32 * pair + 32]
        .iter()
        .map(move |&q| ((q >> shift) & 0x0F) as i32)
}

fn q4k(b: &[u8], x: &[i8], dx: f32, sums: &[i16]) -> f32 {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, m) = q4k_scales_and_mins(b[4..16].try_into().expect("12 bytes"));
    let (mut isum, mut msum) = (0i32, 0i32);
    for g in 0..8 {
        isum += sc[g] as i32 * idot(k_nibbles(&b[16..144], g), &x[32 * g..32 * g + 32]);
        msum += m[g] as i32 * sum32(&sums[2 * g..]);
    }
    dx * (d * isum as f32 - dmin * msum as f32)
}

fn q5k(b: &[u8], x: &[i8], dx: f32, sums: &[i16]) -> f32 {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, m) = q4k_scales_and_mins(b[4..16].try_into().expect("12 bytes"));
    let (qh, qs) = (&b[16..48], &b[48..176]);
    let (mut isum, mut msum) = (0i32, 0i32);
    for g in 0..8 {
        let q = k_nibbles(qs, g)
            .enumerate()
            .map(|(l, n)| n | ((((qh[l] >> g) & 1) as i32) << 4));
        isum += sc[g] as i32 * idot(q, &x[32 * g..32 * g + 32]);
        msum += m[g] as i32 * sum32(&sums[2 * g..]);
    }
    dx * (d * isum as f32 - dmin * msum as f32)
}

fn q6k(b: &[u8], x: &[i8], dx: f32, _: &[i16]) -> f32 {
    let d = f16_at(b, 208);
    let mut isum = 0i32;
    for s in 0..16 {
        let sc = b[192 + s] as i8 as i32;
        isum += sc * idot((16 * s..16 * s + 16).map(|i| q6k_value(b, i)), &x[16 * s..]);
    }
    d * dx * isum as f32
}

fn iq4xs(b: &[u8], x: &[i8], dx: f32, _: &[i16]) -> f32 {
    let (d, scales_h) = (f16_at(b, 0), u16::from_le_bytes([b[2], b[3]]));
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    let mut isum = 0i32;
    for g in 0..8 {
        let ls = ((scales_l[g / 2] >> (4 * (g % 2))) & 0x0F) as i32
            | (((scales_h >> (2 * g)) & 3) as i32) << 4;
        let q = nibbles(&qs[16 * g..16 * g + 16]).map(|n| iq4_value(n as u8) as i32);
        isum += (ls - 32) * idot(q, &x[32 * g..32 * g + 32]);
    }
    d * dx * isum as f32
}

/// The grid types: each block dequantized, then multiplied in f32 by its activations.
fn dequantized_dot(ty: GgmlType, w: &[u8], x: ActRow) -> f32 {
    let (block, size) = (ty.block_len(), ty.block_bytes());
    let mut values = vec![0f32; block];
    let mut sum = 0f32;
    for (b, wb) in w.chunks_exact(size).enumerate() {
        dequant::dequantize(ty, wb, &mut values);
        let qs = &x.qs[b * block..(b + 1) * block];
        let dot: f32 = values.iter().zip(qs).map(|(w, &q)| w * q as f32).sum();
        sum += dot * x.scales[b];
    }
    sum
}

/// Dot products of one weight row (whole blocks of a type) with up to [`ROWS`] activation rows:
/// `out[r]` for `x[r]`. The portable one is [`rows`]; each ISA has its own.
///
/// # Safety
/// Each ISA's needs its instructions; the caller checks the CPU has them.
pub type RowsKernel = unsafe fn(GgmlType, &[u8], &[ActRow], &mut [f32]);

/// Activation rows one pass over a weight row serves (its unpacked blocks stay in registers).
pub const ROWS: usize = 4;

/// The portable [`RowsKernel`].
pub fn rows(ty: GgmlType, w: &[u8], x: &[ActRow], out: &mut [f32]) {
    for (o, xr) in out.iter_mut().zip(x) {
        *o = row_dot(ty, w, *xr);
    }
}

/// Weight rows per task: enough to amortise scheduling, few enough to balance the cores, and
/// (for prefill) few enough that they stay in cache while every group of activation rows
/// passes over them.
fn rows_per_task(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (n / (threads * 8)).clamp(4, 32)
}

/// `x` (m × k) times the transpose of `w` (n rows of k values in `ty`'s blocks) through
/// `kernel`, on the pool: m × n, row-major.
///
/// # Safety
/// The CPU runs `kernel`, and `kernel` multiplies `ty`.
pub unsafe fn matmul(
    kernel: RowsKernel,
    ty: GgmlType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    use rayon::prelude::*;
    let acts = RowActs::quantize(x, m, k, ty.block_len());
    let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
    let row_bytes = ty.row_bytes(k).expect("rows of whole blocks");
    let mut y = vec![0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    let per_task = rows_per_task(n);
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let out = &out;
        let columns = t * per_task..((t + 1) * per_task).min(n);
        let mut dots = [0f32; ROWS];
        for (g, group) in rows.chunks(ROWS).enumerate() {
            for j in columns.clone() {
                let wj = &w[j * row_bytes..(j + 1) * row_bytes];
                // SAFETY: the caller checked the CPU runs `kernel` for `ty`; every activation
                // row holds k values, `wj` k values of blocks.
                unsafe { kernel(ty, wj, group, &mut dots[..group.len()]) };
                for (r, d) in dots.iter().take(group.len()).enumerate() {
                    // SAFETY: column j belongs to this task alone; (row, j) is inside m × n.
                    unsafe { *out.0.add((g * ROWS + r) * n + j) = *d };
                }
            }
        }
    });
    y
}
