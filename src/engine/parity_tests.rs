//! Numerical parity with Hugging Face transformers on tiny random models of every family
//! (tests/fixtures/models, made by scripts/make_fixtures.py): the same prompt ids, the same
//! rendered chat prompt, first-step logits within 1e-3, the same greedy tokens.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::generate::decoding::{generate, GenerateParams};
use super::generate::sampler::{argmax, Sampler, SamplingParams};
use super::model::kv::KvType;
use super::model::SeqId;
use super::text::template::Message;
use super::{DTypeChoice, DeviceChoice, Engine, LoadOptions};

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures/models exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 11, "fixtures missing in {}", root.display());
    dirs
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(dir: &Path, dtype: DTypeChoice) -> Engine {
    let opts = LoadOptions {
        threads: None,
        device: DeviceChoice::Cpu,
        dtype,
        quant: None,
        quant_cache: None,
        kv_type: KvType::F32,
        context: None,
        adapters: Vec::new(),
        merge_adapters: false,
    };
    Engine::load(dir, &[dir.join("model.safetensors")], &opts)
        .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()))
}

fn greedy(engine: &mut Engine, seq: SeqId, prompt: &[u32], n: usize) -> Vec<u32> {
    let sampler = Sampler::new(SamplingParams {
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..SamplingParams::default()
    });
    let eos = engine.text.eos.clone();
    let params = GenerateParams {
        max_tokens: Some(n),
        stop: &[],
        eos: &eos,
        cancel: None,
    };
    generate(
        &mut engine.model,
        seq,
        &engine.text.tokenizer,
        sampler,
        prompt,
        &params,
        &mut |_| Ok(()),
    )
    .unwrap()
    .tokens
}

#[test]
fn every_family_matches_transformers() {
    for dir in fixtures() {
        let family = dir.file_name().unwrap().to_string_lossy().to_string();
        let exp: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let mut engine = load(&dir, DTypeChoice::F32);
        let mut want_eos = ids(&exp["eos_token_ids"]);
        want_eos.sort_unstable();
        assert_eq!(engine.text.eos, want_eos, "{family}: end-of-sequence ids");

        // Plain prompt: tokenizer BOS handling as transformers does it.
        let plain = &exp["plain"];
        let prompt = engine
            .text
            .encode(plain["prompt"].as_str().unwrap(), true)
            .unwrap();
        assert_eq!(
            prompt,
            ids(&plain["prompt_ids"]),
            "{family}: plain prompt ids"
        );

        // Chat prompt: the template renders exactly as apply_chat_template.
        let chat = &exp["chat"];
        let mut messages: Vec<Message> =
            serde_json::from_value(exp["chat_messages"].clone()).unwrap();
        if exp["system_folded"] == true {
            messages.remove(0);
        }
        let template = engine
            .text
            .template
            .as_ref()
            .expect("fixture has a template");
        let rendered = template.render(&messages, true).unwrap();
        assert_eq!(
            rendered,
            chat["rendered"].as_str().unwrap(),
            "{family}: rendered chat"
        );
        let chat_prompt = engine.text.encode(&rendered, false).unwrap();
        assert_eq!(
            chat_prompt,
            ids(&chat["prompt_ids"]),
            "{family}: chat prompt ids"
        );

        for (what, case, prompt) in [("plain", plain, prompt), ("chat", chat, chat_prompt)] {
            let seq = engine.model.new_sequence();
            let logits = engine.model.forward(seq, &prompt).unwrap();
            let want: Vec<f64> = case["first_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(logits.len(), want.len(), "{family} {what}: vocab size");
            let max_diff = logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(
                max_diff < 1e-3,
                "{family} {what}: logits differ by {max_diff}"
            );

            engine.model.truncate(seq, 0).unwrap();
            let tokens = greedy(&mut engine, seq, &prompt, 12);
            assert_eq!(
                tokens,
                ids(&case["new_token_ids"]),
                "{family} {what}: greedy tokens"
            );
        }
    }
}

/// Several sequences in one model, decoded together in batched forwards, each give exactly the
/// tokens they give alone; a sequence cut back and fed again continues as if never cut.
#[test]
fn interleaved_sequences_match_sequences_alone() {
    for family in ["llama", "gemma3", "mixtral", "phi3"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(family);
        let exp: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let mut engine = load(&dir, DTypeChoice::F32);
        let prompts = [
            ids(&exp["plain"]["prompt_ids"]),
            ids(&exp["chat"]["prompt_ids"]),
        ];
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                let seq = engine.model.new_sequence();
                let out = greedy_raw(&mut engine, &[(seq, p.clone())], 10).remove(0);
                engine.model.free(seq);
                out
            })
            .collect();
        // Both sequences advance in the same forwards (prefill of both, then one token each).
        let a = engine.model.new_sequence();
        let b = engine.model.new_sequence();
        let together = greedy_raw(
            &mut engine,
            &[(a, prompts[0].clone()), (b, prompts[1].clone())],
            10,
        );
        assert_eq!(together, alone, "{family}: batched decoding");

        // Truncation: cut b back to its prompt minus two tokens, feed them again.
        let keep = prompts[1].len() - 2;
        engine.model.truncate(b, keep).unwrap();
        assert_eq!(engine.model.len(b), keep);
        let again = greedy_raw(&mut engine, &[(b, prompts[1][keep..].to_vec())], 10).remove(0);
        assert_eq!(again, alone[1], "{family}: after truncation");
    }
}

