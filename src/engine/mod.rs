//! The inference engine: device and dtype, the model behind one interface, tokenizer, chat
//! template, sampler, generation loop and streaming detokenizer. It knows nothing of terminals
//! or HTTP: front ends hand it tokens and receive text.

pub mod config;
pub mod detok;
pub mod generate;
pub mod model;
#[cfg(test)]
mod parity_tests;
pub mod reasoning;
pub mod sampler;
pub mod session;
pub mod template;
pub mod windowed;

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::usage;
use crate::store::weight_files;
use config::{token_ids, ModelConfig};
use model::Model;
use sampler::SamplingParams;
use template::ChatTemplate;

/// How to load: `--device` and `--dtype` as the user gave them.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: String,
    pub dtype: String,
}

pub struct Engine {
    pub model: Box<dyn Model>,
    pub tokenizer: Tokenizer,
    pub config: ModelConfig,
    pub template: Option<ChatTemplate>,
    /// End-of-sequence ids: config.json ∪ generation_config.json ∪ the tokenizer's eos token.
    pub eos: Vec<u32>,
    /// Sampling defaults from generation_config.json.
    pub sampling: SamplingParams,
    pub load_s: f64,
    pub device: Device,
    pub dtype: DType,
}

pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
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
        "metal" => Device::new_metal(0).map_err(|e| {
            anyhow!("--device metal: {e} (this owrun was built without the `metal` feature?)")
        }),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .map(|n| n.parse())
                .transpose()
                .map_err(|_| usage(format!("--device {s}: expected cuda or cuda:N")))?
                .unwrap_or(0);
            Device::new_cuda(n).map_err(|e| {
                anyhow!(
                    "--device {s}: {e} (build owrun with `--features cuda` and check the NVIDIA driver)"
                )
            })
        }
        other => Err(usage(format!(
            "--device {other:?}: expected auto, cpu, cuda, cuda:N or metal"
        ))),
    }
}

/// The dtype to compute in. `auto`: the checkpoint's own on a GPU; on CPU, f16 checkpoints stay
/// f16 and everything else runs in f32 (candle's CPU matmul has no bf16).
fn choose_dtype(spec: &str, config: &ModelConfig, device: &Device) -> Result<DType> {
    let stored = config
        .raw
        .get("torch_dtype")
        .or_else(|| config.raw.get("dtype"))
        .and_then(Value::as_str)
        .unwrap_or("float32");
    let dtype = match spec.trim().to_ascii_lowercase().as_str() {
        "auto" => match (stored, device.is_cpu()) {
            ("float16", _) => DType::F16,
            ("bfloat16", false) => DType::BF16,
            _ => DType::F32,
        },
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => {
            return Err(usage(format!(
                "--dtype {other:?}: expected auto, f32, f16 or bf16"
            )))
        }
    };
    if dtype == DType::BF16 && device.is_cpu() {
        return Err(usage(
            "--dtype bf16 is not supported on CPU (candle has no bf16 matmul there); use f32 or f16",
        ));
    }
    Ok(dtype)
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

impl Engine {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Engine> {
        let started = Instant::now();
        let config = ModelConfig::load(dir)?;
        let device = parse_device(&opts.device)?;
        let dtype = choose_dtype(&opts.dtype, &config, &device)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("cannot load {}: {e}", tok_path.display()))?;
        let template = ChatTemplate::load(dir)?;

        let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let mut eos = config.eos_token_ids.clone();
        eos.extend(token_ids(gen.get("eos_token_id")));
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let eos_text = match tc.get("eos_token") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        if let Some(id) = eos_text.and_then(|t| tokenizer.token_to_id(&t)) {
            eos.push(id);
        }
        eos.sort_unstable();
        eos.dedup();

        let mut sampling = SamplingParams::default();
        let f = |k: &str| gen.get(k).and_then(Value::as_f64);
        if gen.get("do_sample").and_then(Value::as_bool) == Some(false) {
            sampling.temperature = 0.0;
        } else if let Some(t) = f("temperature") {
            sampling.temperature = t as f32;
        }
        if let Some(v) = gen.get("top_k").and_then(Value::as_u64) {
            sampling.top_k = v as usize;
        }
        if let Some(v) = f("top_p") {
            sampling.top_p = v as f32;
        }
        if let Some(v) = f("min_p") {
            sampling.min_p = v as f32;
        }
        if let Some(v) = f("repetition_penalty") {
            sampling.repeat_penalty = v as f32;
        }

        let weights = weight_files(dir);
        if weights.is_empty() {
            return Err(anyhow!("{} has no safetensors weights", dir.display()));
        }
        let model = model::load(&config, &weights, dtype, &device)?;
        Ok(Engine {
            model,
            tokenizer,
            config,
            template,
            eos,
            sampling,
            load_s: started.elapsed().as_secs_f64(),
            device,
            dtype,
        })
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
