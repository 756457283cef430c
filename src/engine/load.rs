//! One loaded model, [`Engine`]: the weights on a device, the text side beside them and the
//! model's sampling defaults. Two loaders: a Hugging Face folder (safetensors, quantized at load
//! when asked) and a GGUF file (tensors as stored).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device};
use serde_json::Value;

use super::device::{choose_dtypes, open_device, DTypeChoice, DeviceChoice, LoadError};
use super::format::config::ModelConfig;
use super::format::gguf::GgufFile;
use super::format::json::read_json;
use super::format::{gguf_vocab, safetensors};
use super::generate::sampler::SamplingParams;
use super::model::arch::Arch;
use super::model::decoder::Decoder;
use super::model::kv::{cache_bytes as kv_cache_bytes, KvType};
use super::model::lora;
use super::model::weights::Weights;
use super::model::{use_threads, Model};
use super::quantize::cache::QuantCache;
use super::quantize::Scheme;
use super::text::template::ChatTemplate;
use super::text::Text;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Threads of the CPU kernels (None: one per core).
    pub threads: Option<NonZeroUsize>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Quantize the matrices under this scheme (the rest keeps `dtype`).
    pub quant: Option<Scheme>,
    /// Where quantized matrices are cached between loads (None: not cached).
    pub quant_cache: Option<PathBuf>,
    /// How the KV cache stores keys and values on the CPU.
    pub kv_type: KvType,
    /// Positions a sequence may hold (None: the model's context).
    pub context: Option<usize>,
    /// LoRA adapters applied beside the weights: each a PEFT folder or a GGUF adapter file,
    /// with a multiplier of its scale.
    pub adapters: Vec<(PathBuf, f32)>,
    /// Merge the adapters into the weights at load instead (`--lora-merge`).
    pub merge_adapters: bool,
}

pub struct Engine {
    pub model: Model,
    /// Tokenizer, template and end-of-sequence ids: shared with the threads that prepare
    /// prompts while the model computes (the server's).
    pub text: Arc<Text>,
    /// The model's sampling defaults (generation_config.json).
    pub sampling: SamplingParams,
    pub load_s: f64,
    pub device: Device,
    /// The dtype the weights are held in (the dense ones, under a quantization scheme).
    pub dtype: DType,
    pub quant: Option<Scheme>,
    /// What happened while loading that a user may want to know (printed by front ends).
    pub notes: Vec<String>,
}

/// The weight side of a loaded model.
struct Loaded {
    decoder: Decoder,
    device: Device,
    dtype: DType,
    quant: Option<Scheme>,
    notes: Vec<String>,
}

fn engine(
    text: Text,
    sampling: SamplingParams,
    mut loaded: Loaded,
    started: Instant,
    opts: &LoadOptions,
) -> Result<Engine> {
    let decoder = &mut loaded.decoder;
    if decoder.device.is_cpu() {
        opts.kv_type
            .check(decoder.arch.head_dim)
            .map_err(|e| LoadError::Unsuitable(format!("--kv-type: {e}")))?;
    }
    decoder.kv_type = opts.kv_type;
    let trained = decoder.arch.context;
    let mut notes = loaded.notes;
    let mut model = Model::new(loaded.decoder);
    if let Some(n) = opts.context {
        if n > trained {
            notes.push(format!(
                "a context of {n} tokens is past the {trained} this model was trained for"
            ));
        }
        model.set_context(n);
    }
    Ok(Engine {
        model,
        text: Arc::new(text),
        sampling,
        load_s: started.elapsed().as_secs_f64(),
        device: loaded.device,
        dtype: loaded.dtype,
        quant: loaded.quant,
        notes,
    })
}

/// Give `weights` the adapters `opts` names (errors are the user's to fix).
fn use_adapters(
    opts: &LoadOptions,
    config: &ModelConfig,
    arch: &Arch,
    model_path: &Path,
    device: &Device,
    weights: &mut Weights,
    notes: &mut Vec<String>,
) -> Result<()> {
    let adapters = lora::open(
        &opts.adapters,
        opts.merge_adapters,
        arch,
        &config.model_type,
        model_path,
        device,
        notes,
    )
    .map_err(|e| LoadError::Unsuitable(format!("{e:#}")))?;
    if let Some(a) = adapters {
        weights.use_adapters(a);
    }
    Ok(())
}

/// The text side and sampling defaults of a Hugging Face folder: tokenizer.json,
/// tokenizer_config.json, generation_config.json, plus config.json's end-of-sequence ids.
fn folder_text_side(dir: &Path, config_eos: &[u32]) -> Result<(Text, SamplingParams)> {
    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
    let text = Text::from_folder(dir, config_eos, &generation)?;
    let sampling = SamplingParams::from_generation_config(&generation)
        .with_context(|| format!("in {}", dir.join("generation_config.json").display()))?;
    Ok((text, sampling))
}

