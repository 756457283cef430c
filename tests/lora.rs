//! LoRA adapters at run time (`--lora`; in the server, per request), merged at load
//! (`--lora-merge`) and merged into a written model (`owrun quantize --lora`), against
//! transformers + PEFT; and adapters by name (Hub repos, registry entries) under their own
//! licenses. The adapters in tests/fixtures/lora were trained-shaped by scripts/make_lora_fixtures.py (rank 4, alpha 8, on
//! q/k/v/o and the MLP; one with rsLoRA) and converted to GGUF by llama.cpp's own
//! convert_lora_to_gguf.py (scripts/convert_lora_fixtures_with_llamacpp.sh).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::gguf::{Gguf, Val};
use support::hub::{FakeHub, Faults, RepoFixture};
use support::Sandbox;

/// The adapter fixtures, each with its base fixture.
const ADAPTERS: [(&str, &str); 4] = [
    ("llama", "llama"),
    ("qwen2", "qwen2"),
    ("gemma2", "gemma2"),
    ("llama_rslora", "llama"),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(adapter: &str) -> Value {
    let p = fixtures().join("lora").join(adapter).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (prompt ids, new token ids) of a greedy run of the plain prompt and of the chat.
fn greedy(sb: &Sandbox, model: &Path, exp: &Value, extra: &[&str]) -> Vec<(Value, Value)> {
    sb.greedy_runs(path(model), exp, extra)
}

/// The text of a greedy 12-token `owrun run` of `prompt` (raw), after the global `lead`
/// options, with `extra` options.
fn run_text(sb: &Sandbox, lead: &[&str], model: &str, prompt: &str, extra: &[&str]) -> String {
    let mut args = lead.to_vec();
    args.extend_from_slice(&[
        "run", model, prompt, "--raw", "-t", "0", "-n", "12", "--json",
    ]);
    args.extend_from_slice(extra);
    let r = sb.run(&args);
    r.ok();
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    doc["text"].as_str().unwrap().to_string()
}

fn recorded(exp: &Value) -> Vec<(Value, Value)> {
    ["plain", "chat"]
        .iter()
        .map(|c| {
            (
                exp[c]["prompt_ids"].clone(),
                exp[c]["new_token_ids"].clone(),
            )
        })
        .collect()
}

#[test]
fn peft_adapters_run_as_transformers_and_peft_run_them() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    for (adapter, base) in ADAPTERS {
        let exp = expected(adapter);
        let model = fixtures().join("models").join(base);
        let lora = fixtures().join("lora").join(adapter);
        let want = recorded(&exp);
        // The adapter changes what the base says.
        let alone = greedy(&sb, &model, &exp, &[]);
        assert_ne!(alone, want, "{adapter}: the adapter changes nothing");
        // f32, and an f16 base (its drift is far below these margins; bf16's is not).
        for extra in [&[][..], &["--dtype", "f16"]] {
            let mut args = vec!["--lora", path(&lora)];
            args.extend_from_slice(extra);
            assert_eq!(
                greedy(&sb, &model, &exp, &args),
                want,
                "{adapter} {extra:?}"
            );
        }
    }
}

/// llama.cpp's converter writes alpha but not rsLoRA, and llama.cpp scales by alpha / rank: the
/// GGUF adapters run as llama.cpp runs them, on a GGUF base and on the folder alike (Llama's q
/// and k rows, which the converter reorders, put back).
#[test]
fn gguf_adapters_from_llama_cpp_s_converter_run_as_peft() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    for (adapter, base) in [("llama", "llama"), ("qwen2", "qwen2")] {
        let exp = expected(adapter);
        let lora = fixtures().join("lora").join(format!("{adapter}.gguf"));
        let file = fixtures().join("gguf").join(format!("{base}.f32.gguf"));
        let folder = fixtures().join("models").join(base);
        for model in [&file, &folder] {
            assert_eq!(
                greedy(&sb, model, &exp, &["--lora", path(&lora)]),
                recorded(&exp),
                "{adapter} on {model:?}"
            );
        }
    }
    // The converter's 16-bit outputs, kept 16-bit: the same tokens (the adapter's values
    // rounded to 16 bits move the logits by far less than the gap between the top two).
    let folder = fixtures().join("models/llama");
    let exp = expected("llama");
    for ty in ["f16", "bf16"] {
        let lora = fixtures().join(format!("lora/llama.{ty}.gguf"));
        assert_eq!(
            greedy(&sb, &folder, &exp, &["--lora", path(&lora)]),
            recorded(&exp),
            "{ty}"
        );
    }
    // rsLoRA: alpha / rank as llama.cpp, or the PEFT scale with a multiplier (alpha/sqrt(r) is
    // 2x alpha/r at rank 4).
    let exp = expected("llama_rslora");
    let lora = fixtures().join("lora/llama_rslora.gguf");
    let model = fixtures().join("gguf/llama.f32.gguf");
    assert_eq!(
        greedy(&sb, &model, &exp, &["--lora", path(&lora)]),
        recorded(&exp["at_alpha_over_r"])
            .into_iter()
            .zip(recorded(&exp))
            .map(|((_, tokens), (ids, _))| (ids, tokens))
            .collect::<Vec<_>>()
    );
    let doubled = format!("{}:2", path(&lora));
    assert_eq!(
        greedy(&sb, &model, &exp, &["--lora", &doubled]),
        recorded(&exp)
    );
    // A Q8_0 base: the GGUF adapter on the converter's Q8_0 file gives the tokens of owrun's own
    // Q8_0 of the folder with the PEFT adapter (the same blocks, the same adapter).
    let exp = expected("gemma2");
    let on_file = greedy(
        &sb,
        &fixtures().join("gguf/gemma2.gguf"),
        &exp,
        &["--lora", path(&fixtures().join("lora/gemma2.gguf"))],
    );
    let on_folder = greedy(
        &sb,
        &fixtures().join("models/gemma2"),
        &exp,
        &[
            "--quant",
            "q8_0",
            "--lora",
            path(&fixtures().join("lora/gemma2")),
        ],
    );
    assert_eq!(on_file, on_folder);
}

