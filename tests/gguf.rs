//! GGUF files as llama.cpp's converter writes them (tests/fixtures/gguf, made from the
//! transformers fixtures by llama.cpp's own convert_hf_to_gguf.py through
//! scripts/convert_fixtures_with_llamacpp.sh): owrun reads their hyperparameters, tensors and
//! tokenizer, and computes what transformers computes.

mod support;

use std::path::{Path, PathBuf};

use support::Sandbox;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(family: &str) -> serde_json::Value {
    let p = root().join("models").join(family).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Greedy run of the plain prompt (raw) and of the chat conversation: (prompt ids, tokens) each.
fn greedy_cases(
    sb: &Sandbox,
    model: &Path,
    family: &str,
    extra: &[&str],
) -> Vec<(serde_json::Value, serde_json::Value)> {
    sb.greedy_runs(model.to_str().unwrap(), &expected(family), extra)
}

#[test]
fn f32_gguf_files_match_transformers() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    // Llama: q/k rows permuted by the converter, Llama 3 rope scaling as rope_freqs, tied
    // embeddings, a byte-level BPE vocabulary; Qwen2: q/k/v biases.
    for family in ["llama", "qwen2"] {
        let exp = expected(family);
        let file = root().join("gguf").join(format!("{family}.f32.gguf"));
        let got = greedy_cases(&sb, &file, family, &[]);
        for ((ids, tokens), case) in got.iter().zip(["plain", "chat"]) {
            assert_eq!(ids, &exp[case]["prompt_ids"], "{family} {case}: prompt ids");
            assert_eq!(
                tokens, &exp[case]["new_token_ids"],
                "{family} {case}: tokens"
            );
        }
    }
}

/// Gemma 2 27B's attention scale: query_pre_attn_scalar is hidden / heads, not head_dim, and
/// llama.cpp's converter does not write it (llama.cpp infers it from the 27B model's 46 layers).
/// The fixture has 46 tiny layers and was converted by llama.cpp's own convert_hf_to_gguf.py
/// (scripts/convert_fixtures_with_llamacpp.sh), with none of the keys a re-implementation adds.
#[test]
fn gemma2_27b_from_llama_cpp_s_converter_scales_attention_as_transformers_does() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let family = "gemma2_27b";
    let exp = expected(family);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models").join(family).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_ne!(config["query_pre_attn_scalar"], config["head_dim"]);
    let file = root().join("gguf").join(format!("{family}.f32.gguf"));
    let dir = root().join("models").join(family);
    for model in [&file, &dir] {
        let got = greedy_cases(&sb, model, family, &[]);
        for ((ids, tokens), case) in got.iter().zip(["plain", "chat"]) {
            assert_eq!(
                ids, &exp[case]["prompt_ids"],
                "{model:?} {case}: prompt ids"
            );
            assert_eq!(
                tokens, &exp[case]["new_token_ids"],
                "{model:?} {case}: tokens"
            );
        }
    }
}

/// Gemma 3 27B (62 layers) likewise: the gemma3 fixture grown to 62 layers (its two layers, then
/// 60 that add nothing) and stripped of `attention.scale`, as llama.cpp's converter writes it, must compute
/// what the same file computes with the scale stated as 1/sqrt(hidden / heads), and not what it
/// computes with 1/sqrt(head_dim).
#[test]
fn gemma3_27b_without_an_attention_scale_scales_by_hidden_over_heads() {
    use support::gguf::{Gguf, Val};
    let sb = Sandbox::new("http://127.0.0.1:9");
    let mut g = Gguf::fixture("gemma3.gguf");
    fn layer(t: &str) -> Option<(&str, &str)> {
        t.strip_prefix("blk.")?.split_once('.')
    }
    let mut grown: Vec<_> = g
        .tensors
        .iter()
        .filter(|t| layer(&t.name).is_none())
        .cloned()
        .collect();
    for l in 0..62 {
        for t in g.tensors.iter().filter(|t| layer(&t.name).is_some()) {
            let (src, rest) = layer(&t.name).unwrap();
            if src == (l % 2).to_string() {
                let mut t = t.clone();
                t.name = format!("blk.{l}.{rest}");
                // Layers past the first two add nothing to the residual stream (their output
                // norms' gains are 0): 62 random layers would drown every difference.
                if l >= 2 && rest.starts_with("post_") {
                    t.data.fill(0);
                }
                grown.push(t);
            }
        }
    }
    g.tensors = grown;
    g.set("gemma3.block_count", Val::U32(62));
    g.set(
        "gemma3.attention.sliding_window_pattern",
        Val::Arr(7, (0..62).map(|l| Val::Bool(l % 2 == 0)).collect()),
    );
    // The model's perplexity over kld's built-in text: any change of scale changes it.
    let perplexity = |g: &Gguf, name: &str| {
        let p = sb.dir.path().join(name);
        std::fs::write(&p, g.to_bytes()).unwrap();
        let r = sb.run(&["kld", p.to_str().unwrap(), "--json"]);
        r.ok();
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        doc["comparison"]["reference_perplexity"].as_f64().unwrap()
    };
    // hidden 64 / 4 heads = 16; head_dim 32.
    g.set("gemma3.attention.scale", Val::F32(1.0 / 16f32.sqrt()));
    let per_head = perplexity(&g, "stated.gguf");
    g.set("gemma3.attention.scale", Val::F32(1.0 / 32f32.sqrt()));
    let head_dim = perplexity(&g, "head-dim.gguf");
    assert!(
        (per_head - head_dim).abs() > 1e-3 * per_head,
        "the scale does not change the perplexity: {per_head} {head_dim}"
    );
    g.remove("gemma3.attention.scale");
    assert_eq!(perplexity(&g, "converted.gguf"), per_head);
}