/// The streaming attention over the CPU cache (f32 rows, rings for windowed layers, prompts in
/// chunks) gives the logits of the tensor attention with a full mask within 1e-4, on a prompt
/// that wraps the windowed layers' rings twice (window 16 + a chunk of 512 = 528 positions) and
/// on 150 greedy steps after it; and a sequence cut back inside its ring continues the same.
#[test]
fn streaming_attention_matches_the_full_mask_far_past_the_window() {
    for family in ["llama", "qwen3", "gemma2", "gemma3", "mistral", "phi3"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(family);
        let mut engine = load(&dir, DTypeChoice::F32);
        // Past the fixtures' trained 256 positions: both paths rotate the same way.
        engine.model.set_context(2048);
        let vocab = engine.model.decoder.arch.vocab_size as u64;
        let prompt: Vec<u32> = (0..1300u64)
            .map(|i| ((i * 2_654_435_761) % vocab) as u32)
            .collect();
        let ours = engine.model.new_sequence();
        let theirs = engine.model.new_reference_sequence();
        let close = |a: &[f32], b: &[f32], what: &str| {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "{family} {what}: logits differ by {d}");
        };
        let mut a = engine.model.forward(ours, &prompt).unwrap();
        let mut b = engine.model.forward(theirs, &prompt).unwrap();
        close(&a, &b, "prompt");
        let mut tokens = Vec::new();
        for step in 0..150 {
            let (ta, tb) = (argmax(&a), argmax(&b));
            assert_eq!(ta, tb, "{family}: token {step}");
            tokens.push(ta);
            a = engine.model.forward(ours, &[ta]).unwrap();
            b = engine.model.forward(theirs, &[tb]).unwrap();
            close(&a, &b, &format!("step {step}"));
        }
        // Cut back 100 positions (inside every ring) and feed the same tokens again.
        let len = engine.model.len(ours);
        assert_eq!(engine.model.truncate(ours, len - 100).unwrap(), len - 100);
        let again = engine
            .model
            .forward(ours, &tokens[tokens.len() - 100..])
            .unwrap();
        let want = engine.model.forward(theirs, &[]).err();
        assert!(want.is_some(), "a forward of no tokens is refused");
        engine.model.truncate(theirs, len - 100).unwrap();
        let b = engine
            .model
            .forward(theirs, &tokens[tokens.len() - 100..])
            .unwrap();
        close(&again, &b, "after truncation");
    }
}

/// Long prompts against transformers (tests/fixtures/long, `scripts/make_long_fixtures.py`): a
/// 3,000-token prompt (six prefill chunks, far past every 16-token window and its ring, past
/// LongRoPE's original context) gives the logits of its last four positions within 1e-3 and the
/// same eight greedy tokens, with an f32 cache; with the default f16 cache the same tokens and
/// logits within 5e-2. Why: a key or value rounded to f16 moves by at most 2^-11 of itself;
/// attention passes that on (a convex mix of values; scores moved by the same share), and the
/// two random layers of a fixture, whose matrices have gains near 2 (initializer 0.25 over 64
/// inputs), amplify it about 8x on the way to logits of magnitude 5 to 15: 6 × 2^-11 × 8 ≈
/// 0.025. Measured: at most 0.020 (phi3_longrope), 0.0006 to 0.014 elsewhere.
#[test]
fn long_prompts_match_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for family in [
        "llama",
        "qwen2",
        "mistral",
        "gemma2",
        "gemma3",
        "phi3_longrope",
        "phi3_longrope_1000",
        "qwen2_yarn",
        "llama_yarn_mscale",
        "llama_dynamic",
    ] {
        let exp: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("long").join(format!("{family}.json"))).unwrap(),
        )
        .unwrap();
        // The model, with the fixture's changes to its config.json (in a copy).
        let base = root.join("models").join(exp["model"].as_str().unwrap());
        let copy = tempfile::tempdir().unwrap();
        let dir = if exp["config_changes"].as_object().unwrap().is_empty() {
            base
        } else {
            for f in std::fs::read_dir(&base).unwrap().flatten() {
                std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
            }
            let path = copy.path().join("config.json");
            let mut cfg: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for (k, v) in exp["config_changes"].as_object().unwrap() {
                cfg[k] = v.clone();
                if cfg["rope_parameters"].get(k).is_some() {
                    cfg["rope_parameters"][k] = v.clone();
                }
            }
            std::fs::write(&path, cfg.to_string()).unwrap();
            copy.path().to_path_buf()
        };
        for (kv, tolerance) in [(KvType::F32, 1e-3), (KvType::F16, 5e-2)] {
            let mut engine =
                Engine::load(&dir, &[dir.join("model.safetensors")], &long_options(kv)).unwrap();
            assert_long_prompt(&mut engine, &exp, tolerance, &format!("{family} {kv:?}"));
        }
    }
}

