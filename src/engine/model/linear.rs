//! Matrices as they are held (dense in their stored dtype, or GGML blocks) behind one matmul
//! that picks the kernel: on the CPU owrun's own (`kernels`) for 16-bit weights and every block
//! type, candle's for f32; on a GPU candle's for everything.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use half::{bf16, f16};

use super::kernels;
use super::lora::{Lora, Selection};
use crate::engine::format::ggml::GgmlType;

/// A weight matrix, rows × columns (out × in for a linear layer, vocab × hidden for embeddings).
#[derive(Clone)]
pub enum Matrix {
    Dense(Tensor),
    /// GGML blocks in main memory, multiplied by owrun's kernels (the CPU).
    Blocks(QMatrix),
    /// GGML blocks on a GPU, multiplied by candle's kernels.
    Device(Arc<QTensor>),
}

/// A matrix of GGML blocks, held as stored: one copy of the weights.
#[derive(Clone)]
pub struct QMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Arc<Vec<u8>>,
}

impl QMatrix {
    /// `bytes` as a rows × cols matrix of `ty`, checked to be exactly that.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<QMatrix> {
        let row = ty
            .row_bytes(cols)
            .with_context(|| format!("rows of {cols} values are not whole {} blocks", ty.name()))?;
        if Some(bytes.len()) != row.checked_mul(rows) {
            bail!(
                "{} bytes are not {rows} rows of {cols} {} values",
                bytes.len(),
                ty.name()
            );
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            bytes: Arc::new(bytes),
        })
    }

    /// A candle quantized tensor's blocks (the quantizer's and its cache's output), copied.
    pub fn from_qtensor(q: &QTensor) -> Result<QMatrix> {
        let ty = ggml_type_of(q.dtype())?;
        let [rows, cols] = q.shape().dims()[..] else {
            bail!(
                "a quantized tensor of shape {:?} is not a matrix",
                q.shape()
            );
        };
        QMatrix::new(ty, rows, cols, q.data()?.into_owned())
    }

    /// The same blocks as a candle tensor on `device` (a GPU), for types candle multiplies;
    /// else the values as a dense f32 matrix there.
    pub fn to_device(&self, device: &Device) -> Result<Matrix> {
        if let Some(dtype) = candle_dtype_of(self.ty) {
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(self.bytes.as_slice()),
                device,
                dtype,
            )?;
            let q = QTensor::new(storage, (self.rows, self.cols))?;
            return Ok(Matrix::Device(Arc::new(q)));
        }
        let ids: Vec<u32> = (0..self.rows as u32).collect();
        let values = self.rows_f32(&ids)?;
        Ok(Matrix::Dense(Tensor::from_vec(
            values,
            (self.rows, self.cols),
            device,
        )?))
    }

    /// Rows `ids` as f32 values.
    fn rows_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let row = self.ty.row_bytes(self.cols).context("whole blocks")?;
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, values) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            let r = id as usize;
            if r >= self.rows {
                bail!("row {r} of a matrix of {} rows", self.rows);
            }
            kernels::dequantize(self.ty, &self.bytes[r * row..(r + 1) * row], values);
        }
        Ok(out)
    }
}

/// owrun's name for a candle block type.
fn ggml_type_of(dtype: GgmlDType) -> Result<GgmlType> {
    Ok(match dtype {
        GgmlDType::Q4_0 => GgmlType::Q4_0,
        GgmlDType::Q4_1 => GgmlType::Q4_1,
        GgmlDType::Q5_0 => GgmlType::Q5_0,
        GgmlDType::Q5_1 => GgmlType::Q5_1,
        GgmlDType::Q8_0 => GgmlType::Q8_0,
        GgmlDType::Q2K => GgmlType::Q2K,
        GgmlDType::Q3K => GgmlType::Q3K,
        GgmlDType::Q4K => GgmlType::Q4K,
        GgmlDType::Q5K => GgmlType::Q5K,
        GgmlDType::Q6K => GgmlType::Q6K,
        other => bail!("candle type {other:?} is not a block type owrun multiplies"),
    })
}

/// candle's name for a block type, where candle has the type (and quantizes to it).
pub fn candle_dtype_of(ty: GgmlType) -> Option<GgmlDType> {
    [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ]
    .into_iter()
    .find(|&d| ggml_type_of(d).ok() == Some(ty))
}

