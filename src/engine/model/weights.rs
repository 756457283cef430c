//! Tensors by their Hugging Face names, from a checkpoint's safetensors files (read, not mapped:
//! see `safetensors_file`) or
//! from a GGUF file, each checked for the shape the decoder expects so a foreign or truncated
//! checkpoint is an error naming the tensor.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::kernels;
use super::linear::{candle_dtype_of, Matrix, QMatrix};
use super::lora::{self, Adapters, Lora};
use crate::engine::format::ggml::GgmlType;
use crate::engine::format::gguf::{GgufFile, RawTensor};
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
    /// LoRA adapters for the linear layers, applied beside the weights or merged into them.
    adapters: Option<Adapters>,
    /// Matrices the adapters were merged into, and how many of them were requantized.
    merged: (usize, usize),
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
            adapters: None,
            merged: (0, 0),
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
            adapters: None,
            merged: (0, 0),
        }
    }

    /// Give the linear layers these adapters (see `lora`).
    pub fn use_adapters(&mut self, adapters: Adapters) {
        self.adapters = Some(adapters);
    }

    /// The adapters' parts of linear layer `name` (without `.weight`), outputs × inputs, to run
    /// beside it (none when they are merged: `matrix` folded them in).
    pub fn lora(&mut self, name: &str, outputs: usize, inputs: usize) -> Result<Vec<Lora>> {
        match self.adapters.as_mut() {
            Some(a) if !a.merge => a.take(name, outputs, inputs),
            _ => Ok(Vec::new()),
        }
    }

    /// The adapters run beside the weights (not merged), by their files, in the order the
    /// multipliers of `Model::set_adapters` follow.
    pub fn adapter_sources(&self) -> Vec<String> {
        self.adapters
            .as_ref()
            .filter(|a| !a.merge)
            .map_or(Vec::new(), Adapters::sources)
    }

    /// What was merged, for the user: None when no adapter was.
    pub fn merge_note(&self) -> Option<String> {
        let (n, requantized) = self.merged;
        if !self.adapters.as_ref().is_some_and(|a| a.merge) {
            return None;
        }
        let mut note = format!("merged the LoRA adapters into {n} matrices of the weights");
        if requantized > 0 {
            note.push_str(&match self.files {
                Source::Gguf(_) => format!(
                    "; merging requantized {requantized} of them (dequantized, merged, quantized \
                     again to their block types: a little less exact than the adapters beside \
                     the weights)"
                ),
                Source::Safetensors(_) => format!(
                    "; {requantized} of them were quantized after merging (a little less exact \
                     than the adapters beside the quantized weights; not cached, so at every \
                     load)"
                ),
            });
        }
        Some(note)
    }

    /// Once every layer is built: each adapter found the layers it adapts.
    pub fn check_adapters(&self) -> Result<()> {
        self.adapters
            .as_ref()
            .map_or(Ok(()), Adapters::check_all_used)
    }

    /// What the quantizer (candle's) made, where this device multiplies it.
    fn quantized(&self, q: &Arc<QTensor>) -> Result<Matrix> {
        if self.device.is_cpu() {
            Ok(Matrix::Blocks(QMatrix::from_qtensor(q)?))
        } else {
            Ok(Matrix::Device(q.clone()))
        }
    }

    /// A quantized matrix where this device multiplies it: as blocks in main memory for the
    /// CPU, as candle's tensor (or dense values) on a GPU.
    fn blocks(&self, q: QMatrix) -> Result<Matrix> {
        if self.device.is_cpu() {
            Ok(Matrix::Blocks(q))
        } else {
            q.to_device(&self.device)
        }
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
            Source::Safetensors(f) => f.dtype(name)?.with_context(|| missing(name)),
            Source::Gguf(_) => Ok(DType::F32),
        }
    }

    /// Dense tensor `name` as stored (a GGUF block type dequantized to f32).
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = match &mut self.files {
            Source::Safetensors(f) => f.load(name, &self.device)?.with_context(|| missing(name))?,
            Source::Gguf(g) => {
                let raw = g.load_hf(name)?.with_context(|| missing(name))?;
                match dense_of(&raw, &self.device)? {
                    Some(t) => t,
                    None => {
                        let mut values = vec![0f32; raw.dims.iter().product()];
                        kernels::dequantize(raw.ty, &raw.bytes, &mut values);
                        Tensor::from_vec(values, raw.dims.as_slice(), &self.device)?
                    }
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
        let layer = name.strip_suffix(".weight").unwrap_or(name);
        let delta = match self.adapters.as_mut().filter(|a| a.merge) {
            Some(a) => a.delta(layer, shape[0], shape[1])?,
            None => None,
        };
        if let Some(delta) = delta {
            return self.merged(name, shape, role, &delta);
        }
        if let Source::Gguf(g) = &mut self.files {
            // As the file holds it: a block type stays quantized.
            let raw = g.load_hf(name)?.with_context(|| missing(name))?;
            if raw.dims != shape {
                bail!(
                    "tensor {name} has shape {:?}, but the GGUF's hyperparameters imply {shape:?}",
                    raw.dims
                );
            }
            return match dense_of(&raw, &self.device)? {
                Some(t) => Ok(Matrix::Dense(match self.matmul_dtype {
                    Some(d) if d != t.dtype() => t.to_dtype(d)?,
                    _ => t,
                })),
                None => {
                    let q = QMatrix::new(raw.ty, shape[0], shape[1], raw.bytes)
                        .with_context(|| format!("tensor {name}"))?;
                    self.blocks(q)
                }
            };
        }
        if let Some((scheme, layers, cache)) = self.quant.as_mut().filter(|_| role != Role::Router)
        {
            let wanted = scheme.type_for(role, *layers);
            if let Some(ty) = quantize::fitting_type(wanted, shape[1]) {
                if let Some(q) = cache.get(name, ty, shape, &self.device) {
                    return self.quantized(&q);
                }
                let dense = self.load(name, shape)?;
                let q = quantize::quantize(&dense, ty, &self.device)
                    .with_context(|| format!("cannot quantize {name} to {ty:?}"))?;
                let matrix = self.quantized(&q)?;
                if let Some((_, _, cache)) = self.quant.as_mut() {
                    cache.add(name, q);
                }
                return Ok(matrix);
            }
        }
        let t = self.load(name, shape)?;
        Ok(Matrix::Dense(match self.matmul_dtype {
            Some(d) if d != t.dtype() => t.to_dtype(d)?,
            _ => t,
        }))
    }

    /// Matrix `name` with the adapters' `delta` merged in (`--lora-merge`), then held as the
    /// matrix is held without them: a GGUF's float type or (quantized again) its block type,
    /// the scheme's block type, or the weights' dtype. Never through the quantization cache: it
    /// is keyed on the base's files alone, and merged blocks are not the base's (nor would the
    /// base's blocks be these).
    fn merged(
        &mut self,
        name: &str,
        shape: &[usize],
        role: Role,
        delta: &Tensor,
    ) -> Result<Matrix> {
        let blocks = match &self.files {
            Source::Gguf(g) => match g.hf_type(name) {
                Some(ty) if ty.is_quantized() => Some(candle_dtype_of(ty).with_context(|| {
                    format!(
                        "--lora-merge: cannot merge the LoRA adapters into {name}: owrun cannot \
                         quantize {} blocks again (run the adapters beside the weights: --lora \
                         without --lora-merge)",
                        ty.name()
                    )
                })?),
                _ => None,
            },
            Source::Safetensors(_) => match &self.quant {
                Some((scheme, layers, _)) if role != Role::Router => {
                    quantize::fitting_type(scheme.type_for(role, *layers), shape[1])
                }
                _ => None,
            },
        };
        let w = self.load(name, shape)?;
        let dtype = self.matmul_dtype.unwrap_or(w.dtype());
        let w = lora::merge(&w, delta)?;
        self.merged.0 += 1;
        match blocks {
            Some(ty) => {
                self.merged.1 += 1;
                let q = quantize::quantize(&w, ty, &self.device)
                    .with_context(|| format!("cannot quantize {name} to {ty:?}"))?;
                self.quantized(&q)
            }
            None => Ok(Matrix::Dense(w.to_dtype(dtype)?)),
        }
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
fn dense_of(raw: &RawTensor, device: &Device) -> Result<Option<Tensor>> {
    if raw.ty.is_quantized() {
        return Ok(None);
    }
    let dtype = match raw.ty {
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        _ => DType::F32,
    };
    Ok(Some(Tensor::from_raw_buffer(
        &raw.bytes, dtype, &raw.dims, device,
    )?))
}

fn missing(name: &str) -> String {
    format!("the weights lack {name}: truncated, or not a checkpoint of this architecture in Hugging Face layout")
}
