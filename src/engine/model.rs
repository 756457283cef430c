//! One interface over candle-transformers' architectures, chosen by config.json.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma, gemma3, llama, mixtral, phi3, qwen2, qwen3};

use super::config::ModelConfig;
use super::windowed::{Flavour, Windowed};

/// A causal language model with a KV cache.
pub trait Model {
    /// Run `tokens` (new tokens only) starting at position `pos` of the sequence and return the
    /// logits (f32, vocab-sized) for the next token after the last of them.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>>;
    /// Forget the sequence: the next forward starts a new one at position 0.
    fn reset(&mut self) -> Result<()>;
}

/// Build the model for `config` from the safetensors files, memory-mapped.
pub fn load(
    config: &ModelConfig,
    weights: &[std::path::PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Model>> {
    // SAFETY: the files are memory-mapped read-only; owrun never writes them while they are
    // mapped, and the store's files are only ever replaced by rename, never rewritten in place.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(weights, dtype, device) }
        .with_context(|| format!("cannot map weights {}", describe(weights)))?;
    // candle-transformers' loaders unwrap some lookups (Llama's per-layer loop): a checkpoint
    // that lacks a tensor must be an error for the user, not a panic with a backtrace.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        build(config, vb, dtype, device)
    }));
    std::panic::set_hook(previous_hook);
    match built {
        Ok(result) => result,
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!(
                "the weights do not fit config.json ({}): {why}",
                config.architecture
            )
        }
    }
}

fn build(
    config: &ModelConfig,
    vb: VarBuilder<'static>,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Model>> {
    let cfg = &config.raw;
    // owrun's own implementation, for families whose candle version ignores the sliding window.
    let windowed = |flavour: Flavour, family: &str, vb| -> Result<Box<dyn Model>> {
        Ok(Box::new(Windowed::load(
            flavour,
            parse(cfg, family)?,
            vb,
            device,
        )?))
    };
    let model: Box<dyn Model> = match config.model_type.as_str() {
        "llama" => Box::new(Llama::load(config, vb, dtype, device)?),
        "mistral" => windowed(Flavour::Mistral, "Mistral", vb)?,
        "mixtral" => {
            let c: mixtral::Config = parse(cfg, "Mixtral")?;
            Box::new(Mixtral {
                model: Candle::new(mixtral::Model::new(&c, vb.clone())?, device),
                config: c,
                vb,
            })
        }
        // A Phi-3 with a real sliding window (Phi-3-mini-4k) needs owrun's own attention;
        // the LongRoPE / partial-rotary ones (Phi-3.5, Phi-4-mini) have no effective window.
        "phi3" if phi3_needs_window(cfg) => windowed(Flavour::Phi3, "Phi-3", vb)?,
        "phi3" => {
            let c: phi3::Config = parse(cfg, "Phi-3")?;
            Box::new(Candle::new(phi3::Model::new(&c, vb)?, device))
        }
        "gemma" => {
            let c: gemma::Config = parse(cfg, "Gemma")?;
            Box::new(Candle::new(gemma::Model::new(false, &c, vb)?, device))
        }
        "gemma2" => windowed(Flavour::Gemma2, "Gemma 2", vb)?,
        "gemma3" | "gemma3_text" => {
            let c: gemma3::Config = parse(cfg, "Gemma 3")?;
            let mut m = Candle::new(gemma3::Model::new(false, &c, vb)?, device);
            // candle's gemma3 is only right for a multi-token forward that ends within the
            // sliding window (past it: wrong logits, or a shape error when the cache already
            // holds tokens; tests/fixtures/models/gemma3 shows it). Past the window, feed
            // tokens one at a time.
            m.multi_token_limit = cfg["sliding_window"].as_u64().map(|w| w.max(1) as usize);
            Box::new(m)
        }
        "qwen2" => {
            let c: qwen2::Config = parse(cfg, "Qwen2")?;
            Box::new(Candle::new(qwen2::ModelForCausalLM::new(&c, vb)?, device))
        }
        "qwen3" => {
            let c: qwen3::Config = parse(cfg, "Qwen3")?;
            Box::new(Candle::new(qwen3::ModelForCausalLM::new(&c, vb)?, device))
        }
        other => bail!(
            "architecture {other:?} ({}) is not supported yet; supported: llama, mistral, \
             mixtral, phi3, gemma, gemma2, gemma3, qwen2, qwen3",
            config.architecture
        ),
    };
    Ok(model)
}

fn phi3_needs_window(cfg: &serde_json::Value) -> bool {
    let window = cfg["sliding_window"].as_u64();
    let max_pos = cfg["max_position_embeddings"].as_u64().unwrap_or(0);
    let partial = cfg["partial_rotary_factor"].as_f64().unwrap_or(1.0);
    window.is_some_and(|w| w < max_pos) && cfg["rope_scaling"].is_null() && partial == 1.0
}

