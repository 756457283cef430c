//! GGUF files as llama.cpp's converter writes them: the hyperparameters turned back into a
//! config.json (so `arch` reads GGUF and safetensors models alike), and tensors found by their
//! Hugging Face names, with the converter's changes undone (Llama's q/k row permutation, Gemma's
//! norm gains stored as 1 + w, merged expert tensors, fused Phi-3 projections).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::config::{DEFAULT_CONTEXT, GGUF_KEYS};
use super::ggml::GgmlType;
pub use super::gguf_container::MetaValue;
use super::gguf_container::{read_range, GgufContainer, TensorInfo};
use MetaValue as GValue;

/// A tensor as a GGUF file stores it: its type, its dimensions (row-major) and its bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub ty: GgmlType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Whether `path` names a GGUF file (rather than a model folder).
pub fn is_gguf_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// One file of a (possibly split) GGUF model: its tables, and the open file to read from.
struct Part {
    path: PathBuf,
    content: GgufContainer,
    file: File,
}

impl Part {
    fn open(path: &Path) -> Result<Part> {
        let content = GgufContainer::read(path)?;
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Part {
            path: path.to_path_buf(),
            content,
            file,
        })
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    /// The first (or only) file: metadata and tensors; then the other shards of a split file
    /// (gguf-split's `-0000K-of-0000N.gguf`): tensors only.
    parts: Vec<Part>,
    /// general.architecture
    pub arch: String,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let first = Part::open(path)?;
        let content = &first.content;
        let arch = match content.metadata.get("general.architecture") {
            Some(GValue::String(a)) => a.clone(),
            _ => bail!("{} has no general.architecture", path.display()),
        };
        let count = match content.metadata.get("split.count") {
            Some(v) => number(v).unwrap_or(1.0) as usize,
            None => 1,
        };
        if !(1..=1024).contains(&count) {
            bail!(
                "{}: split.count {count} is not a count of files",
                path.display()
            );
        }
        let mut parts = vec![first];
        for k in 2..=count {
            let shard = shard_path(path, k, count).with_context(|| {
                format!(
                    "{} is shard 1 of {count}, but its name does not say where the others are",
                    path.display()
                )
            })?;
            if !shard.is_file() {
                bail!(
                    "{} is split in {count} files; {} is missing",
                    path.display(),
                    shard.display()
                );
            }
            parts.push(Part::open(&shard)?);
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            parts,
            arch,
        })
    }

    /// The part that holds tensor `name`, and its entry.
    fn find(&self, name: &str) -> Option<(usize, &TensorInfo)> {
        self.parts
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.content.tensors.get(name).map(|t| (i, t)))
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.find(name).map(|(_, t)| t)
    }

    pub fn meta(&self, key: &str) -> Option<&GValue> {
        self.parts[0].content.metadata.get(key)
    }

    fn arch_meta(&self, key: &str) -> Option<&GValue> {
        self.meta(&format!("{}.{key}", self.arch))
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.arch_meta(key).and_then(number)
    }

    /// The files of the model: this one, then its other shards.
    pub fn part_paths(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.path.clone()).collect()
    }

    /// The block type of every tensor, in all parts.
    pub fn tensor_types(&self) -> impl Iterator<Item = GgmlType> + '_ {
        self.parts
            .iter()
            .flat_map(|p| p.content.tensors.values().map(|t| t.ty))
    }

    /// Rows of the embedding table: the vocabulary the weights can take.
    pub fn embedding_rows(&self) -> Option<usize> {
        self.info("token_embd.weight").map(|t| t.dims[0])
    }

    /// A tensor's stored type.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlType> {
        self.info(name).map(|t| t.ty)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.info(name).is_some()
    }

    /// The hyperparameters as a Hugging Face config.json.
    pub fn config_json(&mut self) -> Result<Value> {
        // A NaN or infinity would become JSON's null below, and then a default: refused here.
        let prefix = format!("{}.", self.arch);
        for (key, v) in &self.parts[0].content.metadata {
            if key.starts_with(&prefix) && number(v).is_some_and(|x| !x.is_finite()) {
                bail!("{key} is {v:?}, not a finite number");
            }
        }
        let experts = self.num("expert_count").unwrap_or(0.0) as usize;
        let model_type = match self.arch.as_str() {
            "llama" if experts > 0 => "mixtral",
            "llama" => "llama",
            "qwen3moe" => "qwen3_moe",
            a @ ("qwen2" | "qwen3" | "phi3" | "gemma" | "gemma2" | "gemma3") => a,
            other => bail!(
                "GGUF architecture {other:?} is not supported yet; supported: llama (Llama, \
                 Mistral, Mixtral), qwen2, qwen3, qwen3moe, phi3, gemma, gemma2, gemma3"
            ),
        };
        let need = |k: &str| {
            self.num(k)
                .with_context(|| format!("the GGUF lacks {}.{k}", self.arch))
        };
        let heads = need("attention.head_count")?;
        let mut c = Map::new();
        c.insert("model_type".into(), json!(model_type));
        c.insert(
            "architectures".into(),
            json!([format!("{} (GGUF)", self.arch)]),
        );
        c.insert(
            "hidden_size".into(),
            json!(need("embedding_length")? as u64),
        );
        let vocab = self
            .info("token_embd.weight")
            .map(|t| t.dims[0])
            .context("the GGUF has no token_embd.weight")?;
        c.insert("vocab_size".into(), json!(vocab));
        c.insert(
            "intermediate_size".into(),
            json!(need("feed_forward_length")? as u64),
        );
        c.insert(
            "num_hidden_layers".into(),
            json!(need("block_count")? as u64),
        );
        c.insert("num_attention_heads".into(), json!(heads as u64));
        c.insert(
            "num_key_value_heads".into(),
            json!(self.num("attention.head_count_kv").unwrap_or(heads) as u64),
        );
        if let Some(hd) = self.num("attention.key_length") {
            c.insert("head_dim".into(), json!(hd as u64));
        }
        c.insert(
            "rms_norm_eps".into(),
            json!(self.num("attention.layer_norm_rms_epsilon").unwrap_or(1e-6)),
        );
        c.insert(
            "rope_theta".into(),
            json!(self.num("rope.freq_base").unwrap_or(10_000.0)),
        );
        c.insert(
            "max_position_embeddings".into(),
            json!(self
                .num("context_length")
                .map_or(DEFAULT_CONTEXT as u64, |c| c as u64)),
        );
        if let Some(w) = self.num("attention.sliding_window").filter(|&w| w > 0.0) {
            c.insert("sliding_window".into(), json!(w as u64));
        }
        if experts > 0 {
            // Qwen3-MoE as llama.cpp runs it: every layer routed, the chosen weights
            // renormalised.
            let qwen = model_type == "qwen3_moe";
            let count = if qwen {
                "num_experts"
            } else {
                "num_local_experts"
            };
            c.insert(count.into(), json!(experts as u64));
            c.insert(
                "num_experts_per_tok".into(),
                json!(self.num("expert_used_count").unwrap_or(2.0) as u64),
            );
            if qwen {
                c.insert(
                    "moe_intermediate_size".into(),
                    json!(need("expert_feed_forward_length")? as u64),
                );
                c.insert("norm_topk_prob".into(), json!(true));
            }
        }
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(v) = self.num(k) {
                c.insert(k.into(), json!(v));
            }
        }
        if let Some(base) = self.num("rope.freq_base_swa") {
            c.insert("rope_local_base_freq".into(), json!(base));
        }
        match self.arch_meta("attention.sliding_window_pattern") {
            // One flag per layer (true: sliding), as newer converters write it.
            Some(GValue::Array(flags)) => {
                let types: Vec<&str> = flags
                    .iter()
                    .map(|f| match f {
                        GValue::Bool(true) => "sliding_attention",
                        _ => "full_attention",
                    })
                    .collect();
                c.insert("layer_types".into(), json!(types));
            }
            Some(p) => {
                if let Some(p) = number(p) {
                    c.insert("sliding_window_pattern".into(), json!(p as u64));
                }
            }
            None => {}
        }
        match self.num("attention.scale").filter(|&s| s > 0.0) {
            Some(scale) => {
                c.insert("query_pre_attn_scalar".into(), json!(1.0 / (scale * scale)));
            }
            // llama.cpp's converter does not write Gemma 2/3's query_pre_attn_scalar. The 27B
            // models (46 and 62 layers) scale by hidden / heads (144, 168), every other size by
            // head_dim: llama.cpp tells them apart by their layer count, and so does owrun.
            None if matches!(
                (self.arch.as_str(), need("block_count")? as u64),
                ("gemma2", 46) | ("gemma3", 62)
            ) =>
            {
                let per_head = (need("embedding_length")? / heads).floor();
                c.insert("query_pre_attn_scalar".into(), json!(per_head));
            }
            None => {}
        }
        let hd = self.num("attention.key_length").map(|v| v as usize);
        let dims = self.num("rope.dimension_count").map(|v| v as usize);
        if let (Some(dims), Some(hd)) = (
            dims,
            hd.or_else(|| Some((need("embedding_length").ok()? / heads) as usize)),
        ) {
            if dims > hd {
                bail!(
                    "{}.rope.dimension_count is {dims}, more than the {hd} dimensions of a head",
                    self.arch
                );
            }
            if dims < hd {
                c.insert(
                    "partial_rotary_factor".into(),
                    json!(dims as f64 / hd as f64),
                );
            }
        }
        match self.arch_meta("rope.scaling.type") {
            Some(GValue::String(t)) if t == "linear" => {
                c.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": self.num("rope.scaling.factor").unwrap_or(1.0)}),
                );
            }
            // As llama.cpp's converter writes YaRN (from transformers' rope_parameters).
            Some(GValue::String(t)) if t == "yarn" => {
                let original = self.num("rope.scaling.original_context_length").context(
                    "the GGUF has YaRN rope scaling but no rope.scaling.original_context_length",
                )?;
                let mut s = json!({
                    "rope_type": "yarn",
                    "factor": self.num("rope.scaling.factor").unwrap_or(1.0),
                    "original_max_position_embeddings": original as u64,
                });
                for (key, hf) in [
                    ("rope.scaling.yarn_attn_factor", "attention_factor"),
                    ("rope.scaling.yarn_beta_fast", "beta_fast"),
                    ("rope.scaling.yarn_beta_slow", "beta_slow"),
                ] {
                    if let Some(v) = self.num(key) {
                        s[hf] = json!(v);
                    }
                }
                c.insert("rope_scaling".into(), s);
            }
            Some(GValue::String(t)) if t != "none" => {
                bail!("GGUF rope scaling {t:?} is not supported yet")
            }
            _ => {}
        }
        if self.has_tensor("rope_factors_long.weight") {
            let original = self.num("rope.scaling.original_context_length").context(
                "the GGUF has LongRoPE factors but no rope.scaling.original_context_length",
            )?;
            let mut s = json!({
                "rope_type": "longrope",
                "short_factor": self.vector_f32("rope_factors_short.weight")?,
                "long_factor": self.vector_f32("rope_factors_long.weight")?,
                "original_max_position_embeddings": original as u64,
            });
            if let Some(a) = self.num("rope.scaling.attn_factor") {
                s["attention_factor"] = json!(a);
            }
            c.insert("rope_scaling".into(), s);
        } else if self.has_tensor("rope_freqs.weight") {
            // Llama 3.1-style scaling, precomputed by the converter as one divisor per frequency.
            c.insert(
                "rope_scaling".into(),
                json!({"rope_type": "divisors", "divisors": self.vector_f32("rope_freqs.weight")?}),
            );
        }
        c.insert(
            "tie_word_embeddings".into(),
            json!(!self.has_tensor("output.weight")),
        );
        c.insert(GGUF_KEYS.into(), self.key_names());
        Ok(Value::Object(c))
    }

    /// Which metadata each config.json key above came from, so that an error about a value
    /// names the key the file really has.
    fn key_names(&self) -> Value {
        let a = &self.arch;
        let mut names: Map<String, Value> = [
            ("hidden_size", "embedding_length"),
            ("intermediate_size", "feed_forward_length"),
            ("num_hidden_layers", "block_count"),
            ("num_attention_heads", "attention.head_count"),
            ("num_key_value_heads", "attention.head_count_kv"),
            ("head_dim", "attention.key_length"),
            ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
            ("rope_theta", "rope.freq_base"),
            ("rope_local_base_freq", "rope.freq_base_swa"),
            ("max_position_embeddings", "context_length"),
            ("sliding_window", "attention.sliding_window"),
            ("sliding_window_pattern", "attention.sliding_window_pattern"),
            ("num_local_experts", "expert_count"),
            ("num_experts", "expert_count"),
            ("moe_intermediate_size", "expert_feed_forward_length"),
            ("num_experts_per_tok", "expert_used_count"),
            ("attn_logit_softcapping", "attn_logit_softcapping"),
            ("final_logit_softcapping", "final_logit_softcapping"),
            ("query_pre_attn_scalar", "attention.scale"),
            ("partial_rotary_factor", "rope.dimension_count"),
            ("rope_scaling", "rope.scaling.factor"),
        ]
        .into_iter()
        .map(|(hf, g)| (hf.to_string(), json!(format!("{a}.{g}"))))
        .collect();
        names.insert("vocab_size".into(), json!("the rows of token_embd.weight"));
        Value::Object(names)
    }

    /// The bytes of tensor `name` (of expert `expert` only, for a stack of experts), with its
    /// type and dimensions (those of one expert).
    fn raw(&mut self, name: &str, expert: Option<usize>) -> Result<RawTensor> {
        let (part, info) = self
            .find(name)
            .with_context(|| format!("{} lacks tensor {name}", self.path.display()))?;
        let info = info.clone();
        let (dims, start, bytes) = match expert {
            None => (info.dims.clone(), info.start, info.bytes),
            Some(e) => {
                let [n, rows, cols] = info.dims[..] else {
                    bail!("{name} is not a stack of experts")
                };
                if e >= n {
                    bail!("{name} has {n} experts, not {}", e + 1);
                }
                let per = info.bytes / n;
                (vec![rows, cols], info.start + (e * per) as u64, per)
            }
        };
        let part = &mut self.parts[part];
        let bytes = read_range(&mut part.file, start, bytes)
            .with_context(|| format!("{}: cannot read tensor {name}", part.path.display()))?;
        Ok(RawTensor {
            ty: info.ty,
            dims,
            bytes,
        })
    }

    /// A 1-D float tensor's values as f32 (rope factors and the like).
    pub fn vector_f32(&mut self, name: &str) -> Result<Vec<f32>> {
        let t = self.raw(name, None)?;
        floats(&t).with_context(|| format!("{name} is {}, not a float vector", t.ty.name()))
    }

    /// The GGUF tensor behind a Hugging Face tensor name, as stored (with the converter's
    /// changes undone).
    pub fn load_hf(&mut self, hf: &str) -> Result<Option<RawTensor>> {
        let Some(found) = self.locate(hf) else {
            return Ok(None);
        };
        let mut t = self.raw(&found.name, found.expert)?;
        if let Some(heads) = found.permuted_heads {
            t.bytes = unpermute_rows(&t.bytes, t.dims[0], heads)?;
        }
        Ok(Some(t))
    }

    /// The type the GGUF tensor behind a Hugging Face tensor name is stored in.
    pub fn hf_type(&self, hf: &str) -> Option<GgmlType> {
        self.info(&self.locate(hf)?.name).map(|t| t.ty)
    }

    /// Which GGUF tensor holds a Hugging Face tensor, and how.
    fn locate(&self, hf: &str) -> Option<Located> {
        let plain = |name: String| Located {
            name,
            expert: None,
            permuted_heads: None,
        };
        let simple = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(s) = simple {
            return self.has_tensor(s).then(|| plain(s.to_string()));
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let sandwich = matches!(self.arch.as_str(), "gemma2" | "gemma3");
        let (suffix, kind) = rest.rsplit_once('.')?; // kind: weight | bias
        let base = match suffix {
            "input_layernorm" => "attn_norm".to_string(),
            "post_attention_layernorm" if sandwich => "post_attention_norm".into(),
            "post_attention_layernorm" => "ffn_norm".into(),
            "pre_feedforward_layernorm" => "ffn_norm".into(),
            "post_feedforward_layernorm" => "post_ffw_norm".into(),
            "self_attn.q_norm" => "attn_q_norm".into(),
            "self_attn.k_norm" => "attn_k_norm".into(),
            "block_sparse_moe.gate" | "mlp.gate" => "ffn_gate_inp".into(),
            other if linear_gguf_name(other).is_some() => linear_gguf_name(other)?.into(),
            other => {
                let (e, part) = expert_part(other)?;
                let merged = format!("blk.{layer}.ffn_{part}_exps.{kind}");
                if self.has_tensor(&merged) {
                    return Some(Located {
                        name: merged,
                        expert: Some(e),
                        permuted_heads: None,
                    });
                }
                let single = format!("blk.{layer}.ffn_{part}.{e}.{kind}");
                return self.has_tensor(&single).then(|| plain(single));
            }
        };
        let name = format!("blk.{layer}.{base}.{kind}");
        if !self.has_tensor(&name) {
            return None;
        }
        let heads = self.num("attention.head_count").unwrap_or(0.0) as usize;
        let kv_heads = self
            .num("attention.head_count_kv")
            .map_or(heads, |h| h as usize);
        let permuted_heads = permuted_heads(&base, Some(&self.arch), heads, kv_heads);
        Some(Located {
            name,
            expert: None,
            permuted_heads,
        })
    }

    /// Every tensor's name, in all parts.
    pub fn tensor_names(&self) -> Vec<String> {
        self.parts
            .iter()
            .flat_map(|p| p.content.tensors.keys().cloned())
            .collect()
    }

    /// A float tensor (F32, F16, BF16) as stored: its dimensions (rows first) and values.
    pub fn tensor_f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.raw(name, None)?;
        let values = floats(&t).with_context(|| {
            format!(
                "tensor {name} is {}: only F32, F16 and BF16 are read here",
                t.ty.name()
            )
        })?;
        Ok((t.dims, values))
    }

    /// Whether the file holds the tensor a Hugging Face name stands for.
    pub fn has_hf(&self, hf: &str) -> bool {
        self.locate(hf).is_some()
    }

    /// Gemma's norm gains are stored as 1 + w by the converter.
    pub fn norms_include_one(&self) -> bool {
        self.arch.starts_with("gemma")
    }
}