/// What the KV cache of the model at `path` (a folder or a GGUF file) takes in `ty`, read from
/// its configuration alone: bytes per token, its context, and bytes at that whole context.
/// What `owrun show` says of a GGUF model, once its tables are checked.
pub struct GgufSummary {
    /// The file, then its other shards.
    pub parts: Vec<PathBuf>,
    pub arch: String,
    /// Tensors per block type, most first.
    pub types: Vec<(String, usize)>,
}

pub fn gguf_summary(path: &Path) -> Result<GgufSummary> {
    let g = GgufFile::open(path)?;
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for ty in g.tensor_types() {
        *types.entry(ty.name().to_string()).or_default() += 1;
    }
    let mut types: Vec<(String, usize)> = types.into_iter().collect();
    types.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(GgufSummary {
        parts: g.part_paths(),
        arch: g.arch.clone(),
        types,
    })
}

pub fn kv_cache_size(path: &Path, ty: KvType) -> Result<(usize, usize, usize)> {
    let config = if path.is_file() {
        ModelConfig::from_value(GgufFile::open(path)?.config_json()?)?
    } else {
        ModelConfig::load(path)?
    };
    let arch = Arch::from_config(&config)?;
    let size = |n| kv_cache_bytes(&arch, ty, n);
    Ok((size(1), arch.context, size(arch.context)))
}

impl Engine {
    /// Load the model in `dir` (config, tokenizer, template) with the safetensors `files`.
    pub fn load(dir: &Path, files: &[PathBuf], opts: &LoadOptions) -> Result<Engine> {
        let started = Instant::now();
        use_threads(opts.threads);
        let config = ModelConfig::load(dir)?;
        let arch = Arch::from_config(&config)
            .with_context(|| format!("in {}", dir.join("config.json").display()))?;
        let device = open_device(opts.device)?;
        let (text, sampling) = folder_text_side(dir, &config.eos_token_ids)?;
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
            let cache = QuantCache::open(opts.quant_cache.clone(), scheme, files);
            if !cache.hit() {
                notes.push(format!(
                    "quantizing the weights to {} (once: the result is cached)",
                    scheme.name()
                ));
            }
            weights.quantize_with(scheme, arch.layers.len(), cache);
        }
        use_adapters(opts, &config, &arch, dir, &device, &mut weights, &mut notes)?;
        let decoder = Decoder::load(arch, &mut weights, act_dtype, &device)
            .with_context(|| format!("cannot load {}", safetensors::describe(files)))?;
        weights
            .check_adapters()
            .map_err(|e| LoadError::Unsuitable(format!("{e:#}")))?;
        notes.extend(weights.merge_note());
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
        engine(text, sampling, loaded, started, opts)
    }

    /// Load a GGUF file: hyperparameters, tokenizer and chat template from its metadata (or,
    /// when it carries no tokenizer, from the Hugging Face files beside it), tensors as stored.
    pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Engine> {
        let started = Instant::now();
        use_threads(opts.threads);
        let mut file = GgufFile::open(path)?;
        let config = ModelConfig::from_value(file.config_json()?)
            .with_context(|| format!("in {}", path.display()))?;
        let arch = Arch::from_config(&config).with_context(|| format!("in {}", path.display()))?;
        let device = open_device(opts.device)?;
        let beside = path.parent().unwrap_or(Path::new("."));
        let (text, sampling) = if file.meta("tokenizer.ggml.model").is_some() {
            let v = gguf_vocab::from_gguf(&file)?;
            let template = v
                .chat_template
                .map(|source| ChatTemplate::new(source, v.bos_text, v.eos_text));
            let text = Text::new(v.tokenizer, template, v.eos);
            (text, SamplingParams::default())
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
        let mut weights = Weights::from_gguf(file, &device, weight_dtype, act_dtype);
        use_adapters(
            opts,
            &config,
            &arch,
            path,
            &device,
            &mut weights,
            &mut notes,
        )?;
        let decoder = Decoder::load(arch, &mut weights, act_dtype, &device)
            .with_context(|| format!("cannot load {}", path.display()))?;
        weights
            .check_adapters()
            .map_err(|e| LoadError::Unsuitable(format!("{e:#}")))?;
        notes.extend(weights.merge_note());
        drop(weights);
        let loaded = Loaded {
            decoder,
            device,
            dtype: weight_dtype.unwrap_or(DType::F32),
            quant: None,
            notes,
        };
        engine(text, sampling, loaded, started, opts)
    }
}
