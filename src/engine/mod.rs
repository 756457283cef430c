//! The inference engine: device and dtype, the model behind one interface, tokenizer, chat
//! template, sampler, generation loop and streaming detokenizer. It knows nothing of terminals
//! or HTTP: front ends hand it tokens and receive text.

pub mod arch;
pub mod config;
pub mod constrain;
pub mod decoder;
pub mod detok;
pub mod generate;
pub mod gguf;
mod gguf_vocab;
pub mod gguf_write;
mod kernels;
pub mod kv;
pub mod linear;
pub mod model;
#[cfg(test)]
mod parity_tests;
pub mod quality;
pub mod quant;
pub mod reasoning;
pub mod rope;
mod safetensors_file;
pub mod sampler;
pub mod session;
pub mod template;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device};
use serde_json::Value;
use tokenizers::Tokenizer;

use arch::Arch;
use config::{token_ids, ModelConfig};
use decoder::Decoder;
use model::Model;
use sampler::SamplingParams;
use template::ChatTemplate;
use weights::Weights;

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

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Quantize the matrices under this scheme (the rest keeps `dtype`).
    pub quant: Option<quant::Scheme>,
    /// Where quantized matrices are cached between loads (None: not cached).
    pub quant_cache: Option<PathBuf>,
    /// Memory the model may use (None: unknown, assume plenty). Decides whether Q8_0 matrices
    /// may keep candle's faster repacked copy.
    pub memory_available: Option<u64>,
}

/// Failures to load that are the caller's choice, not the model's: front ends report them as
/// usage errors.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no {0} device: {1}")]
    DeviceUnavailable(String, String),
}