/// On a quantized base the adapter adds no drift of its own: the KL divergence of Q8_0 + adapter
/// from f32 + adapter is of the order of Q8_0's alone from f32.
#[test]
fn an_adapter_on_a_quantized_base_drifts_as_the_base_does() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let model = fixtures().join("models/llama");
    let lora = fixtures().join("lora/llama");
    let kld = |extra: &[&str]| -> f64 {
        let mut args = vec!["kld", path(&model), "--quant", "q8_0", "--json"];
        args.extend_from_slice(extra);
        let r = sb.run(&args);
        r.ok();
        let doc: Value = serde_json::from_str(&r.stdout).unwrap();
        doc["comparison"]["mean_kld"].as_f64().unwrap()
    };
    let base = kld(&[]);
    let adapted = kld(&["--lora", path(&lora)]);
    assert!(base > 0.0 && adapted > 0.0, "{base} {adapted}");
    assert!(
        adapted < 3.0 * base,
        "Q8_0 + adapter drifts {adapted}, Q8_0 alone {base}"
    );
}

#[test]
fn adapters_that_do_not_fit_are_clear_errors() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let llama = fixtures().join("models/llama");
    let qwen2 = fixtures().join("models/qwen2");
    let run =
        |model: &Path, lora: &str| sb.run(&["run", path(model), "hi", "-n", "2", "--lora", lora]);
    // Converted for another architecture.
    run(&qwen2, path(&fixtures().join("lora/llama.gguf")))
        .fails_with(2, "is an adapter for llama models; this model is qwen2");
    // Shapes of another base (gemma2_27b: 16 wide, the adapter 64).
    run(
        &fixtures().join("models/gemma2_27b"),
        path(&fixtures().join("lora/gemma2")),
    )
    .fails_with(2, "model.layers.0.");
    // A model given as the adapter; a folder that is not an adapter; nothing there.
    run(&llama, path(&fixtures().join("gguf/llama.gguf")))
        .fails_with(2, "is a model, not an adapter");
    run(&llama, path(&qwen2)).fails_with(2, "has no adapter_config.json");
    run(&llama, "/nonexistent/adapter").fails_with(2, "no such file or folder");
    // An adapter whose B does not match its A (rank 4 against 3).
    let bad = sb.dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let src = fixtures().join("lora/llama");
    std::fs::copy(
        src.join("adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    config["use_dora"] = Value::Bool(true);
    std::fs::write(bad.join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        bad.join("adapter_model.safetensors"),
    )
    .unwrap();
    run(&llama, path(&bad)).fails_with(2, "DoRA adapters are not supported");
    // A different base name is said, not refused.
    let r = run(&qwen2, path(&fixtures().join("lora/gemma2")));
    r.ok();
    assert!(
        r.stderr.contains("trained on owrun-fixtures/gemma2"),
        "{}",
        r.stderr
    );
}

/// chat, bench and kld take adapters as run does.
#[test]
fn every_front_end_takes_adapters() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let model = fixtures().join("models/llama");
    let lora = fixtures().join("lora/llama");
    let exp = expected("llama");
    // chat: one line in, the adapter's answer out.
    let user = exp["chat_messages"][1]["content"].as_str().unwrap();
    let system = exp["chat_messages"][0]["content"].as_str().unwrap();
    let r = sb.run_with_stdin(
        &[
            "chat",
            path(&model),
            "--lora",
            path(&lora),
            "-t",
            "0",
            "-n",
            "12",
            "--system",
            system,
            "--no-history",
        ],
        &format!("{user}\n"),
    );
    r.ok();
    assert!(
        r.stdout.contains(exp["chat"]["text"].as_str().unwrap()),
        "{:?} lacks {:?}",
        r.stdout,
        exp["chat"]["text"]
    );
    let r = sb.run(&[
        "bench",
        path(&model),
        "--lora",
        path(&lora),
        "-p",
        "8",
        "-n",
        "4",
        "--json",
    ]);
    r.ok();
    assert!(r.stderr.contains("LoRA adapter"), "{}", r.stderr);
    // kld measures f32 + adapter against itself: no drift.
    let r = sb.run(&[
        "kld",
        path(&model),
        "--lora",
        path(&lora),
        "--dtype",
        "f32",
        "--kv-type",
        "f32",
        "--json",
    ]);
    r.ok();
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["comparison"]["mean_kld"].as_f64(), Some(0.0), "{doc}");
}