/// The values of a float tensor (F32, F16, BF16) as f32; None for any other type.
fn floats(t: &RawTensor) -> Option<Vec<f32>> {
    let halves = |wide: fn([u8; 2]) -> f32| {
        t.bytes
            .chunks_exact(2)
            .map(|b| wide([b[0], b[1]]))
            .collect()
    };
    Some(match t.ty {
        GgmlType::F32 => t
            .bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => halves(|b| half::f16::from_le_bytes(b).to_f32()),
        GgmlType::BF16 => halves(|b| half::bf16::from_le_bytes(b).to_f32()),
        _ => return None,
    })
}

/// The linear layers of a block: Hugging Face's name (after `model.layers.N.`), llama.cpp's
/// (after `blk.N.`). Phi-3's fused gate_up_proj is llama.cpp's ffn_up.
const LINEAR_NAMES: [(&str, &str); 9] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.qkv_proj", "attn_qkv"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.gate_up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

fn linear_gguf_name(hf: &str) -> Option<&'static str> {
    LINEAR_NAMES.iter().find(|(h, _)| *h == hf).map(|(_, g)| *g)
}

/// The Hugging Face name of the linear layer `blk.N.BASE.weight` names (a LoRA adapter's
/// tensors are that name plus .lora_a / .lora_b), for an architecture: Phi-3's ffn_up is its
/// fused gate_up_proj.
pub fn hf_linear_name(gguf: &str, arch: Option<&str>) -> Option<String> {
    let rest = gguf.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, base) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match (base, arch) {
        ("ffn_up", Some("phi3")) => "mlp.gate_up_proj",
        _ => LINEAR_NAMES.iter().find(|(_, g)| *g == base)?.0,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// llama.cpp's converter reorders the rows of Llama's q and k projections (`gguf_base` is
/// `attn_q`, `attn_k`) for its interleaved rope: the heads to undo it with, or None where it
/// does not.
pub fn permuted_heads(
    gguf_base: &str,
    arch: Option<&str>,
    heads: usize,
    kv_heads: usize,
) -> Option<usize> {
    if arch != Some("llama") {
        return None;
    }
    match gguf_base {
        "attn_q" if heads > 0 => Some(heads),
        "attn_k" if kv_heads > 0 => Some(kv_heads),
        _ => None,
    }
}

/// An expert's matrix by its name in a layer (Mixtral's `block_sparse_moe.experts.E.w1`, Qwen's
/// `mlp.experts.E.gate_proj`): (E, "gate" | "up" | "down").
pub fn expert_part(name: &str) -> Option<(usize, &'static str)> {
    let rest = name
        .strip_prefix("block_sparse_moe.experts.")
        .or_else(|| name.strip_prefix("mlp.experts."))?;
    let (e, w) = rest.split_once('.')?;
    let part = match w {
        "w1" | "gate_proj" => "gate",
        "w2" | "down_proj" => "down",
        "w3" | "up_proj" => "up",
        _ => return None,
    };
    Some((e.parse().ok()?, part))
}

/// The GGUF architecture name llama.cpp's converter writes for a config.json model_type.
pub fn gguf_architecture(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "llama" | "mistral" | "mixtral" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "qwen3_moe" => "qwen3moe",
        "phi3" => "phi3",
        "gemma" => "gemma",
        "gemma2" => "gemma2",
        "gemma3" | "gemma3_text" => "gemma3",
        _ => return None,
    })
}

