//! Writing a Hugging Face model as a GGUF file that llama.cpp loads: the hyperparameter keys,
//! tensor names and transformations of llama.cpp's convert_hf_to_gguf.py (the inverse of what
//! `format::gguf` undoes on reading), the vocabulary from tokenizer.json, and the matrices quantized
//! under a scheme as llama-quantize would; LoRA adapters merged into them first when given.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value as G;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::format::config::ModelConfig;
use super::format::gguf::{self, expert_part, permute_rows_for_gguf};
use super::format::json::read_json;
use super::format::safetensors::SafetensorsFiles;
use super::model::arch::Arch;
use super::model::lora;
use super::model::rope::{self, Rope};
use super::quantize::{self, Role, Scheme};

/// What was written, for the user.
pub struct Written {
    pub tensors: usize,
    pub bytes: u64,
    /// Tensor count per GGML type.
    pub types: BTreeMap<String, usize>,
    /// What the user may want to know (the adapters merged).
    pub notes: Vec<String>,
}

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

fn u32v(v: usize) -> G {
    G::U32(v as u32)
}

fn f32v(v: f64) -> G {
    G::F32(v as f32)
}

/// llama.cpp's file-type number for a scheme (None: 16/32-bit as stored).
fn file_type(scheme: Option<Scheme>, stored: DType) -> u32 {
    match scheme {
        Some(Scheme::Q8_0) => 7,
        Some(Scheme::Q4_0) => 2,
        Some(Scheme::Q4_1) => 3,
        Some(Scheme::Q5_0) => 8,
        Some(Scheme::Q5_1) => 9,
        Some(Scheme::Q4K) => 14,
        Some(Scheme::Q4KM) => 15,
        Some(Scheme::Q5K) => 16,
        Some(Scheme::Q5KM) => 17,
        Some(Scheme::Q6K) => 18,
        None if stored == DType::BF16 => 32,
        None if stored == DType::F16 => 1,
        None => 0,
    }
}

