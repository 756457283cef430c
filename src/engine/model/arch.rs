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

/// Mixture-of-experts feed-forward layers: a router picks `top_k` of `experts` MLPs per token.
#[derive(Debug, Clone)]
pub struct Moe {
    pub experts: usize,
    pub top_k: usize,
    /// The chosen experts' weights renormalised to sum to one (Mixtral always; Qwen3-MoE's
    /// norm_topk_prob).
    pub normalize: bool,
    /// Each expert's intermediate size (Qwen's moe_intermediate_size; Mixtral's is the MLP's).
    pub intermediate: usize,
    /// Which layers route to experts; the others have a dense MLP of `Arch::intermediate`
    /// (Qwen's decoder_sparse_step and mlp_only_layers).
    pub sparse: Vec<bool>,
    /// Qwen's checkpoint names (`mlp.gate`, `mlp.experts.E.gate_proj` / `up_proj` /
    /// `down_proj`), not Mixtral's (`block_sparse_moe.gate`, `block_sparse_moe.experts.E.w1` /
    /// `w3` / `w2`).
    pub qwen_names: bool,
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
    /// Mixtral, Qwen3-MoE: experts instead of an MLP (on some layers).
    pub moe: Option<Moe>,
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

/// The limits a hyperparameter must lie within: far beyond any released model, and small enough
/// that the tables built from them (per-layer state, rope frequencies, KV rows) cannot exhaust
/// memory before the weights are compared with them.
mod limits {
    pub const HIDDEN: usize = 1 << 17;
    pub const HEADS: usize = 1 << 10;
    pub const HEAD_DIM: usize = 1 << 12;
    pub const LAYERS: usize = 1 << 10;
    pub const INTERMEDIATE: usize = 1 << 20;
    pub const VOCAB: usize = 1 << 22;
    pub const CONTEXT: usize = 1 << 24;
    pub const EXPERTS: usize = 1 << 10;
}

/// Reads config.json's keys (or, for a GGUF file, the metadata they came from) and says which
/// one is wrong, by the name its file uses.
struct Fields<'a> {
    config: &'a ModelConfig,
}

impl Fields<'_> {
    fn name(&self, key: &str) -> String {
        self.config.field_name(key)
    }

    fn count(&self, key: &str, max: usize) -> Result<Option<usize>> {
        let Some(v) = get(&self.config.raw, key) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(n) if (1..=max as u64).contains(&n) => Ok(Some(n as usize)),
            _ => bail!("{} is {v}, not a count from 1 to {max}", self.name(key)),
        }
    }

    fn need(&self, key: &str, max: usize) -> Result<usize> {
        self.count(key, max)?
            .with_context(|| format!("{} is missing", self.name(key)))
    }

    /// A positive, finite number (rope bases, epsilons, scales, caps).
    fn positive(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = get(&self.config.raw, key) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => bail!("{} is {v}, not a positive number", self.name(key)),
        }
    }
}

