//! What makes one family differ from another, as data: the decoder reads an [`Arch`] and never
//! asks which family it runs. Built from the normalised config.json (see `config`).

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::rope::Rope;
use crate::engine::format::config::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// The tanh approximation of GELU (every Gemma, whatever its config says).
    GeluTanh,
}

/// How a layer's attention sees the sequence.
#[derive(Debug, Clone)]
pub struct LayerAttention {
    /// A query at position i sees keys j with i - window < j <= i (None: every earlier key).
    pub window: Option<usize>,
    /// Index into [`Arch::ropes`].
    pub rope: usize,
}

#[derive(Debug, Clone)]
pub struct Arch {
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Independent of hidden / heads (Gemma 3, Qwen3).
    pub head_dim: usize,
    pub norm_eps: f64,
    /// Gemma stores RMSNorm gains as offsets from 1.
    pub norm_plus_one: bool,
    /// Gemma multiplies embeddings by sqrt(hidden).
    pub embed_scale: Option<f64>,
    pub activation: Activation,
    /// Gemma 2 / 3: norms after attention and around the MLP as well as before.
    pub sandwich_norms: bool,
    /// Multiplies q·k (1/sqrt(head_dim), or Gemma's query_pre_attn_scalar).
    pub attention_scale: f64,
    pub attention_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub tied_embeddings: bool,
    /// Phi-3: q/k/v in one `qkv_proj`, gate and up in one `gate_up_proj`.
    pub fused_projections: bool,
    /// Mixtral: (experts, experts per token).
    pub moe: Option<(usize, usize)>,
    pub layers: Vec<LayerAttention>,
    /// Rotary embeddings: [global] or [global, local] (Gemma 3's sliding layers).
    pub ropes: Vec<Rope>,
    /// Positions the model was trained for.
    pub context: usize,
}

fn get<'a>(raw: &'a Value, key: &str) -> Option<&'a Value> {
    raw.get(key).filter(|v| !v.is_null())
}

fn usize_of(raw: &Value, key: &str) -> Option<usize> {
    get(raw, key).and_then(Value::as_u64).map(|v| v as usize)
}

fn f64_of(raw: &Value, key: &str) -> Option<f64> {
    get(raw, key).and_then(Value::as_f64)
}

fn need(raw: &Value, key: &str) -> Result<usize> {
    usize_of(raw, key).with_context(|| format!("config.json lacks {key}"))
}

pub const SUPPORTED: &str = "llama, mistral, mixtral, phi3, gemma, gemma2, gemma3, qwen2, qwen3";

impl Arch {
    /// Each layer's sliding window, if it has one.
    pub fn windows(&self) -> Vec<Option<usize>> {
        self.layers.iter().map(|l| l.window).collect()
    }

    pub fn from_config(config: &ModelConfig) -> Result<Arch> {
        let raw = &config.raw;
        let mt = config.model_type.as_str();
        let family = match mt {
            "gemma3_text" => "gemma3",
            "llama" | "mistral" | "mixtral" | "phi3" | "gemma" | "gemma2" | "gemma3" | "qwen2"
            | "qwen3" => mt,
            other => bail!(
                "architecture {other:?} ({}) is not supported yet; supported: {SUPPORTED}",
                config.architecture
            ),
        };
        let gemma = family.starts_with("gemma");
        let hidden = need(raw, "hidden_size")?;
        let heads = need(raw, "num_attention_heads")?;
        let kv_heads = usize_of(raw, "num_key_value_heads").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            bail!("config.json: {heads} attention heads cannot share {kv_heads} key/value heads");
        }
        let head_dim = usize_of(raw, "head_dim").unwrap_or(hidden / heads);
        let layers = need(raw, "num_hidden_layers")?;
        let context = config.context;
        let theta = f64_of(raw, "rope_theta").unwrap_or(10_000.0);
        let partial = f64_of(raw, "partial_rotary_factor").unwrap_or(1.0);
        let scaling = get(raw, "rope_scaling");
        let original = usize_of(raw, "original_max_position_embeddings");
        let mut ropes = vec![Rope::new(
            head_dim, partial, theta, scaling, context, original,
        )?];

        // Which layers attend through a sliding window.
        let window = usize_of(raw, "sliding_window");
        let layer_types: Option<Vec<bool>> = get(raw, "layer_types")
            .and_then(Value::as_array)
            .map(|t| t.iter().map(|x| x == "sliding_attention").collect());
        let sliding: Vec<bool> = match family {
            "mistral" | "mixtral" | "phi3" => vec![window.is_some(); layers],
            "gemma2" => layer_types.unwrap_or_else(|| (0..layers).map(|i| i % 2 == 0).collect()),
            "gemma3" => layer_types.unwrap_or_else(|| {
                let pattern = usize_of(raw, "sliding_window_pattern")
                    .or_else(|| usize_of(raw, "_sliding_window_pattern"))
                    .unwrap_or(6)
                    .max(1);
                (0..layers).map(|i| (i + 1) % pattern != 0).collect()
            }),
            "qwen2" | "qwen3" => {
                let on = get(raw, "use_sliding_window").and_then(Value::as_bool) == Some(true);
                let from = usize_of(raw, "max_window_layers").unwrap_or(layers);
                match layer_types {
                    Some(t) if on => t,
                    _ => (0..layers).map(|i| on && i >= from).collect(),
                }
            }
            _ => vec![false; layers],
        };
        if sliding.len() != layers {
            bail!(
                "config.json lists {} layer types for {layers} layers",
                sliding.len()
            );
        }
        if sliding.iter().any(|&s| s) && window.is_none() {
            bail!("config.json has sliding-window layers but no sliding_window");
        }
        // Gemma 3's sliding layers rotate with their own base frequency and no scaling.
        let local_rope = if family == "gemma3" {
            let local = f64_of(raw, "rope_local_base_freq").unwrap_or(10_000.0);
            ropes.push(Rope::new(
                head_dim, partial, local, None, context, original,
            )?);
            1
        } else {
            0
        };
        let layers = sliding
            .iter()
            .map(|&s| LayerAttention {
                window: if s { window } else { None },
                rope: if s { local_rope } else { 0 },
            })
            .collect();

        let query_scalar = if gemma && family != "gemma" {
            f64_of(raw, "query_pre_attn_scalar").unwrap_or(head_dim as f64)
        } else {
            head_dim as f64
        };
        let moe = (family == "mixtral")
            .then(|| -> Result<(usize, usize)> {
                Ok((
                    need(raw, "num_local_experts")?,
                    need(raw, "num_experts_per_tok")?,
                ))
            })
            .transpose()?;
        Ok(Arch {
            vocab_size: need(raw, "vocab_size")?,
            hidden,
            intermediate: need(raw, "intermediate_size")?,
            heads,
            kv_heads,
            head_dim,
            norm_eps: f64_of(raw, "rms_norm_eps").unwrap_or(1e-6),
            norm_plus_one: gemma,
            embed_scale: gemma.then(|| (hidden as f64).sqrt()),
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            sandwich_norms: family == "gemma2" || family == "gemma3",
            attention_scale: 1.0 / query_scalar.sqrt(),
            attention_softcap: f64_of(raw, "attn_logit_softcapping"),
            final_softcap: f64_of(raw, "final_logit_softcapping"),
            tied_embeddings: get(raw, "tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(gemma),
            fused_projections: family == "phi3",
            moe,
            layers,
            ropes,
            context,
        })
    }
}