/// Write the model in `dir` (safetensors `files`) to `out`, quantized under `scheme`, saying
/// `license` (an id like "apache-2.0") in general.license as converters do. The LoRA
/// `adapters` (path, multiplier of its scale) are merged into the matrices they adapt before
/// those are quantized, as `--lora-merge` merges them at load; one that does not fit the model
/// is an [`Unfit`] error, and nothing is written.
pub fn write(
    dir: &Path,
    files: &[PathBuf],
    scheme: Option<Scheme>,
    license: Option<&str>,
    adapters: &[(PathBuf, f32)],
    out: &Path,
) -> Result<Written> {
    let config = ModelConfig::load(dir)?;
    let arch = Arch::from_config(&config)?;
    let mut notes = Vec::new();
    let mut adapters = lora::open(
        adapters,
        true,
        &arch,
        &config.model_type,
        dir,
        &Device::Cpu,
        &mut notes,
    )?;
    let raw = &config.raw;
    let family = match config.model_type.as_str() {
        "gemma3_text" => "gemma3",
        other => other,
    };
    if arch.moe.as_ref().is_some_and(|m| m.sparse.contains(&false)) {
        bail!(super::LoadError::Unsuitable(format!(
            "this {family} model has dense layers among its routed ones (mlp_only_layers or \
             decoder_sparse_step), which GGUF's {family} cannot say (llama.cpp routes every \
             layer): it runs from its folder, not as GGUF"
        )));
    }
    let Some(name) = gguf::gguf_architecture(family) else {
        bail!("cannot write {family} models as GGUF")
    };
    let st = SafetensorsFiles::open(files)?;
    let stored = st.dtype("model.embed_tokens.weight")?.unwrap_or(DType::F32);

    let mut meta: Vec<(String, G)> = Vec::new();
    let mut put = |k: &str, v: G| meta.push((k.to_string(), v));
    let a = |k: &str| format!("{name}.{k}");
    put("general.architecture", G::String(name.into()));
    put(
        "general.name",
        G::String(
            dir.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "model".into()),
        ),
    );
    put("general.file_type", G::U32(file_type(scheme, stored)));
    put("general.quantization_version", G::U32(2));
    if let Some(l) = license {
        put("general.license", G::String(l.to_string()));
    }
    if let Some(a) = &adapters {
        // The base's license stays general.license; the adapters merged in, and the licenses
        // they state, are said beside it.
        let merged: Vec<String> = a
            .list()
            .iter()
            .map(|ad| {
                let name = ad.source.file_name().unwrap_or(ad.source.as_os_str());
                let terms = ad.license.as_deref().unwrap_or("license not stated");
                format!("{} ({terms})", name.to_string_lossy())
            })
            .collect();
        put(
            "general.license.name",
            G::String(format!(
                "{}, with the LoRA adapter(s) {} merged in",
                license.unwrap_or("the base model's license"),
                merged.join(", ")
            )),
        );
    }
    put(&a("context_length"), u32v(arch.context));
    put(&a("embedding_length"), u32v(arch.hidden));
    put(&a("block_count"), u32v(arch.layers.len()));
    put(&a("feed_forward_length"), u32v(arch.intermediate));
    put(&a("attention.head_count"), u32v(arch.heads));
    put(&a("attention.head_count_kv"), u32v(arch.kv_heads));
    put(&a("attention.key_length"), u32v(arch.head_dim));
    put(&a("attention.value_length"), u32v(arch.head_dim));
    put(&a("attention.layer_norm_rms_epsilon"), f32v(arch.norm_eps));
    put(&a("rope.dimension_count"), u32v(arch.ropes[0].rot_dim));
    put(
        &a("rope.freq_base"),
        f32v(raw["rope_theta"].as_f64().unwrap_or(10_000.0)),
    );
    if name == "llama" {
        put(&a("vocab_size"), u32v(arch.vocab_size));
    }
    if let Some(moe) = &arch.moe {
        put(&a("expert_count"), u32v(moe.experts));
        put(&a("expert_used_count"), u32v(moe.top_k));
        if moe.qwen_names {
            put(&a("expert_feed_forward_length"), u32v(moe.intermediate));
        }
    }
    if let Some(w) = arch.layers.iter().find_map(|l| l.window) {
        put(&a("attention.sliding_window"), u32v(w));
    }
    if let Some(c) = arch.attention_softcap {
        put(&a("attn_logit_softcapping"), f32v(c));
    }
    if let Some(c) = arch.final_softcap {
        put(&a("final_logit_softcapping"), f32v(c));
    }
    if family == "gemma3" {
        let flags = arch
            .layers
            .iter()
            .map(|l| G::Bool(l.window.is_some()))
            .collect();
        put(&a("attention.sliding_window_pattern"), G::Array(flags));
        if let Some(base) = raw["rope_local_base_freq"].as_f64() {
            put(&a("rope.freq_base_swa"), f32v(base));
        }
        let scalar = 1.0 / (arch.attention_scale * arch.attention_scale);
        if (scalar - arch.head_dim as f64).abs() > 1e-6 {
            put(&a("attention.scale"), f32v(arch.attention_scale));
        }
    }
    let scaling = &raw["rope_scaling"];
    let scaling_type = scaling["rope_type"]
        .as_str()
        .or(scaling["type"].as_str())
        .unwrap_or("default");
    let mut extra: Vec<(String, Tensor)> = Vec::new();
    match scaling_type {
        "linear" => {
            put(&a("rope.scaling.type"), G::String("linear".into()));
            put(
                &a("rope.scaling.factor"),
                f32v(scaling["factor"].as_f64().unwrap_or(1.0)),
            );
        }
        "llama3" => {
            // The converter precomputes the per-frequency divisors as rope_freqs.
            let theta = raw["rope_theta"].as_f64().unwrap_or(10_000.0);
            let hd = arch.head_dim;
            let plain = Rope::new(hd, 1.0, theta, None, arch.context, None)?;
            let scaled = Rope::new(hd, 1.0, theta, Some(scaling), arch.context, None)?;
            let d: Vec<f32> = plain
                .inv_freq()
                .iter()
                .zip(scaled.inv_freq())
                .map(|(p, s)| p / s)
                .collect();
            let n = d.len();
            extra.push((
                "rope_freqs.weight".into(),
                Tensor::from_vec(d, n, &Device::Cpu)?,
            ));
        }
        "longrope" | "su" => {
            let original = scaling["original_max_position_embeddings"]
                .as_u64()
                .or(raw["original_max_position_embeddings"].as_u64())
                .context("LongRoPE without original_max_position_embeddings")?;
            put(
                &a("rope.scaling.original_context_length"),
                u32v(original as usize),
            );
            if let Some(f) = scaling["attention_factor"].as_f64() {
                put(&a("rope.scaling.attn_factor"), f32v(f));
            }
            for (key, tensor) in [
                ("long_factor", "rope_factors_long"),
                ("short_factor", "rope_factors_short"),
            ] {
                let v = rope::f32_list(&scaling[key]);
                let n = v.len();
                extra.push((
                    format!("{tensor}.weight"),
                    Tensor::from_vec(v, n, &Device::Cpu)?,
                ));
            }
        }
        "default" => {}
        other => bail!("cannot write rope scaling {other:?} as GGUF"),
    }
    vocabulary(dir, &arch, family, &mut meta)?;

    // Tensors.
    let layers = arch.layers.len();
    let mut names: Vec<String> = st.names();
    names.sort();
    let mut tensors: Vec<(String, Arc<QTensor>)> = Vec::new();
    for (n, t) in extra {
        tensors.push((n, Arc::new(QTensor::quantize(&t, GgmlDType::F32)?)));
    }
    let mut experts: HashMap<String, Vec<Option<Tensor>>> = HashMap::new();
    // Matrices the adapters were merged into.
    let mut merged = 0;
    for hf in &names {
        let Some((gguf_name, role, permute)) = gguf_name(hf, name, family, &arch) else {
            continue;
        };
        let Some(mut t) = st.load(hf, &Device::Cpu)? else {
            continue;
        };
        if t.rank() == 1 {
            let mut v = t.to_dtype(DType::F32)?;
            if arch.norm_plus_one && hf.ends_with("norm.weight") {
                v = (v + 1.0)?;
            }
            tensors.push((gguf_name, Arc::new(QTensor::quantize(&v, GgmlDType::F32)?)));
            continue;
        }
        if let Some(a) = adapters.as_mut() {
            let (rows, cols) = t.dims2()?;
            let layer = hf.strip_suffix(".weight").unwrap_or(hf);
            if let Some(delta) = a.delta(layer, rows, cols)? {
                t = lora::merge(&t, &delta)?;
                merged += 1;
            }
        }
        if let Some(heads) = permute {
            let (rows, _) = t.dims2()?;
            let idx: Vec<u32> = (0..rows as u32).collect();
            let bytes: Vec<u8> = idx.iter().flat_map(|i| i.to_le_bytes()).collect();
            let order = permute_rows_for_gguf(&bytes, rows, heads)?;
            let order: Vec<u32> = order
                .chunks(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            t = t.index_select(&Tensor::new(order.as_slice(), &Device::Cpu)?, 0)?;
        }
        // Mixtral's experts: stacked into one tensor per layer and kind, as the converter does.
        if let Some((stack, e, count)) = expert_slot(hf, &arch) {
            let slots = experts
                .entry(stack.clone())
                .or_insert_with(|| vec![None; count]);
            slots[e] = Some(t);
            if slots.iter().all(Option::is_some) {
                let parts: Vec<Tensor> = slots.drain(..).flatten().collect();
                let q = stack_quantized(&parts, scheme, role, layers, stored)?;
                tensors.push((stack, q));
            }
            continue;
        }
        tensors.push((gguf_name, matrix(&t, scheme, role, layers, stored)?));
    }
    if let Some((stack, _)) = experts.iter().find(|(_, s)| !s.is_empty()) {
        bail!("the checkpoint lacks some experts of {stack}");
    }
    if let Some(a) = &adapters {
        a.check_all_used()?;
        let then = if scheme.is_some() {
            "before quantizing"
        } else {
            "as stored"
        };
        notes.push(format!(
            "merged the LoRA adapters into {merged} matrices of the weights ({then})"
        ));
    }

    let mut types = BTreeMap::new();
    for (_, q) in &tensors {
        *types.entry(format!("{:?}", q.dtype())).or_insert(0) += 1;
    }
    let tmp = out.with_extension(format!("partial{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?,
        );
        let meta_refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors
            .iter()
            .map(|(n, q)| (n.as_str(), q.as_ref()))
            .collect();
        candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
        std::io::Write::flush(&mut f)?;
        f.get_ref().sync_all()?;
        std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(Written {
        tensors: tensors.len(),
        bytes: std::fs::metadata(out)?.len(),
        types,
        notes,
    })
}

/// The converter's name for a Hugging Face tensor, its role, and (llama architecture q/k) the
/// head count its rows are permuted by. None: not written (rotary caches and the like).
fn gguf_name(
    hf: &str,
    name: &str,
    family: &str,
    arch: &Arch,
) -> Option<(String, Role, Option<usize>)> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some((
            "token_embd.weight",
            if arch.tied_embeddings {
                Role::Output
            } else {
                Role::Embedding
            },
        )),
        "model.norm.weight" => Some(("output_norm.weight", Role::Other)),
        "lm_head.weight" if !arch.tied_embeddings => Some(("output.weight", Role::Output)),
        "lm_head.weight" => return None,
        _ => None,
    };
    if let Some((n, r)) = simple {
        return Some((n.to_string(), r, None));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (suffix, kind) = rest.rsplit_once('.')?;
    let sandwich = family == "gemma2" || family == "gemma3";
    let (base, role) = match suffix {
        "input_layernorm" => ("attn_norm".to_string(), Role::Other),
        "post_attention_layernorm" if sandwich => ("post_attention_norm".into(), Role::Other),
        "post_attention_layernorm" | "pre_feedforward_layernorm" => {
            ("ffn_norm".into(), Role::Other)
        }
        "post_feedforward_layernorm" => ("post_ffw_norm".into(), Role::Other),
        "self_attn.q_proj" => ("attn_q".into(), Role::Other),
        "self_attn.k_proj" => ("attn_k".into(), Role::Other),
        "self_attn.v_proj" => ("attn_v".into(), Role::AttnV { layer }),
        "self_attn.o_proj" => ("attn_output".into(), Role::Other),
        "self_attn.qkv_proj" => ("attn_qkv".into(), Role::Other),
        "self_attn.q_norm" => ("attn_q_norm".into(), Role::Other),
        "self_attn.k_norm" => ("attn_k_norm".into(), Role::Other),
        "mlp.gate_proj" => ("ffn_gate".into(), Role::Other),
        "mlp.up_proj" | "mlp.gate_up_proj" => ("ffn_up".into(), Role::Other),
        "mlp.down_proj" => ("ffn_down".into(), Role::FfnDown { layer }),
        "block_sparse_moe.gate" | "mlp.gate" => ("ffn_gate_inp".into(), Role::Router),
        other => {
            let (_, part) = expert_part(other)?;
            let role = match part {
                "down" => Role::FfnDown { layer },
                _ => Role::Other,
            };
            return Some((format!("blk.{layer}.ffn_{part}_exps.{kind}"), role, None));
        }
    };
    let permute = match (name, base.as_str()) {
        ("llama", "attn_q") => Some(arch.heads),
        ("llama", "attn_k") => Some(arch.kv_heads),
        _ => None,
    };
    Some((format!("blk.{layer}.{base}.{kind}"), role, permute))
}