impl Matrix {
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Blocks(q) => q.bytes.len(),
            Matrix::Device(q) => q.storage_size_in_bytes(),
        }
    }

    /// The rows `ids`, as activations of `dtype` (an embedding lookup).
    pub fn rows_of(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Matrix::Dense(t) => t.index_select(ids, 0)?.to_dtype(dtype)?,
            Matrix::Blocks(q) => {
                let ids = ids.to_vec1::<u32>()?;
                let values = q.rows_f32(&ids)?;
                Tensor::from_vec(values, (ids.len(), q.cols), &Device::Cpu)?.to_dtype(dtype)?
            }
            Matrix::Device(q) => q.embedding(ids)?.to_dtype(dtype)?,
        })
    }

    /// `x` (m × columns) times this matrix transposed: m × rows.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Blocks(q) => {
                let (m, k) = x.dims2()?;
                if k != q.cols {
                    bail!("{m} × {k} activations times a matrix of {} columns", q.cols);
                }
                let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let y = kernels::quantized_matmul(q.ty, &q.bytes, q.rows, k, &xs, m);
                Ok(Tensor::from_vec(y, (m, q.rows), &Device::Cpu)?)
            }
            Matrix::Device(q) => Ok(x.contiguous()?.apply_op1_no_bwd(q.as_ref())?),
            Matrix::Dense(w) => match (w.device(), w.dtype(), x.dtype()) {
                (Device::Cpu, DType::F16 | DType::BF16, DType::F32) => cpu_half(w, x),
                _ => Ok(x.matmul(&w.t()?)?),
            },
        }
    }
}

/// Rows of activations from which a 16-bit matmul on a CPU without owrun's 16-bit tiles (ARM,
/// x86 without AVX2) widens the weights and runs candle's f32 GEMM.
const GEMM_MIN_ROWS: usize = 16;

fn cpu_half(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = w.dims()[0];
    if m >= GEMM_MIN_ROWS && !kernels::half_prefill_tiles(k) {
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
    /// LoRA adapters added to the weight's output.
    lora: Vec<Lora>,
}

impl Linear {
    pub fn new(weight: Matrix, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            lora: Vec::new(),
        }
    }

    pub fn with_lora(self, lora: Vec<Lora>) -> Self {
        Linear { lora, ..self }
    }

    /// `x`: rows × in, in the activation dtype; returns rows × out.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &Selection::none())
    }

    /// As `forward`, with the adapters `selection` applies to each row.
    pub fn forward_with(&self, x: &Tensor, selection: &Selection) -> Result<Tensor> {
        let mut y = self.weight.matmul_t(x)?;
        for l in &self.lora {
            y = l.add_to(x, y, selection)?;
        }
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
    fn blocks_multiply_and_look_up_as_their_values() {
        // Quantized by candle (an implementation of the blocks apart from owrun's kernels).
        let w = Tensor::randn(0f32, 1.0, (40, 256), &Device::Cpu).unwrap();
        for ty in [
            GgmlDType::Q4_0,
            GgmlDType::Q5_1,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, ty).unwrap();
            let values: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let m = Matrix::Blocks(QMatrix::from_qtensor(&q).unwrap());
            // Embedding rows: exactly the values.
            let ids = Tensor::new(&[3u32, 0, 39], &Device::Cpu).unwrap();
            let rows: Vec<f32> = m
                .rows_of(&ids, DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (r, id) in [3, 0, 39].into_iter().enumerate() {
                assert_eq!(
                    rows[r * 256..(r + 1) * 256],
                    values[id * 256..(id + 1) * 256]
                );
            }
            // Products: the values' products, up to the rounding of the activations to 8 bits
            // per block (each value off by at most half a step: its block's largest / 254).
            for rows in [1, 9, 20] {
                let x: Vec<f32> = Tensor::randn(0f32, 1.0, (rows, 256), &Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let xt = Tensor::from_vec(x.clone(), (rows, 256), &Device::Cpu).unwrap();
                let got: Vec<f32> = m
                    .matmul_t(&xt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let block = ggml_type_of(ty).unwrap().block_len();
                for i in 0..rows {
                    for j in 0..40 {
                        let (xi, wj) =
                            (&x[i * 256..(i + 1) * 256], &values[j * 256..(j + 1) * 256]);
                        let want: f64 = xi.iter().zip(wj).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let bound: f64 = (0..256 / block)
                            .map(|b| {
                                let r = b * block..(b + 1) * block;
                                let amax = xi[r.clone()].iter().fold(0f32, |a, v| a.max(v.abs()));
                                wj[r].iter().map(|v| v.abs() as f64).sum::<f64>() * amax as f64
                                    / 254.0
                            })
                            .sum();
                        let err = (got[i * 40 + j] as f64 - want).abs();
                        assert!(
                            err <= bound * 1.001 + 1e-4,
                            "{ty:?} {i},{j}: {err} > {bound}"
                        );
                    }
                }
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
