//! The tokenizer, chat template and end-of-sequence ids a GGUF file carries in its metadata,
//! rebuilt as a Hugging Face tokenizer: "gpt2" vocabularies (byte-level BPE: Llama 3, Qwen) with
//! the pre-tokenizer llama.cpp names, and "llama" ones (SentencePiece: Llama 2, Mistral, Gemma,
//! Phi-3) with merges recovered from the scores as transformers' SentencePiece converter does.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::Value as GValue;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::gguf::{number as num, GgufFile};

/// llama.cpp's token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

pub struct Vocab {
    pub tokenizer: Tokenizer,
    /// The chat template's Jinja source, and the texts of the BOS and EOS tokens it may use.
    pub chat_template: Option<String>,
    pub bos_text: String,
    pub eos_text: String,
    pub eos: Vec<u32>,
}

/// The strings of array `key` (none when absent); anything else in it is an error naming `key`.
fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    match g.meta(key) {
        None => Ok(Vec::new()),
        Some(GValue::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                GValue::String(s) => Ok(s.clone()),
                other => bail!(
                    "{}: {key}[{i}] is {other:?}, not a string",
                    g.path.display()
                ),
            })
            .collect(),
        Some(_) => bail!("{}: {key} is not an array of strings", g.path.display()),
    }
}

fn numbers(v: Option<&GValue>) -> Vec<f64> {
    match v {
        Some(GValue::Array(a)) => a.iter().map(|x| num(x).unwrap_or(0.0)).collect(),
        _ => Vec::new(),
    }
}

