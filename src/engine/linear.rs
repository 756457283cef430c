//! Matrices as they are held (dense in their stored dtype, or quantized) behind one matmul that
//! picks the kernel: candle's for f32 and for everything on a GPU, candle's quantized kernels for
//! GGML block types, and owrun's own for 16-bit weights on the CPU (see `kernels`).

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Storage, Tensor};
use half::{bf16, f16};

use super::kernels;

/// A weight matrix, rows × columns (out × in for a linear layer, vocab × hidden for embeddings).
#[derive(Clone)]
pub enum Matrix {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl Matrix {
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Quantized(q) => q.storage_size_in_bytes(),
        }
    }

    /// The rows `ids`, as activations of `dtype` (an embedding lookup).
    pub fn rows_of(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Matrix::Dense(t) => t.index_select(ids, 0)?.to_dtype(dtype)?,
            Matrix::Quantized(q) => q.embedding(ids)?.to_dtype(dtype)?,
        })
    }

    /// `x` (m × columns) times this matrix transposed: m × rows.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Quantized(q) => Ok(x.contiguous()?.apply_op1_no_bwd(q.as_ref())?),
            Matrix::Dense(w) => match (w.device(), w.dtype(), x.dtype()) {
                (Device::Cpu, DType::F16 | DType::BF16, DType::F32) => cpu_half(w, x),
                _ => Ok(x.matmul(&w.t()?)?),
            },
        }
    }
}

fn cpu_half(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = w.dims()[0];
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("a CPU weight outside CPU memory")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("weights must be contiguous")
    };
    let y = match w.dtype() {
        DType::BF16 => kernels::matmul_wt(&xs, m, k, &cpu.as_slice::<bf16>()?[start..end], n),
        _ => kernels::matmul_wt(&xs, m, k, &cpu.as_slice::<f16>()?[start..end], n),
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