pub struct Engine {
    pub model: Model,
    /// Tokenizer, template, end-of-sequence ids and sampling defaults: shared with the threads
    /// that prepare prompts while the model computes (the server's).
    pub text: Arc<Text>,
    pub config: ModelConfig,
    pub load_s: f64,
    pub device: Device,
    /// The dtype the weights are held in (the dense ones, under a quantization scheme).
    pub dtype: DType,
    pub quant: Option<quant::Scheme>,
    /// What happened while loading that a user may want to know (printed by front ends).
    pub notes: Vec<String>,
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
fn choose_dtypes(choice: DTypeChoice, stored: DType, device: &Device) -> (DType, DType) {
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

/// Whether the model in `dir` stores its weights in 32 bits (config.json's torch_dtype / dtype).
pub fn stores_32_bit(dir: &Path) -> bool {
    read_json(&dir.join("config.json"))
        .ok()
        .flatten()
        .and_then(|c| {
            c.get("torch_dtype")
                .or_else(|| c.get("dtype"))
                .and_then(Value::as_str)
                .map(|d| d == "float32")
        })
        .unwrap_or(true)
}

fn files_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Whether quantized weights of `bytes` may keep candle's repacked copy (Q8_0 decoding 1.8x and
/// K-quant prefill 3.5x faster, twice the memory): when the memory available holds both copies
/// with a tenth to spare.
/// Said only where it matters: owrun's AVX-512 kernels multiply Q8_0 / Q4_K / Q6_K (every
/// matrix of a real model's Q8_0 and Q4_K_M) faster without any copy.
fn repacking_fits(bytes: f64, available: Option<u64>, notes: &mut Vec<String>) -> bool {
    let fits = available.is_none_or(|a| a as f64 >= 2.2 * bytes);
    if !fits && !kernels::quant::own_kernels_available() {
        notes.push(
            "memory is short: quantized matrices run without the repacked copy that makes them faster"
                .into(),
        );
    }
    fits
}

/// What a quantization cache must match: the scheme, owrun's quantizer version, and the source
/// files' names and sizes.
fn quant_stamp(scheme: quant::Scheme, files: &[PathBuf]) -> String {
    let mut stamp = format!("owrun-quant-1 {}", scheme.name());
    for f in files {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        stamp.push_str(&format!(" {name}:{len}"));
    }
    stamp
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            Ok(Some(serde_json::from_str(&t).with_context(|| {
                format!("{} is not valid JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The text side of a model: tokenizer, template, end-of-sequence ids, sampling defaults.
pub struct Text {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// End-of-sequence ids: config.json ∪ generation_config.json ∪ the tokenizer's eos token.
    pub eos: Vec<u32>,
    /// Sampling defaults from generation_config.json.
    pub sampling: SamplingParams,
    /// Every token's text, for constrained decoding (made on first use).
    token_texts: std::sync::OnceLock<constrain::TokenTexts>,
}

/// The weight side of a loaded model.
struct Loaded {
    decoder: Decoder,
    device: Device,
    dtype: DType,
    quant: Option<quant::Scheme>,
    notes: Vec<String>,
}

impl Text {
    fn into_engine(self, config: ModelConfig, loaded: Loaded, started: Instant) -> Engine {
        Engine {
            model: Model::new(loaded.decoder),
            text: Arc::new(self),
            config,
            load_s: started.elapsed().as_secs_f64(),
            device: loaded.device,
            dtype: loaded.dtype,
            quant: loaded.quant,
            notes: loaded.notes,
        }
    }
}

/// From a Hugging Face folder: tokenizer.json, tokenizer_config.json, generation_config.json,
/// plus config.json's end-of-sequence ids.
fn folder_text_side(dir: &Path, config_eos: &[u32]) -> Result<Text> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow!("cannot load {}: {e}", tok_path.display()))?;
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let template = ChatTemplate::from_config(dir, &tc)?;
    let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
    let mut eos = config_eos.to_vec();
    eos.extend(token_ids(gen.get("eos_token_id")));
    if let Some(id) =
        template::special_token(tc.get("eos_token")).and_then(|t| tokenizer.token_to_id(&t))
    {
        eos.push(id);
    }
    eos.sort_unstable();
    eos.dedup();
    Ok(Text {
        tokenizer,
        template,
        eos,
        sampling: SamplingParams::from_generation_config(&gen),
        token_texts: Default::default(),
    })
}

impl Engine {
    /// Load the model in `dir` (config, tokenizer, template) with the safetensors `files`.
    pub fn load(dir: &Path, files: &[PathBuf], opts: &LoadOptions) -> Result<Engine> {
        let started = Instant::now();
        let config = ModelConfig::load(dir)?;
        let arch = Arch::from_config(&config)
            .with_context(|| format!("in {}", dir.join("config.json").display()))?;
        let device = open_device(opts.device)?;
        let text = folder_text_side(dir, &config.eos_token_ids)?;
        if files.is_empty() {
            return Err(anyhow!("{} has no safetensors weights", dir.display()));
        }
        // Probe the stored dtype on the embedding table, then hold every matrix in one dtype.
        let probe = Weights::open(files, &device, None, DType::F32)?;
        let stored = probe.stored_dtype("model.embed_tokens.weight")?;
        drop(probe);
        let (weight_dtype, mut act_dtype) = choose_dtypes(opts.dtype, stored, &device);
        if opts.quant.is_some() {
            // candle's quantized matmuls take f32 activations, on every device.
            act_dtype = DType::F32;
        }
        let mut weights = Weights::open(files, &device, Some(weight_dtype), act_dtype)?;
        let mut notes = Vec::new();
        if let Some(scheme) = opts.quant {
            let stored_bits = (stored.size_in_bytes() * 8) as f64;
            let bytes = files_bytes(files) as f64 * scheme.bits_per_weight() / stored_bits;
            weights.allow_repacking(repacking_fits(bytes, opts.memory_available, &mut notes));
        }
        if let Some(scheme) = opts.quant {
            let cache =
                quant::QuantCache::open(opts.quant_cache.clone(), quant_stamp(scheme, files));
            if !cache.hit() {
                notes.push(format!(
                    "quantizing the weights to {} (once: the result is cached)",
                    scheme.name()
                ));
            }
            weights.quantize_with(scheme, arch.layers.len(), cache);
        }
        let decoder = Decoder::load(arch, &mut weights, act_dtype, &device)
            .with_context(|| format!("cannot load {}", safetensors_file::describe(files)))?;
        if let Some(cache) = weights.take_cache() {
            match cache.save() {
                Ok(Some(path)) => notes.push(format!(
                    "cached the quantized weights in {}",
                    path.display()
                )),
                Ok(None) => {}
                Err(e) => notes.push(format!("could not cache the quantized weights: {e:#}")),
            }
        }
        drop(weights);
        let loaded = Loaded {
            decoder,
            device,
            dtype: weight_dtype,
            quant: opts.quant,
            notes,
        };
        Ok(text.into_engine(config, loaded, started))
    }

    /// Load a GGUF file: hyperparameters, tokenizer and chat template from its metadata (or,
    /// when it carries no tokenizer, from the Hugging Face files beside it), tensors as stored.
    pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Engine> {
        let started = Instant::now();
        let mut file = gguf::GgufFile::open(path)?;
        let config = ModelConfig::from_value(file.config_json()?)
            .with_context(|| format!("in {}", path.display()))?;
        let arch = Arch::from_config(&config).with_context(|| format!("in {}", path.display()))?;
        let device = open_device(opts.device)?;
        let beside = path.parent().unwrap_or(Path::new("."));
        let text = if file.meta("tokenizer.ggml.model").is_some() {
            let v = gguf_vocab::from_gguf(&file)?;
            Text {
                tokenizer: v.tokenizer,
                template: v.template,
                eos: v.eos,
                sampling: SamplingParams::default(),
                token_texts: Default::default(),
            }
        } else {
            folder_text_side(beside, &[]).with_context(|| {
                format!(
                    "{} carries no tokenizer, and none is beside it",
                    path.display()
                )
            })?
        };
        let mut notes = Vec::new();
        if let Some(q) = opts.quant {
            notes.push(format!(
                "--quant {} ignored: a GGUF file runs as it was quantized",
                q.name()
            ));
        }
        let weight_dtype = match opts.dtype {
            DTypeChoice::Auto => None,
            other => Some(choose_dtypes(other, DType::F32, &device).0),
        };
        // Quantized matrices take f32 activations; on a GPU, dense ones their own dtype.
        let act_dtype = match weight_dtype {
            Some(d) if !device.is_cpu() => d,
            _ => DType::F32,
        };
        // llama.cpp's file types 0, 1 and 32: all f32, mostly f16, mostly bf16 (nothing to repack).
        let quantized = !matches!(
            file.meta("general.file_type").and_then(gguf::number),
            Some(0.0 | 1.0 | 32.0)
        );
        let mut weights = Weights::from_gguf(file, &device, weight_dtype, act_dtype);
        if quantized {
            let size = files_bytes(&[path.to_path_buf()]) as f64;
            weights.allow_repacking(repacking_fits(size, opts.memory_available, &mut notes));
        }
        let decoder = Decoder::load(arch, &mut weights, act_dtype, &device)
            .with_context(|| format!("cannot load {}", path.display()))?;
        drop(weights);
        let loaded = Loaded {
            decoder,
            device,
            dtype: weight_dtype.unwrap_or(DType::F32),
            quant: None,
            notes,
        };
        Ok(text.into_engine(config, loaded, started))
    }
}

impl Text {
    /// Every token's text as it reads after other text (for constrained decoding; made once,
    /// on first use).
    pub fn token_texts(&self) -> &constrain::TokenTexts {
        self.token_texts
            .get_or_init(|| constrain::TokenTexts::new(&self.tokenizer))
    }

    /// Token ids for `text`. `add_special_tokens`: let the tokenizer add BOS (raw prompts); a
    /// rendered chat template already contains it, as in transformers' apply_chat_template.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .to_vec())
    }
}