/// (stacked tensor name, expert index, expert count) for an expert's weight.
fn expert_slot(hf: &str, arch: &Arch) -> Option<(String, usize, usize)> {
    let n = arch.moe.as_ref()?.experts;
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (e, part) = expert_part(rest.strip_suffix(".weight")?)?;
    Some((format!("blk.{layer}.ffn_{part}_exps.weight"), e, n))
}

/// One matrix in the type the scheme gives its role (16/32-bit as stored without a scheme).
fn matrix(
    t: &Tensor,
    scheme: Option<Scheme>,
    role: Role,
    layers: usize,
    stored: DType,
) -> Result<Arc<QTensor>> {
    let (_, k) = t.dims2()?;
    let ty = match scheme.filter(|_| role != Role::Router) {
        Some(s) => quantize::fitting_type(s.type_for(role, layers), k),
        None => None,
    };
    let ty = ty.unwrap_or(match (role, stored) {
        (Role::Router, _) | (_, DType::F32) => GgmlDType::F32,
        (_, DType::BF16) => GgmlDType::BF16,
        _ => GgmlDType::F16,
    });
    match ty {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            let dtype = match ty {
                GgmlDType::F32 => DType::F32,
                GgmlDType::F16 => DType::F16,
                _ => DType::BF16,
            };
            let t = t.to_dtype(dtype)?.contiguous()?;
            let bytes = raw_bytes(&t)?;
            let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, ty)?;
            Ok(Arc::new(QTensor::new(storage, t.dims())?))
        }
        _ => quantize::quantize(t, ty, &Device::Cpu),
    }
}

