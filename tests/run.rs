//! `owrun run` end to end on the built-in stories260k, a real trained TinyStories Llama,
//! against its expected greedy generations (recorded with transformers).

mod support;

use support::hub::{FakeHub, RepoFixture};
use support::{stories260k_dir, stories260k_expected, Sandbox};

fn sandbox() -> Sandbox {
    Sandbox::new("http://127.0.0.1:9")
}

/// The built-in model, by its registry name: run from the binary.
fn stories() -> String {
    "stories260k".to_string()
}

fn expected() -> Vec<serde_json::Value> {
    stories260k_expected()
}

fn json_run(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let r = sb.run(args);
    r.ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// `owrun run MODEL PROMPT -t 0 -n N --json EXTRA…`: a greedy run's JSON document.
fn greedy(sb: &Sandbox, model: &str, prompt: &str, n: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["run", model, prompt, "-t", "0", "-n", n, "--json"];
    args.extend_from_slice(extra);
    json_run(sb, &args)
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn greedy_generations_match_transformers_token_for_token() {
    let m = stories();
    let sb = sandbox();
    for g in expected() {
        let prompt = g["prompt"].as_str().unwrap();
        let out = json_run(&sb, &["run", &m, prompt, "-n", "40", "-t", "0", "--json"]);
        assert_eq!(
            ids(&out["prompt_tokens"]),
            ids(&g["prompt_ids"]),
            "{prompt}"
        );
        assert_eq!(ids(&out["tokens"]), ids(&g["new_token_ids"]), "{prompt}");
        assert_eq!(out["text"], g["continuation"], "{prompt}");
        assert_eq!(out["finish_reason"], "length");
        assert_eq!(out["usage"]["completion_tokens"], 40);

        // Streamed text is exactly the final text.
        let r = sb.run(&["run", &m, prompt, "-n", "40", "-t", "0"]);
        r.ok();
        assert_eq!(r.stdout, g["continuation"].as_str().unwrap());
    }
}

#[test]
fn generation_stops_at_the_end_token() {
    let m = stories();
    let sb = sandbox();
    let out = json_run(&sb, &["run", &m, "Once upon a time", "-t", "0", "--json"]);
    assert_eq!(out["finish_reason"], "stop", "{out}");
    let n = out["tokens"].as_array().unwrap().len();
    assert!(n > 40 && n < 500, "{n} tokens");
    // The end token itself is neither in the tokens nor in the text.
    assert!(!ids(&out["tokens"]).contains(&2));
    assert!(!out["text"].as_str().unwrap().contains("</s>"));
}

#[test]
fn stop_strings_end_generation_and_are_not_printed() {
    let m = stories();
    let sb = sandbox();
    let r = sb.run(&["run", &m, "Once upon a time", "-t", "0", "--stop", "Lily"]);
    r.ok();
    assert_eq!(r.stdout, ", there was a little girl named ");
    let out = json_run(
        &sb,
        &[
            "run",
            &m,
            "Once upon a time",
            "-t",
            "0",
            "--stop",
            "Lily",
            "--json",
        ],
    );
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["text"], ", there was a little girl named ");
}

#[test]
fn the_same_seed_gives_the_same_output() {
    let m = stories();
    let sb = sandbox();
    let sample = |seed: &str| {
        let r = sb.run(&[
            "run",
            &m,
            "Once upon a time",
            "-n",
            "30",
            "-t",
            "1.0",
            "--seed",
            seed,
        ]);
        r.ok();
        r.stdout.clone()
    };
    let a = sample("42");
    assert_eq!(a, sample("42"));
    assert_ne!(a, sample("43"));
    assert_ne!(
        a,
        sb.run(&["run", &m, "Once upon a time", "-n", "30", "-t", "0"])
            .stdout
    );
}

#[test]
fn the_prompt_comes_from_stdin_then_the_argument() {
    let m = stories();
    let sb = sandbox();
    let run_with_stdin = |stdin: &str, args: &[&str]| {
        let r = sb.run_with_stdin(args, stdin);
        r.ok();
        r.stdout
    };
    let piped = run_with_stdin("Once upon a time\n", &["run", &m, "-n", "40", "-t", "0"]);
    assert_eq!(piped, expected()[0]["continuation"].as_str().unwrap());

    let both = run_with_stdin(
        "Once upon a time",
        &["run", &m, "there was", "-n", "5", "-t", "0", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&both).unwrap();
    let alone = json_run(
        &sb,
        &[
            "run",
            &m,
            "Once upon a time\n\nthere was",
            "-n",
            "5",
            "-t",
            "0",
            "--json",
        ],
    );
    assert_eq!(v["prompt_tokens"], alone["prompt_tokens"]);

    sb.run(&["run", &m]).fails_with(2, "no prompt");
}

#[test]
fn a_closed_stdout_ends_generation_quietly() {
    let m = stories();
    let sb = sandbox();
    sb.assert_quiet_on_closed_stdout(&["run", &m, "Once upon a time", "-t", "0"]);

    // And through a real `head`.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' run '{m}' 'Once upon a time' -t 0 | head -c 20",
            env!("CARGO_BIN_EXE_owrun")
        ))
        .envs(sb.cmd().get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b", there was a little");
}

