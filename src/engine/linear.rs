//! A linear layer whose weights stay in the dtype they were stored in, behind one matmul that
//! picks the kernel: candle's for f32 (and for everything on a GPU), owrun's own for 16-bit
//! weights on the CPU (see `kernels`).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Storage, Tensor};
use half::{bf16, f16};

use super::kernels;

pub struct Linear {
    /// out × in, as checkpoints store it.
    weight: Tensor,
    /// In the activation dtype.
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x`: rows × in, in the activation dtype; returns rows × out.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match (self.weight.device(), self.weight.dtype(), x.dtype()) {
            (Device::Cpu, DType::F16 | DType::BF16, DType::F32) => self.cpu_half(x)?,
            _ => x.matmul(&self.weight.t()?)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn cpu_half(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        let n = self.out_features();
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (storage, layout) = self.weight.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            bail!("a CPU weight outside CPU memory")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("weights must be contiguous")
        };
        let y = match self.weight.dtype() {
            DType::BF16 => kernels::matmul_wt(&xs, m, k, &cpu.as_slice::<bf16>()?[start..end], n),
            _ => kernels::matmul_wt(&xs, m, k, &cpu.as_slice::<f16>()?[start..end], n),
        };
        Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
    }
}