fn raw_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F32 => t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .flatten_all()?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .flatten_all()?
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => bail!("cannot write {other:?} tensors"),
    })
}

/// Experts of one layer and kind, each quantized, laid end to end as one 3-D tensor.
fn stack_quantized(
    parts: &[Tensor],
    scheme: Option<Scheme>,
    role: Role,
    layers: usize,
    stored: DType,
) -> Result<Arc<QTensor>> {
    let mut bytes = Vec::new();
    let mut ty = GgmlDType::F32;
    for p in parts {
        let q = matrix(p, scheme, role, layers, stored)?;
        ty = q.dtype();
        bytes.extend_from_slice(&q.data()?);
    }
    let (rows, cols) = parts[0].dims2()?;
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, ty)?;
    Ok(Arc::new(QTensor::new(storage, (parts.len(), rows, cols))?))
}

/// Whether a SentencePiece-style tokenizer.json puts "▁" before the text (Llama 2, Mistral,
/// Phi-3; not Gemma). Older files say so with a `Prepend` normalizer, newer ones (transformers'
/// `legacy: false` conversion, Mistral v0.3) with a `Metaspace` pre-tokenizer whose
/// prepend_scheme is "first" or "always"; either may sit inside a `Sequence`.
fn adds_dummy_prefix(tj: &Value) -> bool {
    let steps = |v: &Value, list: &str| -> Vec<Value> {
        let mut all = vec![v.clone()];
        all.extend(v[list].as_array().cloned().unwrap_or_default());
        all
    };
    let normalizers = steps(&tj["normalizer"], "normalizers");
    let pre_tokenizers = steps(&tj["pre_tokenizer"], "pretokenizers");
    normalizers.iter().chain(&pre_tokenizers).any(|n| {
        n["type"] == "Prepend"
            || (n["type"] == "Metaspace"
                && n["prepend_scheme"] != "never"
                && n["add_prefix_space"] != false)
    })
}