/// YaRN from a GGUF file, as llama.cpp's converter writes its scaling (type, factor, original
/// context): the long prompt of qwen2_yarn as transformers computes it.
#[test]
fn yarn_from_a_converted_gguf_matches_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("long/qwen2_yarn.json")).unwrap())
            .unwrap();
    let file = root.join("gguf/qwen2_yarn.f32.gguf");
    let mut engine = Engine::load_gguf(&file, &long_options(KvType::F32)).unwrap();
    assert_long_prompt(&mut engine, &exp, 1e-3, "qwen2_yarn.f32.gguf");
}

fn long_options(kv_type: KvType) -> LoadOptions {
    LoadOptions {
        threads: None,
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::F32,
        quant: None,
        quant_cache: None,
        kv_type,
        context: Some(4096),
        adapters: Vec::new(),
        merge_adapters: false,
    }
}

/// A long-prompt fixture's last logits (within `tolerance`) and greedy tokens.
fn assert_long_prompt(engine: &mut Engine, exp: &Value, tolerance: f64, what: &str) {
    let prompt = ids(&exp["prompt_ids"]);
    let want_tokens = ids(&exp["new_token_ids"]);
    let want: Vec<Vec<f64>> = exp["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    let seq = engine.model.new_sequence();
    let split = prompt.len() - want.len();
    // The prompt in one call, as `run` feeds it (the model cuts it into chunks), with logits
    // after each of its last positions.
    let mut got = engine.model.forward_all(seq, &prompt).unwrap();
    let got = got.split_off(split);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = g
            .iter()
            .zip(w)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            d < tolerance,
            "{what}: logits at position {} differ by {d}",
            split + i
        );
    }
    engine.model.truncate(seq, 0).unwrap();
    let tokens = greedy(engine, seq, &prompt, want_tokens.len());
    assert_eq!(tokens, want_tokens, "{what}: greedy tokens");
}

/// Greedy decoding of several sequences in lockstep: each entry's tokens are appended to its
/// sequence, then `n` tokens are chosen for each.
fn greedy_raw(engine: &mut Engine, start: &[(SeqId, Vec<u32>)], n: usize) -> Vec<Vec<u32>> {
    let batch: Vec<(SeqId, &[u32])> = start.iter().map(|(s, t)| (*s, t.as_slice())).collect();
    let mut logits = engine.model.forward_batch(&batch).unwrap();
    let mut out = vec![Vec::new(); start.len()];
    for step in 0..n {
        let next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        for (o, t) in out.iter_mut().zip(&next) {
            o.push(*t);
        }
        if step + 1 == n {
            break;
        }
        let batch: Vec<(SeqId, &[u32])> = start
            .iter()
            .zip(&next)
            .map(|((s, _), t)| (*s, std::slice::from_ref(t)))
            .collect();
        logits = engine.model.forward_batch(&batch).unwrap();
    }
    out
}