/// The server loads the model once with its adapters; a request picks one by naming
/// `MODEL+NAME` or with `lora`, and requests with different adapters, sent together, are each
/// answered as `owrun run` answers them alone.
#[test]
fn the_server_serves_each_request_its_adapters() {
    use support::server::Server;
    let sb = Sandbox::new("http://127.0.0.1:9");
    let model = fixtures().join("models/llama");
    let (tune, rs) = (
        fixtures().join("lora/llama"),
        fixtures().join("lora/llama_rslora"),
    );
    let exp = expected("llama");
    let prompt = exp["plain"]["prompt"].as_str().unwrap().to_string();
    // What `owrun run` says, alone: base, the adapter, the other adapter at half strength.
    let run_text = |extra: &[&str]| run_text(&sb, &[], path(&model), &prompt, extra);
    let half = format!("{}:0.5", path(&rs));
    let want = [
        run_text(&[]),
        run_text(&["--lora", path(&tune)]),
        run_text(&["--lora", &half]),
    ];
    assert!(want[0] != want[1] && want[1] != want[2], "{want:?}");

    let tune_arg = format!("tune={}", path(&tune));
    let rs_arg = format!("rs={}", path(&rs));
    let server = Server::start(
        &sb,
        &[
            path(&model),
            "--parallel",
            "4",
            "--lora",
            &tune_arg,
            "--lora",
            &rs_arg,
        ],
        &[("OWRUN_TEST_HOOKS", "step_delay_ms=5")],
    );
    server.wait_healthy();
    let id = path(&model).to_string();
    let listed = server.get("/v1/models").json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for name in [id.clone(), format!("{id}+tune"), format!("{id}+rs")] {
        assert!(ids.contains(&name.as_str()), "{name} not in {ids:?}");
    }
    let bodies = [
        serde_json::json!({"model": id, "prompt": prompt}),
        serde_json::json!({"model": format!("{id}+tune"), "prompt": prompt}),
        serde_json::json!({"model": id, "prompt": prompt, "lora": [{"id": 1, "scale": 0.5}]}),
        serde_json::json!({"model": id, "prompt": prompt, "lora": [{"id": "tune"}]}),
    ];
    let port = server.port;
    // All four at once, three times over (they share slots and batches).
    for _ in 0..3 {
        let answers: Vec<_> = bodies
            .iter()
            .map(|b| {
                let mut b = b.clone();
                b["max_tokens"] = 12.into();
                b["temperature"] = 0.into();
                std::thread::spawn(move || {
                    let r = support::server::request(
                        port,
                        "POST",
                        "/v1/completions",
                        &[],
                        &b.to_string(),
                    );
                    (
                        r.status,
                        r.json()["choices"][0]["text"].as_str().map(str::to_string),
                    )
                })
            })
            .collect();
        let got: Vec<_> = answers.into_iter().map(|h| h.join().unwrap()).collect();
        for (i, w) in [0, 1, 2, 1].iter().enumerate() {
            assert_eq!(got[i], (200, Some(want[*w].clone())), "request {i}");
        }
    }
    // Adapters it does not have.
    let r = server.post(
        "/v1/completions",
        &serde_json::json!({"model": id, "prompt": "x", "lora": [{"id": 7}]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("0: tune, 1: rs"), "{}", r.body);
    let r = server.post(
        "/v1/completions",
        &serde_json::json!({"model": format!("{id}+nope"), "prompt": "x"}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = server.post(
        "/v1/completions",
        &serde_json::json!({"model": id, "prompt": "x", "lora": {"id": 0}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn serve_refuses_adapters_it_cannot_place() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let lora = format!("tune={}", path(&fixtures().join("lora/llama")));
    sb.run(&["serve", "--port", "0", "--lora", &lora])
        .fails_with(2, "for one model named on the command line (0 named)");
    let model = fixtures().join("models/llama");
    sb.run(&["serve", path(&model), "--port", "0", "--lora", "no-name"])
        .fails_with(2, "give NAME=PATH");
    sb.run(&[
        "serve",
        path(&model),
        "--port",
        "0",
        "--lora",
        &lora,
        "--lora",
        &lora,
    ])
    .fails_with(2, "given twice");
    sb.run(&["serve", path(&model), "--port", "0", "--lora", "a+b=x"])
        .fails_with(2, "a name is 1 to 64 letters");
}

/// `--lora-merge` folds the adapters into f32 weights at load (W + scale·B·A in f32): the same
/// tokens as transformers + PEFT, which run them beside the weights, for every adapter; and on a
/// GGUF f32 base with llama.cpp's adapter (q and k rows put back before merging).
#[test]
fn merged_adapters_run_as_transformers_and_peft_run_them() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    for (adapter, base) in ADAPTERS {
        let exp = expected(adapter);
        let model = fixtures().join("models").join(base);
        let lora = fixtures().join("lora").join(adapter);
        assert_eq!(
            greedy(&sb, &model, &exp, &["--lora", path(&lora), "--lora-merge"]),
            recorded(&exp),
            "{adapter}"
        );
    }
    for (adapter, base) in [("llama", "llama"), ("qwen2", "qwen2")] {
        let exp = expected(adapter);
        let lora = fixtures().join("lora").join(format!("{adapter}.gguf"));
        let file = fixtures().join("gguf").join(format!("{base}.f32.gguf"));
        assert_eq!(
            greedy(&sb, &file, &exp, &["--lora", path(&lora), "--lora-merge"]),
            recorded(&exp),
            "{adapter} on {file:?}"
        );
    }
    // Said on stderr, without a word of requantizing on a float base.
    let r = sb.run(&[
        "run",
        path(&fixtures().join("models/llama")),
        "hi",
        "-n",
        "2",
        "--lora",
        path(&fixtures().join("lora/llama")),
        "--lora-merge",
    ]);
    r.ok();
    assert!(
        r.stderr
            .contains("merged the LoRA adapters into 14 matrices of the weights\n"),
        "{}",
        r.stderr
    );
}

/// Mean KL divergence from f32 + the adapter run beside the weights (kld's reference).
fn mean_kld(sb: &Sandbox, model: &Path, extra: &[&str]) -> (f64, String) {
    let mut args = vec!["kld", path(model), "--json"];
    args.extend_from_slice(extra);
    let r = sb.run(&args);
    r.ok();
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    (
        doc["comparison"]["mean_kld"].as_f64().unwrap(),
        r.stderr.clone(),
    )
}

/// Merged into a quantized base, the adapter is quantized with the weights it is added to: the
/// sum is rounded to Q8_0's step (a block's largest value / 127) as the base alone is, and the
/// adapter's change (rank 4, small beside W) hardly moves a block's largest value, so the drift
/// from f32 + the adapter beside it is of the order of Q8_0's own drift from f32. Measured on the
/// llama fixture: Q8_0 alone 0.0053, Q8_0 merged 0.0080, Q8_0 with the adapter beside it 0.0074;
/// 3x Q8_0's own leaves room for other machines' rounding, and is far below Q4_0's (0.50).
/// Merged into f32 weights, only f32's rounding of W + B·A is left (measured 1.2e-7).
#[test]
fn merging_into_a_quantized_base_drifts_as_the_base_does() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let model = fixtures().join("models/llama");
    let lora = fixtures().join("lora/llama");
    let (base, _) = mean_kld(&sb, &model, &["--quant", "q8_0"]);
    let (merged, notes) = mean_kld(
        &sb,
        &model,
        &["--quant", "q8_0", "--lora", path(&lora), "--lora-merge"],
    );
    assert!(base > 0.0 && merged > 0.0, "{base} {merged}");
    assert!(
        merged < 3.0 * base,
        "Q8_0 merged with the adapter drifts {merged}, Q8_0 alone {base}"
    );
    assert!(
        notes.contains("14 of them were quantized after merging"),
        "{notes}"
    );
    let (exact, _) = mean_kld(
        &sb,
        &model,
        &[
            "--dtype",
            "f32",
            "--kv-type",
            "f32",
            "--lora",
            path(&lora),
            "--lora-merge",
        ],
    );
    assert!(exact < 1e-5, "f32 merged drifts {exact}");
    // A GGUF Q8_0 base: dequantized, merged and quantized again, which is said.
    let r = sb.run(&[
        "run",
        path(&fixtures().join("gguf/gemma2.gguf")),
        "hi",
        "-n",
        "2",
        "--lora",
        path(&fixtures().join("lora/gemma2.gguf")),
        "--lora-merge",
    ]);
    r.ok();
    assert!(
        r.stderr.contains("merging requantized 14 of them"),
        "{}",
        r.stderr
    );
}

/// Tensor names in the quantization cache of a sandbox (one model, one scheme).
fn cached_names(sb: &Sandbox) -> Vec<String> {
    let dir = sb.owrun_home().join("quantized");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let g = Gguf::parse(&std::fs::read(&files[0]).unwrap());
    g.tensors.iter().map(|t| t.name.clone()).collect()
}

/// The quantization cache is keyed on the base's files alone: merged matrices are neither
/// written to it nor read from it, so a later load without the adapter gets the base's blocks,
/// and one with it merges again.
#[test]
fn merged_matrices_stay_out_of_the_quantization_cache() {
    let model = fixtures().join("models/llama");
    let lora = fixtures().join("lora/llama");
    let exp = expected("llama");
    let q8 = ["--quant", "q8_0"];
    let merge = ["--quant", "q8_0", "--lora", path(&lora), "--lora-merge"];
    let fresh = Sandbox::new("http://127.0.0.1:9");
    let base = greedy(&fresh, &model, &exp, &q8);

    let sb = Sandbox::new("http://127.0.0.1:9");
    let merged = greedy(&sb, &model, &exp, &merge);
    assert_ne!(merged, base, "merging changes nothing");
    let names = cached_names(&sb);
    let adapted = "model.layers.0.self_attn.q_proj.weight";
    assert!(
        names.iter().any(|n| n == "model.embed_tokens.weight"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n == adapted), "{names:?}");
    // The base from that cache, then (the cache now whole) merged again.
    assert_eq!(greedy(&sb, &model, &exp, &q8), base);
    assert!(cached_names(&sb).iter().any(|n| n == adapted));
    assert_eq!(greedy(&sb, &model, &exp, &merge), merged);
}

/// `owrun quantize --lora` merges the adapter before quantizing, as `--lora-merge` does at load:
/// the written Q8_0 file runs as the folder quantized at load with the adapter merged (the same
/// merged matrices quantized row by row to the same blocks; the file's q and k rows reordered
/// for llama.cpp are put back on reading), and the f32 file as transformers + PEFT.
#[test]
fn quantize_with_an_adapter_writes_the_merged_model() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let model = fixtures().join("models/llama");
    let lora = fixtures().join("lora/llama");
    let exp = expected("llama");
    let q8 = sb.dir.path().join("merged.q8_0.gguf");
    let r = sb.run(&[
        "quantize",
        path(&model),
        "--lora",
        path(&lora),
        "--quant",
        "q8_0",
        "-o",
        path(&q8),
    ]);
    r.ok();
    assert!(
        r.stderr.contains(
            "merged the LoRA adapters into 14 matrices of the weights (before quantizing)"
        ),
        "{}",
        r.stderr
    );
    let at_load = greedy(
        &sb,
        &model,
        &exp,
        &["--quant", "q8_0", "--lora", path(&lora), "--lora-merge"],
    );
    assert_eq!(greedy(&sb, &q8, &exp, &[]), at_load);
    // The base's license stays general.license; the adapter is named beside it.
    let g = Gguf::parse(&std::fs::read(&q8).unwrap());
    assert_eq!(g.get("general.license"), Some(&Val::Str("mit".into())));
    match g.get("general.license.name") {
        Some(Val::Str(s)) => assert!(s.contains("LoRA adapter(s) llama (mit) merged in"), "{s}"),
        other => panic!("general.license.name is {other:?}"),
    }

    let f32 = sb.dir.path().join("merged.f32.gguf");
    sb.run(&[
        "quantize",
        path(&model),
        "--lora",
        path(&lora),
        "-o",
        path(&f32),
    ])
    .ok();
    assert_eq!(greedy(&sb, &f32, &exp, &[]), recorded(&exp));
}

#[test]
fn merging_without_an_adapter_or_with_one_that_does_not_fit_is_refused() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let model = fixtures().join("models/llama");
    for command in ["run", "kld"] {
        let mut args = vec![command, path(&model)];
        if command == "run" {
            args.push("hi");
        }
        args.push("--lora-merge");
        sb.run(&args).fails_with(2, "--lora");
    }
    // quantize: an adapter of other shapes (gemma2's 64 wide on gemma2_27b's 16), and one for
    // another architecture; nothing is written, and a file already there is left as it was.
    let out = sb.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("model.gguf");
    let quantize = |model: &str, lora: &Path, force: bool| {
        let mut args = vec![
            "quantize",
            model,
            "--lora",
            path(lora),
            "--quant",
            "q8_0",
            "-o",
            path(&file),
        ];
        if force {
            args.push("--force");
        }
        sb.run(&args)
    };
    quantize(
        path(&fixtures().join("models/gemma2_27b")),
        &fixtures().join("lora/gemma2"),
        false,
    )
    .fails_with(2, "does not fit this model: its model.layers.0.");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    std::fs::write(&file, "old").unwrap();
    quantize(
        path(&fixtures().join("models/qwen2")),
        &fixtures().join("lora/llama.gguf"),
        true,
    )
    .fails_with(2, "is an adapter for llama models; this model is qwen2");
    quantize(
        path(&fixtures().join("models/gemma2_27b")),
        &fixtures().join("lora/gemma2"),
        true,
    )
    .fails_with(2, "does not fit this model");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");
}

// --- adapters by name: from the Hub, in the registry, with their licenses -------------------

/// A Hub repo of the fixture adapter `adapter`: its PEFT folder (with expected.json, which owrun
/// must not fetch), or its GGUF file alone; with a model card under `license`.
fn adapter_repo(id: &str, adapter: &str, gguf: bool, license: &str) -> RepoFixture {
    let lora = fixtures().join("lora");
    let repo = if gguf {
        let file = format!("{adapter}.gguf");
        RepoFixture::new(id).file(&file, std::fs::read(lora.join(&file)).unwrap())
    } else {
        RepoFixture::from_dir(id, &lora.join(adapter)).unwrap()
    };
    repo.file(
        "README.md",
        format!("---\nlicense: {license}\n---\n# {id}\n"),
    )
}

/// The llama fixture model as the Hub repo `id`, under `license`.
fn model_repo(id: &str, license: &str) -> RepoFixture {
    RepoFixture::from_dir(id, &fixtures().join("models/llama"))
        .unwrap()
        .file(
            "README.md",
            format!("---\nlicense: {license}\n---\n# {id}\n"),
        )
}

fn hub_with(repos: Vec<RepoFixture>) -> FakeHub {
    let hub = FakeHub::start();
    for r in repos {
        hub.add_repo(r);
    }
    hub
}

/// The files of `repo` the hub was asked for.
fn fetched(hub: &FakeHub, repo: &str) -> BTreeSet<String> {
    hub.log()
        .iter()
        .filter(|l| !l.cdn && l.method == "GET")
        .filter_map(|l| {
            let rest = l.path.strip_prefix(&format!("/{repo}/resolve/"))?;
            Some(rest.split_once('/')?.1.to_string())
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn hub_adapters_are_pulled_like_models_and_run_as_their_files() {
    let peft = adapter_repo("acme/llama-lora", "llama", false, "mit");
    let hub = hub_with(vec![
        peft.clone(),
        adapter_repo("acme/qwen2-lora-gguf", "qwen2", true, "mit"),
        adapter_repo("acme/rslora-gguf", "llama_rslora", true, "mit"),
    ]);
    let sb = Sandbox::new(&hub.url);
    let llama = fixtures().join("models/llama");
    let exp = expected("llama");

    // Downloads are verified as a model's are.
    hub.set_faults(Faults {
        corrupt: Some("adapter_model.safetensors".into()),
        ..Faults::default()
    });
    let r = sb.run(&["run", path(&llama), "hi", "--lora", "hf:acme/llama-lora"]);
    r.fails_with(1, "does not match the hub's checksum");
    assert!(
        r.stderr
            .contains("the LoRA adapter hf:acme/llama-lora is not pulled yet"),
        "{}",
        r.stderr
    );
    hub.set_faults(Faults::default());

    // Pulled on first use (only the adapter's files, into the HF cache), then run as
    // transformers + PEFT ran it.
    assert_eq!(
        greedy(&sb, &llama, &exp, &["--lora", "hf:acme/llama-lora"]),
        recorded(&exp)
    );
    assert_eq!(
        fetched(&hub, "acme/llama-lora"),
        set(&[
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors"
        ])
    );
    let snapshot = sb
        .repo_dir("acme/llama-lora")
        .join("snapshots")
        .join(peft.commit());
    assert!(snapshot.join("adapter_model.safetensors").is_symlink());
    assert!(!snapshot.join("expected.json").exists());
    // Once pulled, no network.
    hub.clear_log();
    assert_eq!(
        greedy(&sb, &llama, &exp, &["--lora", "hf:acme/llama-lora"]),
        recorded(&exp)
    );
    assert!(hub.log().is_empty(), "{:?}", hub.log());

    // `owrun pull` knows an adapter repo from a model's.
    let r = sb.run(&["pull", "hf:acme/llama-lora"]);
    r.ok();
    assert!(r.stderr.contains("is up to date (3 files"), "{}", r.stderr);

    // A repo of one GGUF adapter: the file and its card are taken.
    let exp = expected("qwen2");
    assert_eq!(
        greedy(
            &sb,
            &fixtures().join("models/qwen2"),
            &exp,
            &["--lora", "hf:acme/qwen2-lora-gguf"]
        ),
        recorded(&exp)
    );
    assert_eq!(
        fetched(&hub, "acme/qwen2-lora-gguf"),
        set(&["README.md", "qwen2.gguf"])
    );

    // A revision and a scale: the rsLoRA adapter's GGUF at twice its alpha / r is PEFT's.
    let commit = adapter_repo("acme/rslora-gguf", "llama_rslora", true, "mit").commit();
    let exp = expected("llama_rslora");
    let spec = format!("hf:acme/rslora-gguf@{commit}:2");
    assert_eq!(
        greedy(
            &sb,
            &fixtures().join("gguf/llama.f32.gguf"),
            &exp,
            &["--lora", &spec]
        ),
        recorded(&exp)
    );

    // `show` describes a pulled adapter repo as an adapter.
    let r = sb.run(&["show", "hf:acme/llama-lora"]);
    r.ok();
    for needle in [
        "kind:         LoRA adapter (PEFT)",
        "repo:         acme/llama-lora",
        "(on disk)",
        "base model:   owrun-fixtures/llama",
        "MIT License (mit)",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?}:\n{}", r.stdout);
    }
    // An adapter is no model; a scale must be a number; rm removes it.
    sb.run(&["run", "hf:acme/llama-lora", "hi"]).fails_with(
        2,
        "is a LoRA adapter, not a model: run its base model with `--lora",
    );
    sb.run(&["run", path(&llama), "hi", "--lora", "hf:acme/llama-lora:x"])
        .fails_with(2, "the adapter's scale");
    sb.run(&["rm", "hf:acme/llama-lora"]).ok();
    assert!(!sb.repo_dir("acme/llama-lora").exists());
}

#[test]
fn an_adapters_license_applies_beside_its_bases() {
    let hub = hub_with(vec![
        model_repo("acme/llama", "apache-2.0"),
        adapter_repo("acme/nc-lora", "llama", false, "cc-by-nc-4.0"),
    ]);
    let sb = Sandbox::new(&hub.url);
    let commercial = [("OWRUN_USE", "commercial")];
    let args = [
        "run",
        "hf:acme/llama",
        "hi",
        "-n",
        "2",
        "--lora",
        "hf:acme/nc-lora",
        "--accept-license",
    ];
    // Commercial use: an Apache base with a non-commercial adapter is refused, naming the
    // adapter and its license, before anything is downloaded.
    let r = sb.run_env(&args, &commercial);
    r.fails_with(
        4,
        "the LoRA adapter hf:acme/nc-lora is under the Creative Commons \
         Attribution-NonCommercial 4.0 (cc-by-nc-4.0), which does not allow commercial use",
    );
    assert!(
        !hub.log().iter().any(|l| l.path.contains("/resolve/")),
        "{:?}",
        hub.log()
    );
    // Without a declared use, its license must be accepted as a model's is.
    let r = sb.run(&args[..args.len() - 1]);
    r.fails_with(3, "the LoRA adapter hf:acme/nc-lora is under");
    assert!(
        r.stderr.contains("owrun license accept hf:acme/nc-lora"),
        "{}",
        r.stderr
    );
    // As it says: `owrun license accept` (it reads the card on the Hub), then it runs.
    sb.run(&["license", "accept", "hf:acme/nc-lora"]).ok();
    assert!(
        !hub.log().iter().any(|l| l.path.contains("/resolve/")),
        "{:?}",
        hub.log()
    );
    sb.run(&args[..args.len() - 1]).ok();
    let text = std::fs::read_to_string(sb.owrun_home().join("accepted-licenses.json")).unwrap();
    assert!(
        text.contains("\"cc-by-nc-4.0\"") && text.contains("\"acme/nc-lora\""),
        "{text}"
    );
    // Pulled, it is judged by its files, without network: still refused for commercial use;
    // the base alone is not.
    hub.clear_log();
    sb.run_env(&args, &commercial)
        .fails_with(4, "the LoRA adapter hf:acme/nc-lora");
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    sb.run_env(&args[..5], &commercial).ok();
    let r = sb.run(&["license", "show", "hf:acme/nc-lora"]);
    r.ok();
    assert!(r.stdout.contains("(cc-by-nc-4.0)"), "{}", r.stdout);

    // An adapter folder of the user's is judged by its model card, as a local model is: only
    // against a declared use.
    let local = sb.dir.path().join("nc-adapter");
    std::fs::create_dir_all(&local).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixtures().join("lora/llama").join(f), local.join(f)).unwrap();
    }
    std::fs::write(local.join("README.md"), "---\nlicense: cc-by-nc-4.0\n---\n").unwrap();
    let llama = fixtures().join("models/llama");
    let run = ["run", path(&llama), "hi", "-n", "2", "--lora", path(&local)];
    sb.run_env(&run, &commercial).fails_with(4, "cc-by-nc-4.0");
    sb.run(&run).ok();
}

#[test]
fn show_describes_adapters_and_refuses_broken_ones() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let r = sb.run(&["show", path(&fixtures().join("lora/llama_rslora"))]);
    r.ok();
    for needle in [
        "kind:         LoRA adapter (PEFT)",
        "base model:   owrun-fixtures/llama (as the adapter names it)",
        "rank:         4",
        "alpha:        8",
        "scale:        4 (alpha / sqrt(r), rsLoRA)",
        "rsLoRA:       yes",
        "targets:      q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (14 linear layers)",
        "license:      MIT License (mit)",
        "the license of the base model it runs on applies too",
        "adapter_model.safetensors",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?}:\n{}", r.stdout);
    }
    let r = sb.run(&["show", path(&fixtures().join("lora/qwen2.gguf"))]);
    r.ok();
    for needle in [
        "kind:         LoRA adapter (GGUF",
        "architecture: qwen2",
        "scale:        2 (alpha / r, as llama.cpp scales a GGUF adapter)",
        "rsLoRA:       not recorded",
        "license:      MIT License (mit)",
        "precision:    f32 (kept in f32)",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?}:\n{}", r.stdout);
    }
    let r = sb.run(&["show", path(&fixtures().join("lora/llama.bf16.gguf"))]);
    r.ok();
    assert!(
        r.stdout
            .contains("precision:    bf16 (kept 16-bit at run time)"),
        "{}",
        r.stdout
    );
    let r = sb.run(&["show", path(&fixtures().join("lora/llama")), "--json"]);
    r.ok();
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["kind"], "lora adapter");
    assert_eq!(doc["format"], "peft");
    assert_eq!(doc["rank"], 4);
    assert_eq!(doc["alpha"], 8.0);
    assert_eq!(doc["scale"], 2.0);
    assert_eq!(doc["rslora"], false);
    assert_eq!(doc["layers"], 14);
    assert_eq!(doc["precision"], "f32");
    assert_eq!(doc["base_model"], "owrun-fixtures/llama");
    assert_eq!(doc["licenses"][0]["id"], "mit");
    let r = sb.run(&["show", path(&fixtures().join("lora/llama")), "--license"]);
    r.ok();
    assert!(r.stdout.starts_with("license:      MIT"), "{}", r.stdout);
    assert!(!r.stdout.contains("rank:"), "{}", r.stdout);

    // A broken adapter is the error `run` gives.
    let bad = sb.dir.path().join("dora");
    std::fs::create_dir_all(&bad).unwrap();
    let src = fixtures().join("lora/llama");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    config["use_dora"] = Value::Bool(true);
    std::fs::write(bad.join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        bad.join("adapter_model.safetensors"),
    )
    .unwrap();
    sb.run(&["show", path(&bad)])
        .fails_with(2, "DoRA adapters are not supported");
}