#[test]
fn a_prompt_longer_than_the_context_fails_before_any_work() {
    let m = stories();
    let sb = sandbox();
    let long = "the dog ran to the park. ".repeat(120);
    let r = sb.run(&["run", &m, &long]);
    r.fails_with(2, "context window of 512 tokens");
    assert!(r.stdout.is_empty());
    // --ctx sets a smaller one, and the error names it.
    let short = "the dog ran to the park. ".repeat(10);
    sb.run(&["run", &m, "--ctx", "40", &short])
        .fails_with(2, "context window of 40 tokens");
}

/// Without --ctx, the context shrinks to what one sequence's KV cache can hold in the memory
/// available (stories260K: 640 B per token in f16; 75% of 100 KB holds 117 of its 512), said
/// once on stderr; --ctx overrides it, and a prompt past the fitted context is refused.
#[test]
fn the_context_is_fitted_to_the_memory_available() {
    let m = stories();
    let sb = sandbox();
    let limit = [("OWRUN_MEMORY_LIMIT", "100000")];
    let r = sb.run_env(&["run", &m, "Once", "-n", "3", "--dtype", "f32"], &limit);
    r.ok();
    assert!(
        r.stderr.contains("context 117 tokens of the model's 512")
            && r.stderr.contains("640 B per token"),
        "{}",
        r.stderr
    );
    let r = sb.run_env(
        &[
            "run", &m, "Once", "-n", "3", "--dtype", "f32", "--ctx", "300",
        ],
        &limit,
    );
    r.ok();
    assert!(!r.stderr.contains("tokens of the model's"), "{}", r.stderr);
    let long = "the dog ran to the park. ".repeat(30);
    sb.run_env(&["run", &m, &long, "--dtype", "f32"], &limit)
        .fails_with(2, "context window of 117 tokens");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let m = stories();
    let sb = sandbox();
    sb.run(&["run", &m, "hi", "--device", "tpu"])
        .fails_with(2, "expected auto, cpu, cuda");
    sb.run(&["run", &m, "hi", "--dtype", "int3"])
        .fails_with(2, "--dtype");
    sb.run(&["run", &m, "hi", "--raw", "--system", "x"])
        .fails_with(2, "--raw");
    let bad = sb.dir.path().join("msgs.json");
    std::fs::write(&bad, r#"[{"role":"wizard","content":"hi"}]"#).unwrap();
    sb.run(&["run", &m, "--messages", bad.to_str().unwrap()])
        .fails_with(2, "unknown role");

    // An architecture owrun does not run yet is named, not a crash.
    let dir = sb.dir.path().join("mamba");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(stories260k_dir().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"mamba","architectures":["MambaForCausalLM"]}"#,
    )
    .unwrap();
    sb.run(&["run", dir.to_str().unwrap(), "hi"]).fails_with(
        1,
        "architecture \"mamba\" (MambaForCausalLM) is not supported",
    );
    // A folder without weights says what it lacks.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    sb.run(&["run", dir.to_str().unwrap(), "hi"])
        .fails_with(2, "lacks model.safetensors");
}

#[test]
fn a_hub_model_is_pulled_through_the_gate_then_run() {
    let hub = FakeHub::start();
    hub.add_repo(RepoFixture::from_dir("karpathy/stories260K", &stories260k_dir()).unwrap());
    let sb = Sandbox::new(&hub.url);
    let r = sb.run(&[
        "run",
        "hf:karpathy/stories260K",
        "Once upon a time",
        "-n",
        "40",
        "-t",
        "0",
    ]);
    r.ok();
    assert!(r.stderr.contains("not pulled yet"), "{}", r.stderr);
    assert_eq!(r.stdout, expected()[0]["continuation"].as_str().unwrap());
    // Offline now: it runs from the store.
    hub.clear_log();
    let r = sb.run_env(
        &[
            "run",
            "hf:karpathy/stories260K",
            "Once upon a time",
            "-n",
            "40",
            "-t",
            "0",
        ],
        &[("HF_HUB_OFFLINE", "1")],
    );
    r.ok();
    assert!(hub.log().is_empty());
}