/// GGUF files written the way llama.cpp's converter writes them (tests/fixtures/gguf, Q8_0)
/// give the same logits as owrun quantizing the safetensors to Q8_0 itself: the converter's
/// q/k permutation, Gemma's stored norm gains, merged experts, rope tensors and hyperparameter
/// keys are all undone exactly. (Token-level checks through the CLI are in tests/gguf.rs.)
#[test]
fn gguf_files_give_the_logits_of_owrun_s_own_q8_0() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for family in [
        "llama",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3",
        "phi3",
        "mixtral",
        "qwen3_moe",
    ] {
        let dir = root.join("models").join(family);
        let exp: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let opts = LoadOptions {
            threads: None,
            device: DeviceChoice::Cpu,
            dtype: DTypeChoice::Auto,
            quant: Some(super::quantize::Scheme::Q8_0),
            quant_cache: None,
            kv_type: KvType::F32,
            context: None,
            adapters: Vec::new(),
            merge_adapters: false,
        };
        let mut ours = Engine::load(&dir, &[dir.join("model.safetensors")], &opts).unwrap();
        let file = root.join("gguf").join(format!("{family}.gguf"));
        let mut theirs = Engine::load_gguf(
            &file,
            &LoadOptions {
                quant: None,
                ..opts.clone()
            },
        )
        .unwrap_or_else(|e| panic!("{family}: {e:#}"));
        assert_eq!(
            theirs.text.eos, ours.text.eos,
            "{family}: end-of-sequence ids"
        );
        for case in ["plain", "chat"] {
            let prompt = ids(&exp[case]["prompt_ids"]);
            let a = ours.model.new_sequence();
            let b = theirs.model.new_sequence();
            let want = ours.model.forward(a, &prompt).unwrap();
            let got = theirs.model.forward(b, &prompt).unwrap();
            let diff = want
                .iter()
                .zip(&got)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{family} {case}: logits differ by {diff}");
        }
    }
}

/// LoRA adapters (tests/fixtures/lora, made with PEFT): the first-step logits with the adapter
/// are transformers + PEFT's within 1e-3, and a batch mixing a sequence with the adapter and
/// one without gives each what it gives alone (the server batches requests with different
/// adapters this way).
#[test]
fn lora_adapters_match_peft_and_mix_in_one_batch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (adapter, base) in [
        ("llama", "llama"),
        ("qwen2", "qwen2"),
        ("gemma2", "gemma2"),
        ("llama_rslora", "llama"),
    ] {
        let dir = root.join("models").join(base);
        let opts = LoadOptions {
            threads: None,
            device: DeviceChoice::Cpu,
            dtype: DTypeChoice::F32,
            quant: None,
            quant_cache: None,
            kv_type: KvType::F32,
            context: None,
            adapters: vec![(root.join("lora").join(adapter), 1.0)],
            merge_adapters: false,
        };
        let mut engine = Engine::load(&dir, &[dir.join("model.safetensors")], &opts).unwrap();
        let lora: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("lora").join(adapter).join("expected.json"))
                .unwrap(),
        )
        .unwrap();
        let plain: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let prompt = ids(&lora["plain"]["prompt_ids"]);
        let close = |got: &[f32], want: &Value, what: &str| {
            let want: Vec<f32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert_eq!(got.len(), want.len(), "{adapter} {what}");
            assert!(worst < 1e-3, "{adapter} {what}: logits differ by {worst}");
        };
        let model = &mut engine.model;
        let alone = |model: &mut super::model::Model, on: f32| {
            let s = model.new_sequence();
            model.set_adapters(s, vec![on]).unwrap();
            model.forward(s, &prompt).unwrap()
        };
        let with = alone(model, 1.0);
        let without = alone(model, 0.0);
        close(&with, &lora["plain"]["first_logits"], "with the adapter");
        close(&without, &plain["plain"]["first_logits"], "without it");
        // Together, in one batch (and with a longer third sequence, so rows differ in count).
        let (a, b, c) = (
            model.new_sequence(),
            model.new_sequence(),
            model.new_sequence(),
        );
        model.set_adapters(a, vec![1.0]).unwrap();
        model.set_adapters(b, vec![0.0]).unwrap();
        model.set_adapters(c, vec![0.5]).unwrap();
        let longer: Vec<u32> = prompt.iter().chain(&prompt).copied().collect();
        let out = model
            .forward_batch(&[(a, &prompt), (b, &prompt), (c, &longer)])
            .unwrap();
        let half_alone = {
            let s = model.new_sequence();
            model.set_adapters(s, vec![0.5]).unwrap();
            model.forward(s, &longer).unwrap()
        };
        for (got, want, what) in [
            (&out[0], &with, "batched with"),
            (&out[1], &without, "batched without"),
            (&out[2], &half_alone, "batched at 0.5"),
        ] {
            let worst = got
                .iter()
                .zip(want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{adapter} {what}: {worst}");
        }
        assert!(model.set_adapters(a, vec![1.0, 1.0]).is_err());
    }
}
