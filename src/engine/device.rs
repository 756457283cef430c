//! Where a model runs and in which dtype its weights are held: the user's choice, resolved
//! against what this build and machine have.

use anyhow::Result;
use candle_core::{DType, Device};

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU when this build has one and it opens, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

/// What dtype to hold the weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    /// As the checkpoint stores them.
    Auto,
    F32,
    F16,
    BF16,
}

/// Failures to load that are the caller's choice, not the model's: front ends report them as
/// usage errors.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no {0} device: {1}")]
    DeviceUnavailable(String, String),
    /// A load option this model cannot take (the user's to change).
    #[error("{0}")]
    Unsuitable(String),
}

pub fn open_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        DeviceChoice::Metal => Device::new_metal(0).map_err(|e| {
            LoadError::DeviceUnavailable(
                "metal".into(),
                format!("{e} (is this owrun built with the `metal` feature?)"),
            )
            .into()
        }),
        DeviceChoice::Cuda(n) => Device::new_cuda(n).map_err(|e| {
            LoadError::DeviceUnavailable(
                format!("cuda:{n}"),
                format!("{e} (build owrun with `--features cuda` and check the NVIDIA driver)"),
            )
            .into()
        }),
    }
}

/// (weight dtype, activation dtype). Weights stay as stored unless asked otherwise. On the CPU
/// activations are f32 (owrun's kernels multiply them by 16-bit weights directly); on a GPU
/// they are the weights' dtype, as candle's GPU matmuls want.
pub(super) fn choose_dtypes(choice: DTypeChoice, stored: DType, device: &Device) -> (DType, DType) {
    let weights = match choice {
        DTypeChoice::Auto => match stored {
            DType::F16 | DType::BF16 | DType::F32 => stored,
            _ => DType::F32,
        },
        DTypeChoice::F32 => DType::F32,
        DTypeChoice::F16 => DType::F16,
        DTypeChoice::BF16 => DType::BF16,
    };
    let act = if device.is_cpu() { DType::F32 } else { weights };
    (weights, act)
}