/// Token texts that end a turn in the chat formats owrun runs (llama.cpp's list).
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// Pre-tokenizer split patterns by llama.cpp's `tokenizer.ggml.pre` name.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub fn from_gguf(g: &GgufFile) -> Result<Vocab> {
    let model = match g.meta("tokenizer.ggml.model") {
        Some(GValue::String(m)) => m.clone(),
        _ => bail!(
            "{} carries no tokenizer (tokenizer.ggml.model): put the original model's \
             tokenizer.json beside it",
            g.path.display()
        ),
    };
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        bail!("{} has an empty tokenizer.ggml.tokens", g.path.display());
    }
    // A token without an embedding row cannot be fed to the model: such a vocabulary belongs to
    // another model (or is a trap costing seconds to build), and is refused before it is built.
    if let Some(rows) = g.embedding_rows() {
        if tokens.len() > rows {
            bail!(
                "{}: tokenizer.ggml.tokens lists {} tokens, but token_embd.weight has rows for {rows}",
                g.path.display(),
                tokens.len()
            );
        }
    }
    let types: Vec<i64> = numbers(g.meta("tokenizer.ggml.token_type"))
        .into_iter()
        .map(|t| t as i64)
        .collect();
    let id_of = |key: &str| g.meta(key).and_then(num).map(|v| v as u32);
    let bos = id_of("tokenizer.ggml.bos_token_id");
    let eos_id = id_of("tokenizer.ggml.eos_token_id");
    let add_bos = match g.meta("tokenizer.ggml.add_bos_token") {
        Some(GValue::Bool(b)) => *b,
        _ => model == "llama",
    };
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types.get(i) == Some(&CONTROL)})
        })
        .collect();
    let post = match (add_bos, bos) {
        (true, Some(b)) => {
            let t = tokens.get(b as usize).cloned().unwrap_or_default();
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {t.clone(): {"id": t, "ids": [b], "tokens": [t]}}})
        }
        _ => Value::Null,
    };
    let doc = match model.as_str() {
        "gpt2" => {
            let merges: Vec<Value> = strings(g, "tokenizer.ggml.merges")?
                .iter()
                .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
                .collect();
            let pre = match g.meta("tokenizer.ggml.pre") {
                Some(GValue::String(p)) => p.as_str(),
                _ => "default",
            };
            let split = |pattern: &str| {
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
            };
            let pre_tokenizer = match pre {
                "llama-bpe" | "llama3" | "llama-v3" | "smollm" | "deepseek-r1-qwen" => {
                    split(LLAMA3_SPLIT)
                }
                "qwen2" => split(QWEN2_SPLIT),
                _ => {
                    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
                }
            };
            json!({"version": "1.0", "added_tokens": added, "normalizer": null,
                "pre_tokenizer": pre_tokenizer, "post_processor": post,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                    "ignore_merges": false, "vocab": vocab, "merges": merges}})
        }
        "llama" => {
            let scores = numbers(g.meta("tokenizer.ggml.scores"));
            let unk = id_of("tokenizer.ggml.unknown_token_id")
                .and_then(|u| tokens.get(u as usize).cloned());
            // Llama 2 / Mistral tokenizers put "▁" before the text; Gemma's do not.
            let prefix = !matches!(
                g.meta("tokenizer.ggml.add_space_prefix"),
                Some(GValue::Bool(false))
            );
            let mut normalizers =
                vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})];
            if prefix {
                normalizers.insert(0, json!({"type": "Prepend", "prepend": "▁"}));
            }
            json!({"version": "1.0", "added_tokens": added,
                "normalizer": {"type": "Sequence", "normalizers": normalizers},
                "pre_tokenizer": null, "post_processor": post,
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": usize::from(prefix), "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                    "ignore_merges": false, "vocab": vocab,
                    "merges": merges_from_scores(&tokens, &scores, &types)}})
        }
        other => bail!("GGUF tokenizer model {other:?} is not supported (gpt2 and llama are)"),
    };
    let tokenizer = Tokenizer::from_bytes(serde_json::to_vec(&doc)?)
        .map_err(|e| anyhow!("cannot rebuild the GGUF's tokenizer: {e}"))
        .with_context(|| g.path.display().to_string())?;

    let text = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize).cloned())
            .unwrap_or_default()
    };
    let chat_template = match g.meta("tokenizer.chat_template") {
        Some(GValue::String(source)) => Some(source.clone()),
        _ => None,
    };
    // Converters keep one end-of-sequence id; like llama.cpp, recognise the other
    // end-of-generation tokens by their text.
    let by_text = tokens.iter().enumerate().filter_map(|(i, t)| {
        (matches!(types.get(i), Some(&CONTROL) | Some(&USER_DEFINED))
            && END_OF_GENERATION.contains(&t.as_str()))
        .then_some(i as u32)
    });
    let mut eos: Vec<u32> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|k| id_of(k))
    .chain(by_text)
    .collect();
    eos.sort_unstable();
    eos.dedup();
    Ok(Vocab {
        tokenizer,
        chat_template,
        bos_text: text(bos),
        eos_text: text(eos_id),
        eos,
    })
}

/// BPE merges for a SentencePiece vocabulary, as transformers' SentencePieceExtractor makes
/// them: every way to split a piece into two pieces of the vocabulary is a merge, ranked by the
/// merged piece's score (best first), ties by the ids of the two halves.
fn merges_from_scores(tokens: &[String], scores: &[f64], types: &[i64]) -> Vec<Value> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f64, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if matches!(
            types.get(i),
            Some(&CONTROL) | Some(&USER_DEFINED) | Some(&6)
        ) {
            continue;
        }
        let score = scores.get(i).copied().unwrap_or(0.0);
        let bounds: Vec<usize> = piece.char_indices().map(|(b, _)| b).skip(1).collect();
        let mut local: Vec<(f64, usize, usize)> = bounds
            .iter()
            .filter_map(|&b| {
                let (l, r) = piece.split_at(b);
                Some((score, *ids.get(l)?, *ids.get(r)?))
            })
            .collect();
        local.sort_by_key(|&(_, l, r)| (l, r));
        merges.extend(local);
    }
    // Stable: pieces of equal score keep the order above.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}