#[test]
fn q8_0_gguf_files_agree_with_owrun_s_own_q8_0() {
    let sb = Sandbox::new("http://127.0.0.1:9");
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
        let exp = expected(family);
        let file = root().join("gguf").join(format!("{family}.gguf"));
        let from_gguf = greedy_cases(&sb, &file, family, &[]);
        let dir = root().join("models").join(family);
        let ours = greedy_cases(&sb, &dir, family, &["--quant", "q8_0"]);
        for (((ids, tokens), (_, own)), case) in from_gguf.iter().zip(&ours).zip(["plain", "chat"])
        {
            // The tokenizer and chat template rebuilt from GGUF metadata tokenize as
            // transformers does.
            assert_eq!(ids, &exp[case]["prompt_ids"], "{family} {case}: prompt ids");
            // The same Q8_0 blocks as owrun's own quantizer makes: the same tokens.
            assert_eq!(tokens, own, "{family} {case}: tokens");
        }
    }
}

#[test]
fn broken_gguf_files_are_clear_errors() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let not_gguf = sb.dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, "this is text").unwrap();
    let r = sb.run_env(
        &["run", not_gguf.to_str().unwrap(), "hi"],
        &[("RUST_BACKTRACE", "0")],
    );
    r.fails_with(1, "is not a GGUF file");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    // Cut in the middle of the tensor data.
    let bytes = std::fs::read(root().join("gguf/qwen2.gguf")).unwrap();
    let cut = sb.dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let r = sb.run_env(
        &["run", cut.to_str().unwrap(), "hi"],
        &[("RUST_BACKTRACE", "0")],
    );
    r.fails_with(1, "cut short");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    let missing = sb.dir.path().join("absent.gguf");
    sb.run(&["run", missing.to_str().unwrap(), "hi"])
        .fails_with(2, "not a directory or a .gguf file");

    // --quant cannot requantize a GGUF: said, not silently ignored.
    let q = root().join("gguf/qwen2.gguf");
    let r = sb.run(&[
        "run",
        q.to_str().unwrap(),
        "hi",
        "-n",
        "2",
        "--quant",
        "q4_0",
    ]);
    r.ok();
    assert!(r.stderr.contains("--quant Q4_0 ignored"), "{}", r.stderr);
}

