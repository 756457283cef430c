//! Tensors by their Hugging Face names, from a checkpoint's safetensors files (read, not mapped:
//! see `safetensors_file`) or
//! from a GGUF file, each checked for the shape the decoder expects so a foreign or truncated
//! checkpoint is an error naming the tensor.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::linear::{Matrix, QMatrix};
use crate::engine::format::gguf::GgufFile;
use crate::engine::format::safetensors::{describe, SafetensorsFiles};
use crate::engine::quantize::cache::QuantCache;
use crate::engine::quantize::{self, Role, Scheme};

enum Source {
    Safetensors(SafetensorsFiles),
    Gguf(Box<GgufFile>),
}

pub struct Weights {
    files: Source,
    device: Device,
    /// Matmul weights are converted to this dtype (None: kept as stored).
    matmul_dtype: Option<DType>,
    /// Norm gains and biases: the activation dtype.
    small_dtype: DType,
    /// Quantize matrices under this scheme (for a model of this many layers), through the cache.
    quant: Option<(Scheme, usize, QuantCache)>,
    /// Quantized matrices may use candle's repacked kernels (see `allow_repacking`).
    repack: bool,
}

impl Weights {
    pub fn open(
        paths: &[PathBuf],
        device: &Device,
        matmul_dtype: Option<DType>,
        small_dtype: DType,
    ) -> Result<Weights> {
        let files = SafetensorsFiles::open(paths)
            .with_context(|| format!("cannot read weights {}", describe(paths)))?;
        Ok(Weights {
            files: Source::Safetensors(files),
            device: device.clone(),
            matmul_dtype,
            small_dtype,
            quant: None,
            repack: false,
        })
    }

    /// Tensors from a GGUF file (held as stored: quantized or float).
    pub fn from_gguf(
        file: GgufFile,
        device: &Device,
        matmul_dtype: Option<DType>,
        small_dtype: DType,
    ) -> Weights {
        Weights {
            files: Source::Gguf(Box::new(file)),
            device: device.clone(),
            matmul_dtype,
            small_dtype,
            quant: None,
            repack: false,
        }
    }

    /// Let quantized matrices keep candle's repacked copy (faster, twice their memory).
    pub fn allow_repacking(&mut self, allow: bool) {
        self.repack = allow;
    }

    fn quantized(&self, q: Arc<QTensor>) -> Matrix {
        Matrix::Quantized(QMatrix {
            blocks: q,
            may_repack: self.repack,
        })
    }

    /// Quantize matrices under `scheme`, reading and filling `cache`.
    pub fn quantize_with(&mut self, scheme: Scheme, layers: usize, cache: QuantCache) {
        self.quant = Some((scheme, layers, cache));
    }

    /// The quantization cache, once loading is done.
    pub fn take_cache(&mut self) -> Option<QuantCache> {
        self.quant.take().map(|(_, _, c)| c)
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.files {
            Source::Safetensors(f) => f.contains(name),
            Source::Gguf(g) => g.has_hf(name),
        }
    }

    /// The dtype a safetensors tensor is stored in.
    pub fn stored_dtype(&self, name: &str) -> Result<DType> {
        match &self.files {
            Source::Safetensors(f) => f.dtype(name).with_context(|| missing(name)),
            Source::Gguf(_) => Ok(DType::F32),
        }
    }

    /// Dense tensor `name` as stored (a GGUF block type dequantized to f32).
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = match &mut self.files {
            Source::Safetensors(f) => f.load(name, &self.device)?.with_context(|| missing(name))?,
            Source::Gguf(g) => {
                let q = g
                    .load_hf(name, &self.device)?
                    .with_context(|| missing(name))?;
                match dense_of(&q, &self.device)? {
                    Some(t) => t,
                    None => q.dequantize(&self.device)?,
                }
            }
        };
        if t.dims() != shape {
            bail!(
                "tensor {name} has shape {:?}, but config.json implies {shape:?}",
                t.dims()
            );
        }
        Ok(t)
    }

    /// A matmul weight (or the embedding table): quantized when a scheme is set and its rows
    /// fit a block type, else dense.
    pub fn matrix(&mut self, name: &str, shape: &[usize], role: Role) -> Result<Matrix> {
        if let Source::Gguf(g) = &mut self.files {
            // As the file holds it: a block type stays quantized.
            let q = g
                .load_hf(name, &self.device)?
                .with_context(|| missing(name))?;
            if q.shape().dims() != shape {
                bail!(
                    "tensor {name} has shape {:?}, but the GGUF's hyperparameters imply {shape:?}",
                    q.shape().dims()
                );
            }
            return Ok(match dense_of(&q, &self.device)? {
                Some(t) => Matrix::Dense(match self.matmul_dtype {
                    Some(d) if d != t.dtype() => t.to_dtype(d)?,
                    _ => t,
                }),
                None => self.quantized(Arc::new(q)),
            });
        }
        if let Some((scheme, layers, cache)) = self.quant.as_mut().filter(|_| role != Role::Router)
        {
            let wanted = scheme.type_for(role, *layers);
            if let Some(ty) = quantize::fitting_type(wanted, shape[1]) {
                if let Some(q) = cache.get(name, ty, shape, &self.device) {
                    return Ok(self.quantized(q));
                }
                let dense = self.load(name, shape)?;
                let q = quantize::quantize(&dense, ty, &self.device)
                    .with_context(|| format!("cannot quantize {name} to {ty:?}"))?;
                if let Some((_, _, cache)) = self.quant.as_mut() {
                    cache.add(name, q.clone());
                }
                return Ok(self.quantized(q));
            }
        }
        let t = self.load(name, shape)?;
        Ok(Matrix::Dense(match self.matmul_dtype {
            Some(d) if d != t.dtype() => t.to_dtype(d)?,
            _ => t,
        }))
    }

    /// A norm gain or bias, in the activation dtype; `plus_one` for Gemma's (1 + w) gains.
    pub fn vector(&mut self, name: &str, len: usize, plus_one: bool) -> Result<Tensor> {
        let t = self.load(name, &[len])?.to_dtype(DType::F32)?;
        // GGUF files of Gemma store the gains as 1 + w already.
        let plus_one = plus_one && !matches!(&self.files, Source::Gguf(g) if g.norms_include_one());
        let t = if plus_one { (t + 1.0)? } else { t };
        Ok(t.to_dtype(self.small_dtype)?)
    }

    pub fn optional_vector(
        &mut self,
        name: &str,
        len: usize,
        plus_one: bool,
    ) -> Result<Option<Tensor>> {
        if self.contains(name) {
            Ok(Some(self.vector(name, len, plus_one)?))
        } else {
            Ok(None)
        }
    }
}

/// A GGUF tensor of a float type as a dense tensor in that type (None: a block type).
fn dense_of(q: &QTensor, device: &Device) -> Result<Option<Tensor>> {
    let dtype = match q.dtype() {
        GgmlDType::F32 => DType::F32,
        GgmlDType::F16 => DType::F16,
        GgmlDType::BF16 => DType::BF16,
        _ => return Ok(None),
    };
    let bytes = q.data()?;
    Ok(Some(Tensor::from_raw_buffer(
        &bytes,
        dtype,
        q.shape().dims(),
        device,
    )?))
}

fn missing(name: &str) -> String {
    format!("the weights lack {name}: truncated, or not a checkpoint of this architecture in Hugging Face layout")
}
