//! One interface over candle-transformers' architectures, chosen by config.json.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;

use super::config::ModelConfig;

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
    match config.model_type.as_str() {
        "llama" => Ok(Box::new(Llama::load(config, vb, dtype, device)?)),
        other => bail!(
            "architecture {other:?} ({}) is not supported yet; supported: llama",
            config.architecture
        ),
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
