//! Quantized weights × f32 activations, for the GGML block types that quantized checkpoints
//! mostly hold: Q8_0, and Q4_K with Q6_K (the Q4_K_M mix), on CPUs with AVX-512 VNNI.
//!
//! Why by hand: candle 0.11 multiplies these blocks 256 bits at a time at best (its AVX2 code), so
//! on a two-core AVX-512 machine decoding a Q4_K_M model is bound by arithmetic, not by memory, and
//! its faster tiled kernels keep a second, repacked copy of every weight. These kernels read the
//! blocks as stored (one copy), 512 bits at a time: `quant_rows` for decoding, `quant_tiles` for
//! prefill. Other CPUs keep candle's kernels (AVX2, NEON or portable), which `supports` says.
//! The tests check both against a scalar reference built from candle's dequantization.

use candle_core::quantized::GgmlDType;

use super::blocks::BlockType;
use super::{cpu, quant_rows, quant_tiles};

/// Whether `matmul` runs `dtype` with rows of `k` values on this CPU.
pub fn supports(dtype: GgmlDType, k: usize) -> bool {
    let Some(kind) = BlockType::of(dtype) else {
        return false;
    };
    k.is_multiple_of(kind.block_len().max(64)) && cpu::features().avx512_vnni
}

/// Whether owrun's kernels (rather than candle's) multiply Q8_0, Q4_K and Q6_K on this CPU.
pub fn own_kernels_available() -> bool {
    cpu::features().avx512_vnni
}

/// `x` (m × k, row-major) times the transpose of the quantized matrix `w` (n rows of k values
/// in `dtype`'s blocks). Returns m × n, row-major. Call only where `supports(dtype, k)`.
pub fn matmul(dtype: GgmlDType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let kind = BlockType::of(dtype).expect("a supported block type");
    assert!(supports(dtype, k), "{dtype:?} rows of {k} on this CPU");
    assert_eq!(x.len(), m * k, "activations are m × k");
    let row_bytes = k / kind.block_len() * kind.block_bytes();
    assert_eq!(w.len(), n * row_bytes, "weights are n rows of k");
    if m >= quant_tiles::MIN_ROWS {
        quant_tiles::matmul(kind, w, n, k, x, m)
    } else {
        quant_rows::matmul(kind, w, n, k, x, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::kernels::acts::{quantize_acts, stored_at};
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// The scalar reference: candle's dequantized weights times the quantized activations,
    /// summed in f64.
    fn reference(dtype: GgmlDType, w: &QTensor, x: &[f32], m: usize, k: usize) -> Vec<f32> {
        let kind = BlockType::of(dtype).unwrap();
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
        if !cpu::features().avx512_vnni {
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