#[test]
fn owrun_quantize_writes_gguf_files_that_load_and_agree() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    for family in [
        "llama",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3",
        "phi3",
        "mixtral",
        "phi3_longrope",
        "qwen3_moe",
    ] {
        let dir = root().join("models").join(family);
        let out = sb.dir.path().join(format!("{family}.q8_0.gguf"));
        let r = sb.run(&[
            "quantize",
            dir.to_str().unwrap(),
            "--quant",
            "q8_0",
            "-o",
            out.to_str().unwrap(),
        ]);
        r.ok();
        assert_eq!(r.stdout.trim(), out.to_str().unwrap());
        assert!(r.stderr.contains("Q8_0"), "{}", r.stderr);
        // Run from the file: the tokens of --quant q8_0 on the folder, plain and chat.
        let from_file = greedy_cases(&sb, &out, family, &[]);
        let own = greedy_cases(&sb, &dir, family, &["--quant", "q8_0"]);
        assert_eq!(from_file, own, "{family}");
    }
    // Qwen3-MoE with a dense layer among routed ones: GGUF's qwen3moe routes every layer.
    let mixed = root().join("models/qwen3_moe_mixed");
    sb.run(&[
        "quantize",
        mixed.to_str().unwrap(),
        "--quant",
        "q8_0",
        "-o",
        sb.dir.path().join("mixed.gguf").to_str().unwrap(),
    ])
    .fails_with(2, "dense layers among its routed ones");
    assert!(!sb.dir.path().join("mixed.gguf").exists());
    // Unquantized: the f32 fixture written as F32 GGUF matches transformers exactly.
    let out = sb.dir.path().join("llama.f32.gguf");
    let dir = root().join("models/llama");
    sb.run(&[
        "quantize",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    let exp = expected("llama");
    for ((ids, tokens), case) in greedy_cases(&sb, &out, "llama", &[])
        .iter()
        .zip(["plain", "chat"])
    {
        assert_eq!(ids, &exp[case]["prompt_ids"], "{case}");
        assert_eq!(tokens, &exp[case]["new_token_ids"], "{case}");
    }
    // An existing file is not replaced without --force; a GGUF is not re-quantized.
    sb.run(&[
        "quantize",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .fails_with(2, "--force");
    sb.run(&[
        "quantize",
        out.to_str().unwrap(),
        "--quant",
        "q4_0",
        "-o",
        "/tmp/x.gguf",
    ])
    .fails_with(2, "GGUF file already");
}

/// Newer SentencePiece tokenizer.json files (Mistral v0.3, transformers' `legacy: false`) say
/// "put ▁ before the text" with a Metaspace pre-tokenizer, not a Prepend normalizer; the GGUF
/// that `owrun quantize` writes must keep that dummy prefix. (Chat prompts may still differ: GGUF
/// tokenizers, llama.cpp's included, put ▁ after every special token, which "first" does not.)
#[test]
fn a_metaspace_tokenizer_keeps_its_dummy_prefix_in_gguf() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let dir = sb.fixture_copy("phi3", "phi3_metaspace");
    let path = dir.join("tokenizer.json");
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tj["normalizer"] = serde_json::Value::Null;
    tj["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}",
        "prepend_scheme": "first", "split": false});
    std::fs::write(&path, tj.to_string()).unwrap();
    let out = sb.dir.path().join("phi3_metaspace.gguf");
    sb.run(&[
        "quantize",
        dir.to_str().unwrap(),
        "--quant",
        "q8_0",
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    let plain = |model: &Path, extra: &[&str]| greedy_cases(&sb, model, "phi3", extra).remove(0);
    let from_file = plain(&out, &[]);
    assert_eq!(from_file, plain(&dir, &["--quant", "q8_0"]));
    assert_eq!(from_file.0, expected("phi3")["plain"]["prompt_ids"]);
}

/// A GGUF file split in two shards as gguf-split does it: every shard says split.no / split.count
/// / split.tensors.count, the first carries the metadata, the tensors are divided between them.
fn split_in_two(src: &Path, first: &Path, second: &Path) {
    use candle_core::quantized::gguf_file::{self, Value};
    let mut f = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = names
        .iter()
        .map(|n| {
            let t = content
                .tensor(&mut f, n, &candle_core::Device::Cpu)
                .unwrap();
            (n.to_string(), t)
        })
        .collect();
    let count = Value::U16(2);
    let total = Value::I32(tensors.len() as i32);
    let half = tensors.len() / 2;
    for (i, (path, part)) in [(first, &tensors[..half]), (second, &tensors[half..])]
        .into_iter()
        .enumerate()
    {
        let no = Value::U16(i as u16);
        let mut meta: Vec<(&str, &Value)> = vec![
            ("split.no", &no),
            ("split.count", &count),
            ("split.tensors.count", &total),
        ];
        if i == 0 {
            meta.extend(content.metadata.iter().map(|(k, v)| (k.as_str(), v)));
        }
        let refs: Vec<(&str, &candle_core::quantized::QTensor)> =
            part.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut out, &meta, &refs).unwrap();
    }
}

#[test]
fn gguf_files_are_pulled_by_quantization_tag() {
    use support::hub::{FakeHub, RepoFixture};
    let sb = Sandbox::new("http://127.0.0.1:9");
    let gguf = root().join("gguf");
    let shard1 = sb.dir.path().join("tiny-llama-F32-00001-of-00002.gguf");
    let shard2 = sb.dir.path().join("tiny-llama-F32-00002-of-00002.gguf");
    split_in_two(&gguf.join("llama.f32.gguf"), &shard1, &shard2);
    let hub = FakeHub::start();
    hub.add_repo(
        RepoFixture::new("owrun-test/tiny-llama-GGUF")
            .file("README.md", "---\nlicense: mit\n---\n# tiny llama GGUF\n")
            .file(
                "tiny-llama-Q8_0.gguf",
                std::fs::read(gguf.join("llama.gguf")).unwrap(),
            )
            .file(
                "tiny-llama-F32-00001-of-00002.gguf",
                std::fs::read(&shard1).unwrap(),
            )
            .file(
                "tiny-llama-F32-00002-of-00002.gguf",
                std::fs::read(&shard2).unwrap(),
            )
            .file("tiny-llama-Q4_K_M.gguf", support::noise(300_000, 3)),
    );
    let sb = Sandbox::new(&hub.url);
    let exp = expected("llama");
    let prompt = exp["plain"]["prompt"].as_str().unwrap();
    let run = |name: &str| {
        let r = sb.run(&[
            "run", name, prompt, "--raw", "-t", "0", "-n", "12", "--json",
        ]);
        r.ok();
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        doc["tokens"].clone()
    };
    // One quantization's file, as llama-cli -hf picks it: the same tokens as the file itself.
    let direct = run(gguf.join("llama.gguf").to_str().unwrap());
    assert_eq!(run("hf:owrun-test/tiny-llama-GGUF:q8_0"), direct);
    // A split F32 file: both shards, read as one; exact against transformers.
    assert_eq!(
        run("hf:owrun-test/tiny-llama-GGUF:F32"),
        exp["plain"]["new_token_ids"]
    );
    // Nothing else was downloaded.
    let mut blobs: Vec<u64> =
        std::fs::read_dir(sb.repo_dir("owrun-test/tiny-llama-GGUF").join("blobs"))
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .collect();
    blobs.sort();
    assert!(
        !blobs.contains(&300_000),
        "the Q4_K_M file was fetched: {blobs:?}"
    );
    assert_eq!(blobs.len(), 4, "README, Q8_0 and two F32 shards: {blobs:?}");
    // A quantization the repo does not have: what it has instead.
    sb.run(&["run", "hf:owrun-test/tiny-llama-GGUF:Q3_K_L", "hi"])
        .fails_with(1, "tiny-llama-Q8_0.gguf");

    // A registry entry naming the GGUF repo: NAME:QUANT, ollama-style.
    let registry = sb.registry_file(
        "models.toml",
        r#"[models."tiny"]
repo = "owrun-test/tiny-llama"
gguf_repo = "owrun-test/tiny-llama-GGUF"
family = "llama"
params = 100000
context = 256
license = "mit"
description = "a tiny test llama"
"#,
    );
    let r = sb.run(&[
        "--registry",
        registry.to_str().unwrap(),
        "run",
        "tiny:q8_0",
        prompt,
        "--raw",
        "-t",
        "0",
        "-n",
        "12",
        "--json",
    ]);
    r.ok();
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["tokens"], direct);
    assert_eq!(doc["model"], "tiny:q8_0");
}

#[test]
fn a_gguf_file_s_license_is_read_from_its_metadata() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    // The fixtures carry general.license = mit: commercial use is allowed.
    let mit = root().join("gguf/qwen2.gguf");
    sb.run_env(
        &["run", mit.to_str().unwrap(), "hi", "-n", "1"],
        &[("OWRUN_USE", "commercial")],
    )
    .ok();
    // owrun quantize writes the model card's license; a non-commercial one is then refused.
    let dir = sb.dir.path().join("nc-model");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(root().join("models/qwen2"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    std::fs::write(
        dir.join("README.md"),
        "---\nlicense: cc-by-nc-4.0\n---\n# nc\n",
    )
    .unwrap();
    let out = sb.dir.path().join("nc.gguf");
    sb.run(&[
        "quantize",
        dir.to_str().unwrap(),
        "--quant",
        "q8_0",
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    sb.run_env(
        &["run", out.to_str().unwrap(), "hi", "-n", "1"],
        &[("OWRUN_USE", "commercial")],
    )
    .fails_with(4, "cc-by-nc-4.0");
}