/// Shard `k` of `count` beside `first`, which must be shard 1 of `count`.
fn shard_path(first: &Path, k: usize, count: usize) -> Option<PathBuf> {
    let split = SplitName::parse(first.file_name()?.to_str()?)?;
    (split.index == 1 && split.count == count).then(|| first.with_file_name(split.shard(k)))
}

/// The name of one file of a split GGUF model, as gguf-split writes it:
/// `<prefix>-<index>-of-<count>.gguf`, both numbers zero-padded to one width
/// (`model-Q4_K_M-00001-of-00003.gguf`).
#[derive(Debug, PartialEq, Eq)]
pub struct SplitName<'a> {
    pub prefix: &'a str,
    /// 1-based.
    pub index: usize,
    pub count: usize,
    /// The index's digits (their width) and the count as written.
    width: usize,
    count_text: &'a str,
}

impl<'a> SplitName<'a> {
    /// None for a name that is not a shard's (an unsplit file).
    pub fn parse(name: &'a str) -> Option<SplitName<'a>> {
        let stem = name.strip_suffix(".gguf")?;
        let (head, count) = stem.rsplit_once("-of-")?;
        let (prefix, index) = head.rsplit_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index) || !digits(count) {
            return None;
        }
        Some(SplitName {
            prefix,
            index: index.parse().ok()?,
            count: count.parse().ok()?,
            width: index.len(),
            count_text: count,
        })
    }