#[test]
fn bench_reports_prefill_and_decode_speed() {
    let m = stories();
    let sb = sandbox();
    let v = json_run(
        &sb,
        &["bench", &m, "-p", "32", "-n", "16", "-r", "2", "--json"],
    );
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests[0]["test"], "pp32");
    assert_eq!(tests[1]["test"], "tg16");
    for t in tests {
        assert_eq!(t["samples"].as_array().unwrap().len(), 2);
        assert!(t["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    // Memory: the weights as held (stories260K: 1.18 MB of f32 on disk, of which the tied
    // lm_head copy is not loaded), the KV cache, and the process's resident memory, which holds
    // at least the weights.
    let weights = v["weight_bytes"].as_u64().unwrap();
    let file = std::fs::metadata(stories260k_dir().join("model.safetensors"))
        .unwrap()
        .len();
    assert!(
        weights <= file && weights * 10 > file * 8,
        "{weights} of {file}"
    );
    assert!(v["kv_cache_bytes"].as_u64().unwrap() > 0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > weights);
    assert_eq!(v["dtype"], "f32");
    let q = json_run(
        &sb,
        &[
            "bench", &m, "-p", "8", "-n", "4", "-r", "1", "--json", "--quant", "q8_0",
        ],
    );
    assert_eq!(q["dtype"], "Q8_0");
    // Q8_0 takes a quarter of f32, but stories260K's down_proj rows (172 wide) fill no block
    // and stay f32, as llama-quantize leaves such rows unquantized.
    assert!(q["weight_bytes"].as_u64().unwrap() * 2 < weights, "{q}");
    let r = sb.run(&["bench", &m, "-p", "32", "-n", "16", "-r", "1"]);
    r.ok();
    assert!(r.stdout.contains("pp32") && r.stdout.contains("tg16") && r.stdout.contains("±"));
    assert!(r.stderr.contains("peak resident"), "{}", r.stderr);
    sb.run(&["bench", &m, "-p", "600", "-n", "100"])
        .fails_with(2, "-p 600 or -n 100 exceeds the model's context of 512");

    // At a depth: the tests are named as llama-bench names them, the cache holds the depth,
    // and its type and bytes per token are reported (stories260K: 5 layers × 4 key/value
    // heads × 8 dimensions × keys and values × 2 bytes = 640 B in f16, 1280 B in f32).
    let d = json_run(
        &sb,
        &[
            "bench", &m, "-p", "16", "-n", "4", "-r", "2", "-d", "300", "--json",
        ],
    );
    assert_eq!(d["tests"][0]["test"], "pp16 @ d300");
    assert_eq!(d["tests"][1]["test"], "tg4 @ d300");
    assert_eq!(d["depth"], 300);
    assert_eq!(d["kv_type"], "f16");
    assert_eq!(d["kv_bytes_per_token"], 640);
    assert!(d["kv_cache_bytes"].as_u64().unwrap() >= 640 * 316, "{d}");
    let f = json_run(
        &sb,
        &[
            "bench",
            &m,
            "-p",
            "8",
            "-n",
            "2",
            "-r",
            "1",
            "--kv-type",
            "f32",
            "--json",
        ],
    );
    assert_eq!(f["kv_type"], "f32");
    assert_eq!(f["kv_bytes_per_token"], 1280);
    sb.run(&["bench", &m, "-p", "16", "-n", "4", "-d", "500"])
        .fails_with(
            2,
            "-d 500 plus -p 16 or -n 4 exceeds the model's context of 512",
        );
}

/// A long prompt costs its KV cache and a fixed budget, not memory that grows with its length:
/// prompts are fed in chunks of 512, and attention streams over the cache. Peak resident memory
/// less the KV cache, for 2,000 and 16,000 prompt tokens, differs by less than 64 MB (measured:
/// 32 to 53 MB at every length from 1,000 to 32,000, in no order: thread and allocator noise).
/// Attention that held a chunk's scores (512 × 16,000 keys × 8 heads in f32) would need 262 MB
/// more at 16,000.
#[test]
fn a_long_prompt_costs_its_kv_cache_and_a_fixed_budget() {
    let m = stories();
    let sb = sandbox();
    let beside_cache = |p: &str| {
        let v = json_run(
            &sb,
            &[
                "bench", &m, "-p", p, "-n", "2", "-r", "1", "--ctx", "16500", "--json",
            ],
        );
        let (peak, kv) = (
            v["peak_rss_bytes"].as_u64().unwrap() as f64,
            v["kv_cache_bytes"].as_u64().unwrap() as f64,
        );
        // 640 B per token in f16, the buffer grown to a power of two.
        assert!(kv >= 640.0 * p.parse::<f64>().unwrap(), "{v}");
        peak - kv
    };
    let (short, long) = (beside_cache("2000"), beside_cache("16000"));
    assert!(
        long < short + 64e6,
        "beside the KV cache: {short} B at 2,000 tokens, {long} B at 16,000"
    );
}

/// The run's prompt and generated token ids are the ones transformers recorded for `case`.
#[track_caller]
fn assert_same_tokens(out: &serde_json::Value, case: &serde_json::Value, label: &str) {
    assert_eq!(
        ids(&out["prompt_tokens"]),
        ids(&case["prompt_ids"]),
        "{label}"
    );
    assert_eq!(ids(&out["tokens"]), ids(&case["new_token_ids"]), "{label}");
}

/// The run's text is transformers' decode. Where a random model emitted bytes that are not
/// UTF-8, the two may differ inside the damaged stretch: transformers turns a whole run of byte
/// tokens into U+FFFD once one byte in it is stray, while a stream has already shown the valid
/// bytes before it. Around that stretch they agree, and nothing after it is lost.
#[track_caller]
fn assert_same_text(ours: &str, theirs: &str, label: &str) {
    match (theirs.find('\u{FFFD}'), theirs.rfind('\u{FFFD}')) {
        (Some(first), Some(last)) => {
            assert!(
                ours.starts_with(&theirs[..first]),
                "{label}: {ours:?} {theirs:?}"
            );
            assert!(
                ours.ends_with(&theirs[last + 3..]),
                "{label}: {ours:?} {theirs:?}"
            );
            assert!(ours.contains('\u{FFFD}'), "{label}: {ours:?} {theirs:?}");
        }
        _ => assert_eq!(ours, theirs, "{label}"),
    }
}

fn fixture_dirs() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_family_runs_token_for_token_like_transformers_through_the_cli() {
    let sb = sandbox();
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 9);
    for dir in dirs {
        let d = dir.to_str().unwrap();
        let exp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let family = exp["family"].as_str().unwrap();

        let plain = &exp["plain"];
        let prompt = plain["prompt"].as_str().unwrap();
        let out = json_run(
            &sb,
            &["run", d, prompt, "--raw", "-t", "0", "-n", "12", "--json"],
        );
        assert_same_tokens(&out, plain, family);
        assert_same_text(
            out["text"].as_str().unwrap(),
            plain["text"].as_str().unwrap(),
            family,
        );

        let chat = &exp["chat"];
        let msgs = exp["chat_messages"].as_array().unwrap();
        let user = msgs[1]["content"].as_str().unwrap();
        let system = msgs[0]["content"].as_str().unwrap();
        let mut args = vec!["run", d, user, "-t", "0", "-n", "12", "--json"];
        if exp["system_folded"] != true {
            args.extend(["--system", system]);
        }
        let out = json_run(&sb, &args);
        assert_same_tokens(&out, chat, &format!("{family} chat"));
        // Streaming prints the same text; a reasoning model's pre-filled thinking is marked.
        let thinking = chat["rendered"].as_str().unwrap().ends_with("<think>\n");
        let text = chat["text"].as_str().unwrap();
        if thinking {
            assert_eq!(out["reasoning"], text.trim(), "{family} chat reasoning");
            assert_eq!(out["text"], "", "{family}: no answer outside <think>");
        } else {
            assert_same_text(
                out["text"].as_str().unwrap(),
                text,
                &format!("{family} chat"),
            );
            assert!(out["reasoning"].is_null());
        }
        args.retain(|a| *a != "--json");
        let r = sb.run(&args);
        r.ok();
        let shown = if thinking {
            format!("<think>{text}")
        } else {
            text.to_string()
        };
        assert_same_text(&r.stdout, &shown, &format!("{family} chat stream"));
        if thinking {
            args.push("--hide-thinking");
            let r = sb.run(&args);
            r.ok();
            assert_eq!(r.stdout, "", "{family}: --hide-thinking");
        }
    }
}

#[test]
fn a_system_prompt_is_folded_into_the_first_turn_when_the_template_has_no_system_role() {
    let sb = sandbox();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gemma");
    let d = dir.to_str().unwrap();
    let r = sb.run(&[
        "run",
        d,
        "Hi",
        "--system",
        "Be brief.",
        "-n",
        "1",
        "-t",
        "0",
        "--json",
    ]);
    r.ok();
    assert_eq!(
        r.stderr.matches("has no system role").count(),
        1,
        "{}",
        r.stderr
    );
    // The same ids as a user turn that starts with the system text.
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let folded = json_run(
        &sb,
        &["run", d, "Be brief.\n\nHi", "-n", "1", "-t", "0", "--json"],
    );
    assert_eq!(v["prompt_tokens"], folded["prompt_tokens"]);
}

#[test]
fn sharded_weights_and_other_dtypes_load() {
    let m = stories260k_dir();
    let m = m.to_str().unwrap();
    let sb = sandbox();
    // A sharded copy of stories260K: two safetensors files and an index, made here.
    let dir = sb.dir.path().join("sharded");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(stories260k_dir().join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(stories260k_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        std::fs::write(
            dir.join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        for n in part.iter() {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let want = &expected()[0];
    let d = dir.to_str().unwrap();
    let out = greedy(&sb, d, "Once upon a time", "40", &[]);
    assert_eq!(ids(&out["tokens"]), ids(&want["new_token_ids"]));

    // 16-bit weights run on the CPU too (greedy tokens may differ after a while; the first
    // ones do not). `owrun kld` measures how far they drift.
    for dtype in ["f16", "bf16"] {
        let out = greedy(&sb, m, "Once upon a time", "5", &["--dtype", dtype]);
        assert_eq!(
            ids(&out["tokens"]),
            ids(&want["new_token_ids"])[..5],
            "{dtype}"
        );
    }
    sb.run(&["run", m, "hi", "--threads", "0"])
        .fails_with(2, "--threads must be at least 1");
    let out = greedy(&sb, m, "Once upon a time", "5", &["--threads", "1"]);
    assert_eq!(ids(&out["tokens"]), ids(&want["new_token_ids"])[..5]);
}

#[test]
fn a_checkpoint_missing_a_tensor_is_an_error_not_a_crash() {
    let sb = sandbox();
    let dir = sb.dir.path().join("truncated");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(stories260k_dir().join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(stories260k_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let missing = "model.layers.2.mlp.down_proj.weight";
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .names()
        .into_iter()
        .filter(|n| *n != missing)
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let r = sb.run_env(
        &["run", dir.to_str().unwrap(), "hi"],
        &[("RUST_BACKTRACE", "0")],
    );
    r.fails_with(1, "the weights lack model.layers.2.mlp.down_proj.weight");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    // A config.json that does not describe the weights: the tensor and both shapes are named.
    std::fs::copy(
        stories260k_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["intermediate_size"] = (config["intermediate_size"].as_u64().unwrap() + 8).into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let r = sb.run_env(
        &["run", dir.to_str().unwrap(), "hi"],
        &[("RUST_BACKTRACE", "0")],
    );
    r.fails_with(1, "but config.json implies");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn a_fine_tune_written_over_the_old_files_is_quantized_again() {
    let sb = sandbox();
    let dir = sb.fixture_copy("llama", "my-tune");
    let model = dir.to_str().unwrap();
    let args = ["--quant", "q8_0", "--seed", "1"];
    let first = ids(&greedy(&sb, model, "hello", "12", &args)["tokens"]);
    // The "fine-tune": the top mantissa bits of every f32 weight scrambled (values change by up
    // to 2x, every float stays finite, the file keeps its size), written over the old file.
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let noise = support::noise(bytes.len(), 7);
    for (b, n) in bytes[header..].iter_mut().zip(&noise).skip(2).step_by(4) {
        *b ^= n & 0x7f;
    }
    std::fs::write(&path, &bytes).unwrap();
    let again = ids(&greedy(&sb, model, "hello", "12", &args)["tokens"]);
    // What the new weights give with no cache at all.
    let fresh = ids(&greedy(&sandbox(), model, "hello", "12", &args)["tokens"]);
    assert_eq!(again, fresh, "the stale quantized weights were reused");
    assert_ne!(first, fresh, "the edit did not change the model");
}
