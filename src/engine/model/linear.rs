//! Matrices as they are held (dense in their stored dtype, or quantized) behind one matmul that
//! picks the kernel: candle's for f32 and for everything on a GPU; on the CPU owrun's own
//! (`kernels`) for 16-bit weights and the block types they cover, candle's quantized kernels for
//! the others.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use half::{bf16, f16};

use super::kernels;

/// A weight matrix, rows × columns (out × in for a linear layer, vocab × hidden for embeddings).
#[derive(Clone)]
pub enum Matrix {
    Dense(Tensor),
    Quantized(QMatrix),
}

/// A matrix of GGML blocks, held as stored: one copy of the weights.
#[derive(Clone)]
pub struct QMatrix {
    pub blocks: Arc<QTensor>,
    /// Whether it may also go through candle's QTensor op, which keeps a second, repacked copy of
    /// the weights for its tiled kernels: faster (Q8_0 always, other types in prefill), twice the
    /// memory. A permission, decided at load by the memory available.
    pub may_repack: bool,
}

/// Rows of activations from which a matrix that may repack uses candle's tiled kernels (for
/// types other than Q8_0, which uses them always).
const REPACKED_MIN_ROWS: usize = 16;

impl Matrix {
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Quantized(q) => q.blocks.storage_size_in_bytes(),
        }
    }

    /// The rows `ids`, as activations of `dtype` (an embedding lookup).
    pub fn rows_of(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Matrix::Dense(t) => t.index_select(ids, 0)?.to_dtype(dtype)?,
            Matrix::Quantized(q) => q.blocks.embedding(ids)?.to_dtype(dtype)?,
        })
    }

    /// `x` (m × columns) times this matrix transposed: m × rows.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Quantized(q) => q.matmul_t(x),
            Matrix::Dense(w) => match (w.device(), w.dtype(), x.dtype()) {
                (Device::Cpu, DType::F16 | DType::BF16, DType::F32) => cpu_half(w, x),
                _ => Ok(x.matmul(&w.t()?)?),
            },
        }
    }
}

impl QMatrix {
    fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.blocks.as_ref();
        if !q.device().is_cpu() {
            return Ok(x.contiguous()?.apply_op1_no_bwd(q)?);
        }
        if kernels::quantized_supported(q.dtype(), x.dim(1)?) {
            return own_quantized(q, x);
        }
        // With the copy allowed: candle's repacked tiles for Q8_0 always (decode 27 against 15
        // tok/s on TinyLlama, 2 threads) and for prefill of the other types (Q4_K_M pp128 ~200
        // against 56 tok/s); K-quant decoding is faster without them (42.8 against 32.7 tok/s).
        let repacked =
            self.may_repack && (q.dtype() == GgmlDType::Q8_0 || x.dim(0)? >= REPACKED_MIN_ROWS);
        if repacked {
            Ok(x.contiguous()?.apply_op1_no_bwd(q)?)
        } else {
            cpu_quantized(q, x)
        }
    }
}

/// Rows of activations from which a 16-bit matmul widens the weights and runs one f32 GEMM.
const GEMM_MIN_ROWS: usize = 16;

/// A quantized matmul on the CPU through owrun's kernels.
fn own_quantized(q: &QTensor, x: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = q.shape().dims()[0];
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let y = kernels::quantized_matmul(q.dtype(), &q.data()?, n, k, &xs, m);
    Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
}