/// The vocabulary from tokenizer.json as the converter writes it: "gpt2" for byte-level BPE,
/// "llama" (SentencePiece) for BPE with byte fallback.
fn vocabulary(dir: &Path, arch: &Arch, family: &str, meta: &mut Vec<(String, G)>) -> Result<()> {
    let tokenizer_json = dir.join("tokenizer.json");
    let tj = read_json(&tokenizer_json)?
        .with_context(|| format!("cannot read {}: no such file", tokenizer_json.display()))?;
    let tc = read_json(&dir.join("tokenizer_config.json"))
        .ok()
        .flatten()
        .unwrap_or(Value::Null);
    let model = &tj["model"];
    if model["type"] != "BPE" {
        bail!(
            "only BPE tokenizers can be written as GGUF (this one is {})",
            model["type"]
        );
    }
    let mut id_of: HashMap<String, usize> = model["vocab"]
        .as_object()
        .context("tokenizer.json has no vocab")?
        .iter()
        .filter_map(|(t, i)| Some((t.clone(), i.as_u64()? as usize)))
        .collect();
    let mut added: HashMap<usize, bool> = HashMap::new();
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) {
            id_of.insert(content.to_string(), id as usize);
            added.insert(id as usize, a["special"].as_bool().unwrap_or(false));
        }
    }
    let size = arch
        .vocab_size
        .max(id_of.values().map(|&i| i + 1).max().unwrap_or(0));
    let mut by_id: Vec<Option<String>> = vec![None; size];
    for (t, &i) in &id_of {
        by_id[i] = Some(t.clone());
    }
    let looks_special = |t: &str| {
        matches!(t, "<pad>" | "<mask>")
            || (t.starts_with("<|") && t.ends_with("|>"))
            || (t.starts_with("<｜") && t.ends_with("｜>"))
            || (t.starts_with("<unused") && t.ends_with('>'))
    };
    let byte_fallback = model["byte_fallback"].as_bool().unwrap_or(false);
    let unk = model["unk_token"].as_str().unwrap_or("");
    let mut tokens = Vec::with_capacity(size);
    let mut types = Vec::with_capacity(size);
    let mut scores = Vec::with_capacity(size);
    for (i, t) in by_id.iter().enumerate() {
        let Some(t) = t else {
            tokens.push(G::String(format!("[PAD{i}]")));
            types.push(G::I32(UNUSED));
            scores.push(G::F32(-10000.0));
            continue;
        };
        let is_byte = t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
        let (ty, score) = if byte_fallback && t == unk {
            (UNKNOWN, 0.0)
        } else if byte_fallback && is_byte {
            (BYTE, 0.0)
        } else if let Some(&special) = added.get(&i) {
            (
                if special || looks_special(t) {
                    CONTROL
                } else {
                    USER_DEFINED
                },
                0.0,
            )
        } else {
            // SentencePiece BPE: earlier merges score higher (ids follow merge order).
            (NORMAL, -(i as f32))
        };
        tokens.push(G::String(t.clone()));
        types.push(G::I32(ty));
        scores.push(G::F32(score));
    }
    let put = |meta: &mut Vec<(String, G)>, k: &str, v: G| meta.push((k.to_string(), v));
    if byte_fallback {
        put(meta, "tokenizer.ggml.model", G::String("llama".into()));
        put(meta, "tokenizer.ggml.pre", G::String("default".into()));
        put(meta, "tokenizer.ggml.scores", G::Array(scores));
        put(
            meta,
            "tokenizer.ggml.add_space_prefix",
            G::Bool(adds_dummy_prefix(&tj)),
        );
    } else {
        put(meta, "tokenizer.ggml.model", G::String("gpt2".into()));
        // The pre-tokenizer llama.cpp should use, recognised by its split pattern.
        let text = tj["pre_tokenizer"].to_string();
        let pre = if text.contains(r"\\p{N}{1,3}") {
            "llama-bpe"
        } else if text.contains(r"\\p{N}|") || family.starts_with("qwen") && text.contains("Split")
        {
            "qwen2"
        } else {
            "gpt-2"
        };
        put(meta, "tokenizer.ggml.pre", G::String(pre.into()));
        let merges: Vec<G> = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| match m {
                Value::String(s) => Some(G::String(s.clone())),
                Value::Array(p) => Some(G::String(format!(
                    "{} {}",
                    p.first()?.as_str()?,
                    p.get(1)?.as_str()?
                ))),
                _ => None,
            })
            .collect();
        put(meta, "tokenizer.ggml.merges", G::Array(merges));
    }
    put(meta, "tokenizer.ggml.tokens", G::Array(tokens));
    put(meta, "tokenizer.ggml.token_type", G::Array(types));
    let special = |key: &str| {
        super::text::template::special_token(tc.get(key)).and_then(|t| id_of.get(&t).copied())
    };
    if let Some(b) = special("bos_token") {
        put(meta, "tokenizer.ggml.bos_token_id", G::U32(b as u32));
    }
    if let Some(e) = special("eos_token") {
        put(meta, "tokenizer.ggml.eos_token_id", G::U32(e as u32));
    }
    if let Some(u) = special("unk_token").or(id_of.get(unk).copied()) {
        put(meta, "tokenizer.ggml.unknown_token_id", G::U32(u as u32));
    }
    if let Some(p) = special("pad_token") {
        put(meta, "tokenizer.ggml.padding_token_id", G::U32(p as u32));
    }
    // A post-processor that puts BOS first means the tokenizer adds it.
    let adds_bos = tj["post_processor"]["single"]
        .as_array()
        .and_then(|s| s.first())
        .is_some_and(|f| f.get("SpecialToken").is_some());
    put(meta, "tokenizer.ggml.add_bos_token", G::Bool(adds_bos));
    let template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
        Ok(t) => Some(t),
        Err(_) => tc["chat_template"].as_str().map(String::from),
    };
    if let Some(t) = template {
        put(meta, "tokenizer.chat_template", G::String(t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::adds_dummy_prefix;
    use serde_json::json;

    #[test]
    fn the_dummy_prefix_is_read_from_normalizer_or_metaspace() {
        let prepend = json!({"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null});
        assert!(adds_dummy_prefix(&prepend));
        for scheme in ["first", "always"] {
            let metaspace = json!({"normalizer": null, "pre_tokenizer":
                {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false}});
            assert!(adds_dummy_prefix(&metaspace), "{scheme}");
        }
        let nested = json!({"normalizer": null, "pre_tokenizer": {"type": "Sequence",
            "pretokenizers": [{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}]}});
        assert!(adds_dummy_prefix(&nested));
        let old_style = json!({"pre_tokenizer": {"type": "Metaspace", "add_prefix_space": true}});
        assert!(adds_dummy_prefix(&old_style));
        // Gemma: spaces replaced, nothing prepended.
        let gemma = json!({"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}}});
        assert!(!adds_dummy_prefix(&gemma));
        let never = json!({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "never"}});
        assert!(!adds_dummy_prefix(&never));
        let old_never = json!({"pre_tokenizer": {"type": "Metaspace", "add_prefix_space": false}});
        assert!(!adds_dummy_prefix(&old_never));
    }
}