fn parse<T: serde::de::DeserializeOwned>(raw: &serde_json::Value, family: &str) -> Result<T> {
    serde_json::from_value(raw.clone())
        .with_context(|| format!("config.json is not a valid {family} config"))
}

/// What candle-transformers' causal LMs (other than Llama) have in common.
trait CandleLm {
    fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor>;
    fn clear_kv_cache(&mut self);
}

macro_rules! candle_lm {
    ($($t:ty),*) => {$(
        impl CandleLm for $t {
            fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
                <$t>::forward(self, input, pos)
            }
            fn clear_kv_cache(&mut self) {
                <$t>::clear_kv_cache(self)
            }
        }
    )*};
}
candle_lm!(
    phi3::Model,
    gemma::Model,
    gemma3::Model,
    qwen2::ModelForCausalLM,
    qwen3::ModelForCausalLM
);

impl CandleLm for mixtral::Model {
    fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        mixtral::Model::forward(self, input, pos)
    }
    fn clear_kv_cache(&mut self) {
        // candle's Mixtral has no cache reset; the Mixtral adapter rebuilds the model instead.
    }
}

struct Candle<M> {
    model: M,
    device: Device,
    /// Multi-token forwards only while they end within this many positions (None: always).
    multi_token_limit: Option<usize>,
}

impl<M: CandleLm> Candle<M> {
    fn new(model: M, device: &Device) -> Self {
        Candle {
            model,
            device: device.clone(),
            multi_token_limit: None,
        }
    }
}

impl<M: CandleLm> Model for Candle<M> {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        let mut logits = None;
        let mut done = 0;
        while done < tokens.len() {
            let at = pos + done;
            let left = tokens.len() - done;
            let take = match self.multi_token_limit {
                Some(limit) if at + left > limit => limit.saturating_sub(at).max(1),
                _ => left,
            };
            let part = &tokens[done..done + take];
            let input = Tensor::new(part, &self.device)?.unsqueeze(0)?;
            logits = Some(self.model.forward(&input, at)?);
            done += take;
        }
        let logits = logits.context("forward over no tokens")?;
        Ok(logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    fn reset(&mut self) -> Result<()> {
        self.model.clear_kv_cache();
        Ok(())
    }
}

struct Mixtral {
    model: Candle<mixtral::Model>,
    config: mixtral::Config,
    vb: VarBuilder<'static>,
}

impl Model for Mixtral {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        self.model.forward(tokens, pos)
    }

    fn reset(&mut self) -> Result<()> {
        self.model.model = mixtral::Model::new(&self.config, self.vb.clone())?;
        Ok(())
    }
}

fn describe(weights: &[std::path::PathBuf]) -> String {
    match weights {
        [one] => one.display().to_string(),
        many => format!(
            "({} shards in {})",
            many.len(),
            many[0].parent().unwrap_or(Path::new(".")).display()
        ),
    }
}

/// Llama 1/2/3.x, SmolLM2, DeepSeek-R1-Distill-Llama, TinyStories.
struct Llama {
    model: llama::Llama,
    cache: llama::Cache,
    config: llama::Config,
    dtype: DType,
    device: Device,
}

impl Llama {
    fn load(cfg: &ModelConfig, vb: VarBuilder, dtype: DType, device: &Device) -> Result<Self> {
        let config: llama::LlamaConfig = serde_json::from_value(cfg.raw.clone())
            .context("config.json is not a valid Llama config")?;
        let config = config.into_config(false);
        // candle's loader unwraps per layer; check the tensors it needs first so a truncated or
        // foreign checkpoint is an error, not a crash.
        for name in ["model.embed_tokens.weight", "model.norm.weight"] {
            if !vb.contains_tensor(name) {
                bail!("the weights lack {name}: not a Llama checkpoint in Hugging Face layout");
            }
        }
        for i in 0..config.num_hidden_layers {
            let name = format!("model.layers.{i}.self_attn.q_proj.weight");
            if !vb.contains_tensor(&name) {
                bail!("the weights lack {name}: truncated or foreign checkpoint");
            }
        }
        let model = llama::Llama::load(vb, &config).context("cannot load Llama weights")?;
        let cache = llama::Cache::new(true, dtype, &config, device)?;
        Ok(Llama {
            model,
            cache,
            config,
            dtype,
            device: device.clone(),
        })
    }
}

impl Model for Llama {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&input, pos, &mut self.cache)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    fn reset(&mut self) -> Result<()> {
        self.cache = llama::Cache::new(true, self.dtype, &self.config, &self.device)?;
        Ok(())
    }
}