    /// The name of shard `k` of the same file.
    pub fn shard(&self, k: usize) -> String {
        let (prefix, count, width) = (self.prefix, self.count_text, self.width);
        format!("{prefix}-{k:0width$}-of-{count}.gguf")
    }
}

struct Located {
    name: String,
    expert: Option<usize>,
    permuted_heads: Option<usize>,
}

/// A numeric metadata value as f64.
pub fn number(v: &GValue) -> Option<f64> {
    Some(match v {
        GValue::U8(x) => *x as f64,
        GValue::I8(x) => *x as f64,
        GValue::U16(x) => *x as f64,
        GValue::I16(x) => *x as f64,
        GValue::U32(x) => *x as f64,
        GValue::I32(x) => *x as f64,
        GValue::U64(x) => *x as f64,
        GValue::I64(x) => *x as f64,
        GValue::F32(x) => *x as f64,
        GValue::F64(x) => *x,
        GValue::Bool(b) => *b as u8 as f64,
        _ => return None,
    })
}

/// Undo the converter's per-head row order (q/k of Llama-architecture files): within each head
/// of `rows / heads` rows, GGUF row 2j + s holds the Hugging Face row s·(d/2) + j.
pub fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    permute_rows(bytes, rows, heads, false)
}

/// The converter's permutation itself (for writing GGUF files llama.cpp reads).
pub fn permute_rows_for_gguf(bytes: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    permute_rows(bytes, rows, heads, true)
}

