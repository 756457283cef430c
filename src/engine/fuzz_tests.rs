//! Fuzz targets for what owrun reads from strangers (see `crate::fuzz` for the fuzzer): GGUF
//! files, safetensors files, config.json and generation_config.json, and chat templates (alone
//! or inside a tokenizer_config.json). Seeds are real headers from the fixtures
//! (`scripts/make_fuzz_seeds.py`). Every input must be either refused with an error or read —
//! never a panic, a hang or an allocation of what it claims. The JSON-schema recognizer and the
//! server's request parser have targets of their own beside their code.

use std::path::Path;

use candle_core::Device;
use serde_json::{json, Value};

use super::format::config::ModelConfig;
use super::format::gguf::GgufFile;
use super::format::gguf_vocab;
use super::format::safetensors::SafetensorsFiles;
use super::generate::sampler::SamplingParams;
use super::model::arch::Arch;
use super::model::kv::{cache_bytes, KvType};
use super::text::template::{ChatTemplate, Message};
use crate::fuzz::{run_for, seeds};

/// What a model's hyperparameters lead to before any weight is read: its shape, and its KV cache
/// for one token and for its whole context (sizes computed from what the file claims).
fn hyperparameters(config: Value) -> bool {
    let Ok(config) = ModelConfig::from_value(config) else {
        return false;
    };
    let Ok(arch) = Arch::from_config(&config) else {
        return false;
    };
    cache_bytes(&arch, KvType::F16, 1);
    cache_bytes(&arch, KvType::Q8_0, arch.context);
    true
}

fn read_gguf(path: &Path, bytes: &[u8]) -> bool {
    std::fs::write(path, bytes).unwrap();
    let Ok(mut file) = GgufFile::open(path) else {
        return false;
    };
    // Tensors as the decoder asks for them (each read is bounded by the file's checked table).
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
    ] {
        let _ = file.load_hf(name);
    }
    if let Ok(vocab) = gguf_vocab::from_gguf(&file) {
        if let Ok(ids) = vocab.tokenizer.encode("Hello, world", true) {
            let _ = vocab.tokenizer.decode(ids.get_ids(), false);
        }
    }
    file.config_json().is_ok_and(hyperparameters)
}

#[test]
fn fuzz_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    run_for("gguf", &seeds("gguf"), |bytes| read_gguf(&path, bytes));
}

#[test]
fn fuzz_safetensors_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    run_for("safetensors", &seeds("safetensors"), |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let Ok(files) = SafetensorsFiles::open(std::slice::from_ref(&path)) else {
            return false;
        };
        for name in files.names() {
            let _ = files.load(&name, &Device::Cpu);
        }
        true
    });
}

#[test]
fn fuzz_model_configs() {
    run_for("config", &seeds("config"), |bytes| {
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        let sampling = SamplingParams::from_generation_config(&value).is_ok();
        hyperparameters(value) || sampling
    });
}

/// A conversation with every field a template reads: a system turn, tool calls and a tool answer.
fn conversation() -> (Vec<Message>, Value) {
    let mut assistant = Message::new("assistant", "");
    assistant.tool_calls = Some(json!([{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]));
    let mut tool = Message::new("tool", "18 C");
    tool.tool_call_id = Some("call_1".into());
    let messages = vec![
        Message::new("system", "Be brief."),
        Message::new("user", "Weather in Paris?"),
        assistant,
        tool,
        Message::new("user", "Thanks"),
    ];
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    (messages, tools)
}

#[test]
fn fuzz_chat_templates() {
    let (messages, tools) = conversation();
    run_for("template", &seeds("template"), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        // A tokenizer_config.json carries the template as a string; anything else is the source.
        let source = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(tc)) => match tc.get("chat_template") {
                Some(Value::String(s)) => s.clone(),
                _ => return false,
            },
            _ => text.into_owned(),
        };
        let template = ChatTemplate::new(source, "<s>".into(), "</s>".into());
        let plain = template.render_chat(&messages[1..2], None).is_ok();
        template.render_chat(&messages, Some(&tools)).is_ok() || plain
    });
}