/// A quantized matmul on the CPU through candle's block dot products (`k_quants::matmul`),
/// without the repacked copy candle's QTensor op keeps of every matrix it multiplies: that
/// copy doubles the memory of a quantized model. Measured on TinyLlama Q4_K_M (2 threads):
/// decode 42.8 tok/s here against 32.7 through candle's op, peak memory 1.12x the weights
/// against 2.22x; prefill is slower (56 against ~200 tok/s at 128 tokens), the price of the
/// memory until owrun has tiled kernels of its own.
fn cpu_quantized(q: &QTensor, x: &Tensor) -> Result<Tensor> {
    use candle_core::quantized::k_quants::{self as kq, GgmlType};
    use candle_core::quantized::GgmlDType as T;
    let (m, k) = x.dims2()?;
    let n = q.shape().dims()[0];
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut dst = vec![0f32; m * n];
    let data = q.data()?;
    fn run<B: GgmlType>(
        mkn: (usize, usize, usize),
        xs: &[f32],
        data: &[u8],
        dst: &mut [f32],
    ) -> Result<()> {
        let size = std::mem::size_of::<B>();
        if !data.len().is_multiple_of(size)
            || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>())
        {
            bail!("quantized data is not a whole number of aligned blocks");
        }
        // SAFETY: the bytes are a QTensor's blocks of type B (its dtype said so), whole and
        // aligned as checked above; blocks are plain data.
        let blocks =
            unsafe { std::slice::from_raw_parts(data.as_ptr() as *const B, data.len() / size) };
        Ok(kq::matmul(mkn, xs, blocks, dst)?)
    }
    let mkn = (m, k, n);
    match q.dtype() {
        T::Q4_0 => run::<kq::BlockQ4_0>(mkn, &xs, &data, &mut dst)?,
        T::Q4_1 => run::<kq::BlockQ4_1>(mkn, &xs, &data, &mut dst)?,
        T::Q5_0 => run::<kq::BlockQ5_0>(mkn, &xs, &data, &mut dst)?,
        T::Q5_1 => run::<kq::BlockQ5_1>(mkn, &xs, &data, &mut dst)?,
        T::Q8_0 => run::<kq::BlockQ8_0>(mkn, &xs, &data, &mut dst)?,
        T::Q2K => run::<kq::BlockQ2K>(mkn, &xs, &data, &mut dst)?,
        T::Q3K => run::<kq::BlockQ3K>(mkn, &xs, &data, &mut dst)?,
        T::Q4K => run::<kq::BlockQ4K>(mkn, &xs, &data, &mut dst)?,
        T::Q5K => run::<kq::BlockQ5K>(mkn, &xs, &data, &mut dst)?,
        T::Q6K => run::<kq::BlockQ6K>(mkn, &xs, &data, &mut dst)?,
        _ => return Ok(x.contiguous()?.apply_op1_no_bwd(q)?),
    }
    Ok(Tensor::from_vec(dst, (m, n), &Device::Cpu)?)
}

fn cpu_half(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = w.dims()[0];
    if m >= GEMM_MIN_ROWS && !kernels::half_tiles_available(k) {
        let wide = {
            let (storage, layout) = w.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                bail!("a CPU weight outside CPU memory")
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                bail!("weights must be contiguous")
            };
            match w.dtype() {
                DType::BF16 => kernels::widen(&cpu.as_slice::<bf16>()?[start..end]),
                _ => kernels::widen(&cpu.as_slice::<f16>()?[start..end]),
            }
        };
        let wide = Tensor::from_vec(wide, (n, k), &Device::Cpu)?;
        return Ok(x.contiguous()?.matmul(&wide.t()?)?);
    }
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("a CPU weight outside CPU memory")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("weights must be contiguous")
    };
    let y = match w.dtype() {
        DType::BF16 => kernels::half_matmul(&xs, m, k, &cpu.as_slice::<bf16>()?[start..end], n),
        _ => kernels::half_matmul(&xs, m, k, &cpu.as_slice::<f16>()?[start..end], n),
    };
    Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
}

pub struct Linear {
    weight: Matrix,
    /// In the activation dtype.
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Matrix, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// `x`: rows × in, in the activation dtype; returns rows × out.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.matmul_t(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The largest absolute value of a tensor (of a difference, an error).
    pub fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn quantized_matmuls_agree_with_candle_s_op() {
        use candle_core::quantized::GgmlDType;
        let w = Tensor::randn(0f32, 1.0, (64, 256), &Device::Cpu).unwrap();
        for ty in [
            GgmlDType::Q4_0,
            GgmlDType::Q5_1,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, ty).unwrap();
            for rows in [1, 9] {
                let x = Tensor::randn(0f32, 1.0, (rows, 256), &Device::Cpu).unwrap();
                let theirs = x.apply_op1_no_bwd(&q).unwrap();
                let ours = cpu_quantized(&q, &x).unwrap();
                let scale = max_abs(&theirs);
                let err = max_abs(&(ours - theirs).unwrap());
                assert!(
                    err <= 1e-4 * scale.max(1.0),
                    "{ty:?}, {rows} rows: {err} of {scale}"
                );
            }
        }
    }

    #[test]
    fn every_16_bit_path_matches_f32() {
        // 1 row: fused dots; 7 and 20 rows: the AVX-512 tiles where the CPU has them, else
        // widened rows (7) and one f32 GEMM (20).
        let w = Tensor::randn(0f32, 1.0, (24, 80), &Device::Cpu).unwrap();
        for rows in [1, 7, 20] {
            let x = Tensor::randn(0f32, 1.0, (rows, 80), &Device::Cpu).unwrap();
            for dtype in [DType::F16, DType::BF16] {
                let w16 = w.to_dtype(dtype).unwrap();
                let want = x
                    .matmul(&w16.to_dtype(DType::F32).unwrap().t().unwrap())
                    .unwrap();
                let got = Matrix::Dense(w16).matmul_t(&x).unwrap();
                let err = max_abs(&(got - want).unwrap());
                assert!(err < 1e-3, "{rows} rows, {dtype:?}: max error {err}");
            }
        }
    }
}