pub const SUPPORTED: &str =
    "llama, mistral, mixtral, phi3, gemma, gemma2, gemma3, qwen2, qwen3, qwen3_moe";

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
            | "qwen3" | "qwen3_moe" => mt,
            other => bail!(
                "architecture {other:?} ({}) is not supported yet; supported: {SUPPORTED}",
                config.architecture
            ),
        };
        let gemma = family.starts_with("gemma");
        let f = Fields { config };
        let hidden = f.need("hidden_size", limits::HIDDEN)?;
        let heads = f.need("num_attention_heads", limits::HEADS)?;
        let kv_heads = f
            .count("num_key_value_heads", limits::HEADS)?
            .unwrap_or(heads);
        if heads % kv_heads != 0 {
            bail!(
                "{heads} attention heads ({}) cannot share {kv_heads} key/value heads ({})",
                f.name("num_attention_heads"),
                f.name("num_key_value_heads")
            );
        }
        let head_dim = match f.count("head_dim", limits::HEAD_DIM)? {
            Some(d) => d,
            None if hidden % heads == 0 && hidden / heads <= limits::HEAD_DIM => hidden / heads,
            None => bail!(
                "{} {hidden} does not split into {heads} heads, and {} is not given",
                f.name("hidden_size"),
                f.name("head_dim")
            ),
        };
        let layers = f.need("num_hidden_layers", limits::LAYERS)?;
        let context = config.context;
        if !(1..=limits::CONTEXT).contains(&context) {
            bail!(
                "{} is {context}, not a context length from 1 to {}",
                f.name("max_position_embeddings"),
                limits::CONTEXT
            );
        }
        let theta = f.positive("rope_theta")?.unwrap_or(10_000.0);
        let partial = f.positive("partial_rotary_factor")?.unwrap_or(1.0);
        if partial > 1.0 || ((head_dim as f64 * partial) as usize) < 2 {
            bail!(
                "{} is {partial}: it must keep between 2 and all {head_dim} dimensions of a head",
                f.name("partial_rotary_factor")
            );
        }
        let scaling = get(raw, "rope_scaling");
        let original = f.count("original_max_position_embeddings", limits::CONTEXT)?;
        let mut ropes = vec![
            Rope::new(head_dim, partial, theta, scaling, context, original)
                .with_context(|| format!("in {}", f.name("rope_scaling")))?,
        ];

        // YaRN reaches past the stated context (Qwen2.5/3 with it added for 128k).
        let context = ropes[0]
            .extended_context
            .map_or(context, |c| c.min(limits::CONTEXT));

        // Which layers attend through a sliding window.
        let window = f.count("sliding_window", usize::MAX)?;
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
            "qwen2" | "qwen3" | "qwen3_moe" => {
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
            let local = f.positive("rope_local_base_freq")?.unwrap_or(10_000.0);
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
            f.positive("query_pre_attn_scalar")?
                .unwrap_or(head_dim as f64)
        } else {
            head_dim as f64
        };
        let intermediate = f.need("intermediate_size", limits::INTERMEDIATE)?;
        let moe = match family {
            "mixtral" => {
                let experts = f.need("num_local_experts", limits::EXPERTS)?;
                Some(Moe {
                    experts,
                    top_k: f.need("num_experts_per_tok", experts)?,
                    normalize: true,
                    intermediate,
                    sparse: vec![true; sliding.len()],
                    qwen_names: false,
                })
            }
            "qwen3_moe" => {
                // Qwen's own files say num_experts; transformers 5 writes num_local_experts.
                let experts = match f.count("num_experts", limits::EXPERTS)? {
                    Some(n) => n,
                    None => f.need("num_local_experts", limits::EXPERTS)?,
                };
                let step = f.count("decoder_sparse_step", sliding.len())?.unwrap_or(1);
                let dense: Vec<u64> = get(raw, "mlp_only_layers")
                    .and_then(Value::as_array)
                    .map(|l| l.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                Some(Moe {
                    experts,
                    top_k: f.need("num_experts_per_tok", experts)?,
                    normalize: get(raw, "norm_topk_prob").and_then(Value::as_bool) == Some(true),
                    intermediate: f.need("moe_intermediate_size", limits::INTERMEDIATE)?,
                    sparse: (0..sliding.len())
                        .map(|i| step > 0 && (i + 1) % step == 0 && !dense.contains(&(i as u64)))
                        .collect(),
                    qwen_names: true,
                })
            }
            _ => None,
        };
        let norm_eps = f.positive("rms_norm_eps")?.unwrap_or(1e-6);
        if norm_eps >= 1.0 {
            bail!(
                "{} is {norm_eps}, not a small epsilon",
                f.name("rms_norm_eps")
            );
        }
        Ok(Arch {
            vocab_size: f.need("vocab_size", limits::VOCAB)?,
            hidden,
            intermediate,
            heads,
            kv_heads,
            head_dim,
            norm_eps,
            norm_plus_one: gemma,
            embed_scale: gemma.then(|| (hidden as f64).sqrt()),
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            sandwich_norms: family == "gemma2" || family == "gemma3",
            attention_scale: 1.0 / query_scalar.sqrt(),
            attention_softcap: f.positive("attn_logit_softcapping")?,
            final_softcap: f.positive("final_logit_softcapping")?,
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
