//! config.json, normalised once so that every architecture adapter reads the same keys.
//!
//! Files written by transformers 5 move `rope_theta` / `rope_scaling` under `rope_parameters`;
//! candle reads the old keys and would silently fall back to defaults, so they are moved back
//! here. A rope scaling owrun cannot honour is an error rather than wrong tokens.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub model_type: String,
    pub architecture: String,
    /// Context length (max_position_embeddings).
    pub context: usize,
    pub eos_token_ids: Vec<u32>,
    /// The normalised JSON, for the architecture's own config struct.
    pub raw: Value,
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let raw: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
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
        if model_type == "llama" {
            if let Some(Value::Object(rs)) = obj.get("rope_scaling") {
                let t = rs.get("rope_type").and_then(Value::as_str).unwrap_or("");
                if t != "llama3" && t != "default" {
                    bail!("rope scaling {t:?} is not supported for llama (only llama3)");
                }
            }
        }
        let context = obj
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .unwrap_or(2048) as usize;
        let eos_token_ids = token_ids(obj.get("eos_token_id"));
        // owrun handles BOS/EOS itself; some candle configs only take a single id.
        obj.remove("eos_token_id");
        obj.remove("bos_token_id");
        fill_family_defaults(&model_type, obj);
        Ok(ModelConfig {
            model_type,
            architecture,
            context,
            eos_token_ids,
            raw,
        })
    }
}

/// Fill in what real config.json files leave out or spell differently, with transformers'
/// defaults, so candle's config structs load them.
fn fill_family_defaults(model_type: &str, obj: &mut serde_json::Map<String, Value>) {
    let num = |obj: &serde_json::Map<String, Value>, k: &str| obj.get(k).and_then(Value::as_u64);
    let set_default = |obj: &mut serde_json::Map<String, Value>, k: &str, v: Value| {
        if obj.get(k).is_none_or(Value::is_null) {
            obj.insert(k.to_string(), v);
        }
    };
    let layers = num(obj, "num_hidden_layers").unwrap_or(0);
    let max_pos = num(obj, "max_position_embeddings").unwrap_or(4096);
    let head_dim = match (num(obj, "hidden_size"), num(obj, "num_attention_heads")) {
        (Some(h), Some(n)) if n > 0 => h / n,
        _ => 0,
    };
    set_default(obj, "hidden_act", Value::from("silu"));
    set_default(obj, "tie_word_embeddings", Value::from(false));
    set_default(obj, "attention_bias", Value::from(false));
    if let Some(n) = num(obj, "num_attention_heads") {
        set_default(obj, "num_key_value_heads", Value::from(n));
    }
    match model_type {
        "qwen2" | "qwen3" => {
            set_default(obj, "use_sliding_window", Value::from(false));
            set_default(obj, "max_window_layers", Value::from(layers));
            if model_type == "qwen2" {
                // Qwen2.5 files say null (the window is off); candle wants a number.
                set_default(obj, "sliding_window", Value::from(max_pos));
            } else {
                set_default(obj, "head_dim", Value::from(head_dim));
            }
        }
        "mixtral" => {
            set_default(obj, "sliding_window", Value::from(max_pos));
            set_default(obj, "use_flash_attn", Value::from(false));
        }
        "phi3" => {
            if let Some(Value::Object(rs)) = obj.get_mut("rope_scaling") {
                // Early Phi-3 files call LongRoPE "su".
                if rs.get("type").and_then(Value::as_str) == Some("su") {
                    rs.insert("type".into(), Value::from("longrope"));
                }
            }
        }
        "gemma" | "gemma2" | "gemma3" | "gemma3_text" => {
            // transformers uses the tanh GELU for every Gemma, whatever hidden_act says.
            let act = obj
                .get("hidden_activation")
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or(Value::from("gelu_pytorch_tanh"));
            obj.remove("hidden_act");
            obj.insert("hidden_activation".into(), act);
            set_default(obj, "head_dim", Value::from(head_dim));
            let hd = num(obj, "head_dim").unwrap_or(head_dim);
            set_default(obj, "query_pre_attn_scalar", Value::from(hd));
            if model_type != "gemma" {
                set_default(obj, "rope_local_base_freq", Value::from(10_000.0));
                // transformers 5 keeps the pattern as `_sliding_window_pattern` and lists the
                // layer types: every Nth layer is global.
                let pattern = num(obj, "_sliding_window_pattern")
                    .or_else(|| {
                        obj.get("layer_types")
                            .and_then(Value::as_array)
                            .and_then(|t| t.iter().position(|x| x == "full_attention"))
                            .map(|i| i as u64 + 1)
                    })
                    .unwrap_or(6);
                set_default(obj, "sliding_window_pattern", Value::from(pattern));
                set_default(obj, "sliding_window", Value::from(max_pos));
            }
        }
        _ => {}
    }
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

    #[test]
    fn unsupported_rope_scaling_is_an_error() {
        let err = ModelConfig::from_value(serde_json::json!({
            "model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("dynamic"));
    }
}