#[test]
fn registry_entries_run_a_base_with_its_adapter_under_both_licenses() {
    let hub = hub_with(vec![
        model_repo("acme/llama", "apache-2.0"),
        model_repo("acme/nc-llama", "cc-by-nc-4.0"),
        adapter_repo("acme/llama-lora", "llama", false, "mit"),
        adapter_repo("acme/nc-lora", "llama", false, "cc-by-nc-4.0"),
    ]);
    let sb = Sandbox::new(&hub.url);
    let reg = sb.registry_file(
        "tunes.toml",
        r#"
[models.llama-base]
repo = "acme/llama"
family = "llama"
params = 100_000
context = 2048
license = "apache-2.0"
description = "the llama fixture"

[models.my-tune]
adapter = "acme/llama-lora"
base = "llama-base"
license = "mit"
description = "the llama fixture's adapter"

[models.nc-tune]
adapter = "acme/nc-lora"
base = "llama-base"
license = "cc-by-nc-4.0"
description = "a non-commercial adapter"

[models.on-nc-base]
adapter = "acme/llama-lora"
base = "hf:acme/nc-llama"
license = "mit"
description = "an MIT adapter on a non-commercial base"
"#,
    );
    let reg = path(&reg);
    // Non-commercial adapter, commercial use: refused on the registry's word, before any
    // download.
    sb.run_env(
        &[
            "--registry",
            reg,
            "run",
            "nc-tune",
            "hi",
            "--accept-license",
        ],
        &[("OWRUN_USE", "commercial")],
    )
    .fails_with(4, "the LoRA adapter nc-tune is under");
    assert!(hub.log().is_empty(), "{:?}", hub.log());

    // The entry runs its base (pulled) with its adapter (pulled) as PEFT does.
    let exp = expected("llama");
    assert_eq!(
        sb.greedy_runs("my-tune", &exp, &["--registry", reg]),
        recorded(&exp)
    );

    let list = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["--registry", reg, "list", "--json"];
        all.extend_from_slice(args);
        let r = sb.run(&all);
        r.ok();
        let doc: Value = serde_json::from_str(&r.stdout).unwrap();
        doc["models"].as_array().unwrap().clone()
    };
    let row = |rows: &[Value], name: &str| rows.iter().find(|m| m["name"] == name).cloned();
    let all = list(&[]);
    let tune = row(&all, "my-tune").unwrap();
    assert_eq!(tune["licenses"], serde_json::json!(["mit", "apache-2.0"]));
    assert_eq!(tune["commercial"], "allowed");
    assert_eq!(tune["base"], "llama-base");
    assert_eq!(tune["repo"], "acme/llama-lora");
    assert_eq!(tune["family"], "llama");
    assert_eq!(tune["params"], 100_000);
    assert_eq!(tune["pulled"], true);
    let nc = row(&all, "nc-tune").unwrap();
    assert_eq!(nc["commercial"], "notallowed");
    assert_eq!(nc["pulled"], false);
    // A base outside the registry, not pulled: its license is not known yet, so not commercial.
    let on_nc = row(&all, "on-nc-base").unwrap();
    assert_eq!(on_nc["licenses"], serde_json::json!(["mit", "unknown"]));
    // `--license commercial` takes an adapter entry only when both licenses allow it.
    let commercial = list(&["--license", "commercial"]);
    assert!(row(&commercial, "my-tune").is_some());
    assert!(row(&commercial, "llama-base").is_some());
    assert!(row(&commercial, "nc-tune").is_none());
    assert!(row(&commercial, "on-nc-base").is_none());
    // Pulled, the base's card says it: non-commercial.
    sb.run(&["--registry", reg, "pull", "on-nc-base", "--accept-license"])
        .ok();
    let on_nc = row(&list(&[]), "on-nc-base").unwrap();
    assert_eq!(
        on_nc["licenses"],
        serde_json::json!(["mit", "cc-by-nc-4.0"])
    );
    assert_eq!(on_nc["pulled"], true);
    assert!(row(&list(&["--license", "noncommercial"]), "on-nc-base").is_some());
    assert!(row(&list(&["--license", "commercial"]), "on-nc-base").is_none());
    // The table marks adapters and says what that means.
    let r = sb.run(&["--registry", reg, "list", "--license", "commercial"]);
    r.ok();
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("my-tune "))
        .unwrap();
    assert!(
        line.contains("llama+lora") && line.contains("mit+apache-2.0"),
        "{line}"
    );
    assert!(
        r.stdout.contains("the licenses of both apply"),
        "{}",
        r.stdout
    );

    // `show` says what it runs on and both terms.
    let r = sb.run(&["--registry", reg, "show", "my-tune"]);
    r.ok();
    for needle in [
        "kind:         LoRA adapter (PEFT)",
        "description:  the llama fixture's adapter",
        "runs on:      llama-base",
        "license:      MIT License (mit)",
        "base license: Apache License 2.0 (apache-2.0)",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?}:\n{}", r.stdout);
    }
    // The server: the entry by its own name (its base with its adapter), and the same adapter
    // from the Hub under another name at half strength, each as `owrun run` answers; listed
    // with both licenses. An adapter not pulled stops the start (the server never downloads).
    let prompt = exp["plain"]["prompt"].as_str().unwrap();
    let run_text =
        |model: &str, extra: &[&str]| run_text(&sb, &["--registry", reg], model, prompt, extra);
    let want = [
        ("llama-base", run_text("llama-base", &[])),
        ("my-tune", run_text("my-tune", &[])),
        (
            "llama-base+half",
            run_text("llama-base", &["--lora", "hf:acme/llama-lora:0.5"]),
        ),
    ];
    assert!(want[0].1 != want[1].1 && want[1].1 != want[2].1, "{want:?}");
    let server = support::server::Server::start(
        &sb,
        &[
            "--registry",
            reg,
            "my-tune",
            "--lora",
            "half=hf:acme/llama-lora:0.5",
        ],
        &[],
    );
    server.wait_healthy();
    let cards = server.get("/v1/models").json();
    let card = |id: &str| {
        cards["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {cards}"))
    };
    assert_eq!(
        card("my-tune")["licenses"],
        serde_json::json!(["apache-2.0", "mit"])
    );
    assert_eq!(
        card("llama-base+half")["licenses"],
        serde_json::json!(["apache-2.0", "mit"])
    );
    assert_eq!(
        card("llama-base")["licenses"],
        serde_json::json!(["apache-2.0"])
    );
    for (model, text) in &want {
        let r = server.post(
            "/v1/completions",
            &serde_json::json!({"model": model, "prompt": prompt, "max_tokens": 12,
                                "temperature": 0}),
        );
        assert_eq!(r.status, 200, "{model}: {}", r.body);
        assert_eq!(r.json()["choices"][0]["text"], text.as_str(), "{model}");
    }
    drop(server);
    sb.run(&[
        "--registry",
        reg,
        "serve",
        "llama-base",
        "--lora",
        "nc=hf:acme/nc-lora",
    ])
    .fails_with(2, "is not pulled: run `owrun pull hf:acme/nc-lora` first");

    // Commands that take a model say how an adapter entry runs; rm removes the adapter.
    let out = sb.dir.path().join("q.gguf");
    sb.run(&["--registry", reg, "quantize", "my-tune", "-o", path(&out)])
        .fails_with(2, "my-tune is a LoRA adapter on llama-base");
    let r = sb.run(&["--registry", reg, "rm", "my-tune"]);
    r.ok();
    assert!(
        r.stderr.contains("its base llama-base stays"),
        "{}",
        r.stderr
    );
    assert!(!sb.repo_dir("acme/llama-lora").exists());
    assert!(sb.repo_dir("acme/llama").exists());
}

/// Several adapters add up: the same adapter twice at half strength is the adapter once, and an
/// adapter with its negative cancels (the base's tokens).
#[test]
fn several_adapters_add_up() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let model = fixtures().join("models/llama");
    let exp = expected("llama");
    let lora = fixtures().join("lora/llama");
    let half = format!("{}:0.5", path(&lora));
    let halves = greedy(&sb, &model, &exp, &["--lora", &half, "--lora", &half]);
    assert_eq!(halves, recorded(&exp));
    let minus = format!("{}:-1", path(&lora));
    let cancelled = greedy(
        &sb,
        &model,
        &exp,
        &["--lora", path(&lora), "--lora", &minus],
    );
    assert_eq!(cancelled, greedy(&sb, &model, &exp, &[]));
}