fn permute_rows(bytes: &[u8], rows: usize, heads: usize, forward: bool) -> Result<Vec<u8>> {
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || !bytes.len().is_multiple_of(rows)
    {
        bail!("cannot reorder {rows} rows into {heads} heads");
    }
    let row = bytes.len() / rows;
    let d = rows / heads;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..d / 2 {
                let hf = h * d + s * (d / 2) + j;
                let gg = h * d + 2 * j + s;
                let (from, to) = if forward { (hf, gg) } else { (gg, hf) };
                out[to * row..(to + 1) * row].copy_from_slice(&bytes[from * row..(from + 1) * row]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_parse_and_name_their_shards() {
        let s = SplitName::parse("m-Q4_K_M-00001-of-00003.gguf").unwrap();
        assert_eq!((s.prefix, s.index, s.count), ("m-Q4_K_M", 1, 3));
        assert_eq!(s.shard(2), "m-Q4_K_M-00002-of-00003.gguf");
        assert_eq!(SplitName::parse("m-Q4_K_M.gguf"), None);
        assert_eq!(SplitName::parse("m-x-of-3.gguf"), None);
        assert_eq!(
            shard_path(Path::new("/d/a-1-of-2.gguf"), 2, 2),
            Some(PathBuf::from("/d/a-2-of-2.gguf"))
        );
        assert_eq!(shard_path(Path::new("/d/a-2-of-2.gguf"), 2, 2), None);
    }

    #[test]
    fn the_row_permutation_round_trips_and_matches_the_converter() {
        // 2 heads of 4 rows, 1 byte per row: the converter's reshape(h, 2, d/2).swapaxes(1, 2)
        // turns rows [0 1 2 3 | 4 5 6 7] into [0 2 1 3 | 4 6 5 7].
        let hf: Vec<u8> = (0..8).collect();
        let gguf = permute_rows_for_gguf(&hf, 8, 2).unwrap();
        assert_eq!(gguf, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rows(&gguf, 8, 2).unwrap(), hf);
        // Head size 8: [0 4 1 5 2 6 3 7].
        let hf: Vec<u8> = (0..8).collect();
        assert_eq!(
            permute_rows_for_gguf(&hf, 8, 1).unwrap(),
            [0, 4, 1, 5, 2, 6, 3, 7]
        );
    }
}
