//! config.json, normalised once so that `arch` reads the same keys from every file.
//!
//! Files written by transformers 5 move `rope_theta` / `rope_scaling` under `rope_parameters`
//! (one map per layer type for Gemma 3); they are moved back to the classic keys here.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The context length of a model whose files do not give one: transformers' default for Llama
/// (`max_position_embeddings` 2048). Real checkpoints and GGUF files state theirs.
pub const DEFAULT_CONTEXT: usize = 2048;

/// Where a config.json made from a GGUF file's metadata notes the GGUF key behind each of its
/// keys (for errors).
pub const GGUF_KEYS: &str = "_gguf_keys";

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub model_type: String,
    pub architecture: String,
    /// Context length (max_position_embeddings).
    pub context: usize,
    pub eos_token_ids: Vec<u32>,
    /// The normalised JSON.
    pub raw: Value,
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let raw = super::json::read_json(&path)?
            .with_context(|| format!("cannot read {}: no such file", path.display()))?;
        Self::from_value(raw).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_value(mut raw: Value) -> Result<Self> {
        let Some(obj) = raw.as_object_mut() else {
            bail!("config.json is not a JSON object");
        };
        // transformers 5: rope_parameters {rope_theta, rope_type, factor, ...}, or one such map per
        // layer type (Gemma 3: full_attention / sliding_attention).
        if let Some(Value::Object(rp)) = obj.remove("rope_parameters") {
            let (main, local) = match rp.get("full_attention") {
                Some(Value::Object(full)) => (full.clone(), rp.get("sliding_attention").cloned()),
                _ => (rp.clone(), None),
            };
            if let Some(theta) = main.get("rope_theta") {
                obj.entry("rope_theta").or_insert(theta.clone());
            }
            if let Some(theta) = local.as_ref().and_then(|l| l.get("rope_theta")) {
                obj.entry("rope_local_base_freq").or_insert(theta.clone());
            }
            if let Some(f) = main.get("partial_rotary_factor") {
                obj.entry("partial_rotary_factor").or_insert(f.clone());
            }
            let rope_type = main
                .get("rope_type")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if rope_type != "default" {
                obj.insert("rope_scaling".into(), Value::Object(main.clone()));
            }
        }
        // Older files spell the rope type `type`.
        if let Some(Value::Object(rs)) = obj.get_mut("rope_scaling") {
            if !rs.contains_key("rope_type") {
                if let Some(t) = rs.get("type").cloned() {
                    rs.insert("rope_type".into(), t);
                }
            }
        }
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .context("config.json has no model_type")?
            .to_string();
        let architecture = obj
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .unwrap_or(&model_type)
            .to_string();
        let context = obj
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_CONTEXT, |n| n as usize);
        let eos_token_ids = token_ids(obj.get("eos_token_id"));
        Ok(ModelConfig {
            model_type,
            architecture,
            context,
            eos_token_ids,
            raw,
        })
    }
}

impl ModelConfig {
    /// How the file a value came from names `key`: `llama.block_count` for a GGUF file's
    /// metadata, `config.json's num_hidden_layers` otherwise.
    pub fn field_name(&self, key: &str) -> String {
        match self
            .raw
            .get(GGUF_KEYS)
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
        {
            Some(name) => name.to_string(),
            None => format!("config.json's {key}"),
        }
    }
}

/// Whether the model in `dir` stores its weights in 32 bits (config.json's torch_dtype / dtype;
/// a config that does not say is taken as 32-bit, transformers' default).
pub fn stores_32_bit(dir: &Path) -> bool {
    super::json::read_json(&dir.join("config.json"))
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

/// An id or a list of ids (config.json and generation_config.json use both).
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers5_rope_parameters_are_moved_back() {
        let c = ModelConfig::from_value(serde_json::json!({
            "model_type": "llama",
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192},
            "eos_token_id": [128001, 128008]
        }))
        .unwrap();
        assert_eq!(c.raw["rope_theta"], 500000.0);
        assert_eq!(c.raw["rope_scaling"]["rope_type"], "llama3");
        assert_eq!(c.eos_token_ids, [128001, 128008]);
    }
}
