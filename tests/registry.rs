//! `owrun list`, `show` and `license`, and the registry overlays, end to end through the binary.

mod support;

use std::collections::BTreeSet;

use support::Sandbox;

fn sandbox() -> Sandbox {
    // No hub is needed: nothing here may touch the network (port 9 is discard; nothing listens).
    Sandbox::new("http://127.0.0.1:9")
}

fn list_json(sb: &Sandbox, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["list", "--json"];
    all.extend_from_slice(args);
    let r = sb.run(&all);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("list --json is JSON");
    v["models"].as_array().unwrap().clone()
}

fn names(models: &[serde_json::Value]) -> BTreeSet<String> {
    models
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_builtin_registry_covers_every_family_owrun_runs() {
    let sb = sandbox();
    let all = list_json(&sb, &[]);
    let families: BTreeSet<&str> = all.iter().map(|m| m["family"].as_str().unwrap()).collect();
    for f in [
        "llama",
        "mistral",
        "mixtral",
        "phi3",
        "gemma",
        "gemma2",
        "gemma3",
        "qwen2",
        "qwen3_moe",
    ] {
        assert!(families.contains(f), "no {f} model in the registry");
    }
    let n = names(&all);
    for expected in [
        "llama3-8b",
        "llama3.1-8b",
        "llama3.2-1b",
        "llama3.2-3b",
        "mistral-7b",
        "mixtral-8x7b",
        "phi3-mini",
        "phi3.5-mini",
        "phi4",
        "phi4-mini",
        "gemma-2b",
        "gemma-7b",
        "gemma2-2b",
        "gemma2-9b",
        "gemma3-1b",
        "deepseek-r1-qwen-1.5b",
        "deepseek-r1-qwen-7b",
        "deepseek-r1-qwen-14b",
        "deepseek-r1-llama-8b",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "qwen2.5-7b",
        "smollm2-135m",
        "smollm2-360m",
        "smollm2-1.7b",
    ] {
        assert!(n.contains(expected), "{expected} missing");
    }
    let llama = all.iter().find(|m| m["name"] == "llama3.2-1b").unwrap();
    assert_eq!(llama["repo"], "meta-llama/Llama-3.2-1B-Instruct");
    assert_eq!(llama["gated"], true);
    assert_eq!(llama["licenses"][0], "llama3.2");
}

#[test]
fn license_filters_partition_the_registry() {
    let sb = sandbox();
    let all = list_json(&sb, &[]);
    let commercial = list_json(&sb, &["--license", "commercial"]);
    let noncommercial = list_json(&sb, &["--license", "noncommercial"]);

    for m in &commercial {
        let c = m["commercial"].as_str().unwrap();
        assert!(c == "allowed" || c == "conditional", "{m}");
    }
    for m in &noncommercial {
        assert_eq!(m["commercial"], "notallowed", "{m}");
    }
    // Everything is in exactly one of the two (the built-in registry has no unknown licenses).
    let (c, nc) = (names(&commercial), names(&noncommercial));
    assert!(c.is_disjoint(&nc));
    assert_eq!(&c | &nc, names(&all));
    assert!(nc.len() >= 2, "the filter must have something to filter");
    assert!(nc.contains("codestral-22b") && nc.contains("qwen2.5-3b"));
    assert!(c.contains("llama3-8b") && c.contains("phi4"));
    // The DeepSeek Llama distill carries Llama 3.1's conditions on top of MIT.
    let r1 = commercial
        .iter()
        .find(|m| m["name"] == "deepseek-r1-llama-8b")
        .unwrap();
    assert_eq!(r1["commercial"], "conditional");

    // The table marks the conditional ones and explains the mark.
    let r = sb.run(&["list", "--license", "commercial"]);
    r.ok();
    let llama_line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("llama3-8b "))
        .unwrap();
    assert!(llama_line.contains("conditions"), "{llama_line}");
    // Sizes of the weights: 8.03B parameters are 16.1 GB in bf16, 4.9 GB in Q4_K_M.
    assert!(
        llama_line.contains("16.1 GB") && llama_line.contains("4.9 GB"),
        "{llama_line}"
    );
    let phi_line = r.stdout.lines().find(|l| l.starts_with("phi4 ")).unwrap();
    assert!(phi_line.contains(" yes "), "{phi_line}");
    assert!(!r.stdout.contains("codestral"));
    assert!(r.stdout.contains("allowed with conditions"));

    let osi = list_json(&sb, &["--license", "osi"]);
    assert!(osi
        .iter()
        .all(|m| m["osi_approved"] == true && m["commercial"] == "allowed"));
    let apache = list_json(&sb, &["--license", "apache-2.0", "--family", "qwen2"]);
    assert_eq!(
        names(&apache),
        ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b"]
            .map(String::from)
            .into()
    );
    sb.run(&["list", "--license", "freeware"])
        .fails_with(2, "unknown license filter");
}

#[test]
fn user_registry_files_extend_and_override_entry_by_entry() {
    let sb = sandbox();
    std::fs::create_dir_all(sb.owrun_home()).unwrap();
    std::fs::write(
        sb.owrun_home().join("models.toml"),
        r#"
[models.mine]
repo = "me/my-model"
family = "llama"
params = 7_000_000
context = 2048
license = "cc-by-nc-4.0"
description = "my fine-tune"
tags = ["chat"]

[models."phi4"]
repo = "me/phi4-fork"
family = "phi3"
params = 14_700_000_000
context = 16384
license = "mit"
description = "overridden"
"#,
    )
    .unwrap();
    let later = sb.registry_file(
        "later.toml",
        r#"[models.mine]
repo = "me/my-model-v2"
revision = "v2"
family = "llama"
params = 7_000_000
context = 4096
license = "apache-2.0"
description = "second file wins"
"#,
    );
    let r = sb.run(&["show", "phi4", "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["repo"], "me/phi4-fork");

    // Sizes of the variants --quant offers, from the parameter count (7M: 14 MB in 16 bits,
    // 8.5 bits per weight in Q8_0).
    let r = sb.run(&["show", "mine", "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let v = &v["variant_sizes"];
    assert_eq!(v["bf16"], 14_000_000);
    assert_eq!(v["Q8_0"], 7_437_500);
    assert!(v["Q4_K_M"].as_u64().unwrap() < v["Q8_0"].as_u64().unwrap());

    let r = sb.run(&["show", "mine"]);
    r.ok();
    assert!(
        r.stdout.contains("sizes:        bf16 14.0 MB, Q8_0 7.4 MB"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("me/my-model "), "{}", r.stdout);
    assert!(r.stdout.contains("NonCommercial"));

    for args in [
        vec![
            "--registry",
            later.to_str().unwrap(),
            "show",
            "mine",
            "--json",
        ],
        vec!["show", "mine", "--json"],
    ] {
        let mut c = sb.cmd();
        c.args(&args);
        if args[0] != "--registry" {
            c.env("OWRUN_MODELS", &later);
        }
        let out = c.output().unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["repo"], "me/my-model-v2");
        assert_eq!(v["revision"], "v2");
    }
}

#[test]
fn a_malformed_registry_file_is_reported_with_line_and_column() {
    let sb = sandbox();
    let bad = sb.registry_file(
        "bad.toml",
        "[models.x]\nrepo = \"a/b\"\nfamily = \"llama\"\nparams = many\n",
    );
    let r = sb.run(&["--registry", bad.to_str().unwrap(), "list"]);
    r.fails_with(2, &format!("{}:4:10", bad.display()));
    assert!(r.stdout.is_empty());
    // The file is left as it was.
    assert!(std::fs::read_to_string(&bad).unwrap().contains("many"));

    let missing_field = sb.registry_file("m.toml", "[models.x]\nrepo = \"a/b\"\n");
    sb.run(&["--registry", missing_field.to_str().unwrap(), "list"])
        .fails_with(2, "missing field");
    let bad_repo = sb.registry_file(
        "r.toml",
        "[models.x]\nrepo = \"nope\"\nfamily = \"f\"\nparams = 1\ncontext = 1\nlicense = \"mit\"\ndescription = \"d\"\n",
    );
    sb.run(&["--registry", bad_repo.to_str().unwrap(), "list"])
        .fails_with(2, "not of the form owner/name");
    sb.run(&["--registry", "/nonexistent/x.toml", "list"])
        .fails_with(2, "does not exist");
}

#[test]
fn unknown_models_get_suggestions_and_exit_2() {
    let sb = sandbox();
    sb.run(&["show", "llama3.2-1"])
        .fails_with(2, "did you mean llama3.2-1b");
    sb.run(&["pull", "Qwen/Qwen2.5-0.5B"])
        .fails_with(2, "hf:Qwen/Qwen2.5-0.5B");
    sb.run(&["show"]).fails_with(2, "Usage");
}

#[test]
fn show_tells_everything_known() {
    let sb = sandbox();
    let r = sb.run(&["show", "llama3.2-1b"]);
    r.ok();
    for needle in [
        "meta-llama/Llama-3.2-1B-Instruct",
        "revision:     main",
        "not pulled",
        "131072 tokens",
        "Llama 3.2 Community License (llama3.2)",
        "allowed, with conditions",
        "not yet accepted",
        "https://github.com/meta-llama/llama-models/blob/main/models/llama3_2/LICENSE",
        "owrun pull llama3.2-1b",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?}:\n{}",
            r.stdout
        );
    }
    let r = sb.run(&["show", "codestral-22b", "--license"]);
    r.ok();
    assert!(r.stdout.contains("not allowed"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("repo:"),
        "--license shows only the terms"
    );
}

#[test]
fn license_catalogue_commands() {
    let sb = sandbox();
    let r = sb.run(&["license", "list", "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let ids: Vec<&str> = v["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    for id in [
        "apache-2.0",
        "mit",
        "llama3",
        "gemma",
        "mnpl",
        "cc-by-nc-4.0",
    ] {
        assert!(ids.contains(&id), "{id}");
    }
    let r = sb.run(&["license", "show", "gemma"]);
    r.ok();
    assert!(r.stdout.contains("Prohibited Use Policy"));
    let r = sb.run(&["license", "show", "deepseek-r1-llama-8b"]);
    r.ok();
    assert!(r.stdout.contains("MIT License") && r.stdout.contains("Llama 3.1"));
}

#[test]
fn a_closed_pipe_ends_quietly() {
    // The reader is gone before owrun writes a byte, as with `owrun list | head -0`.
    sandbox().assert_quiet_on_closed_stdout(&["list"]);
}

#[test]
fn help_explains_exit_codes_and_environment() {
    let sb = sandbox();
    let r = sb.run(&["--help"]);
    r.ok();
    for needle in ["EXIT CODES", "OWRUN_USE", "HF_TOKEN", "hf:owner/name"] {
        assert!(r.stdout.contains(needle), "{needle}");
    }
}

#[test]
fn shell_completions_cover_the_commands() {
    let sb = sandbox();
    let r = sb.run(&["completions", "bash"]);
    r.ok();
    for cmd in ["list", "pull", "run", "chat", "bench", "license"] {
        assert!(r.stdout.contains(cmd), "{cmd}");
    }
    sb.run(&["completions", "tcsh"])
        .fails_with(2, "invalid value");
}

#[test]
fn the_builtin_model_is_listed_with_its_license_and_runs_without_files() {
    let sb = sandbox();
    let all = list_json(&sb, &[]);
    let m = all
        .iter()
        .find(|m| m["name"] == "stories260k")
        .expect("stories260k is in the registry");
    assert_eq!(m["licenses"], serde_json::json!(["mit"]));
    assert_eq!(m["commercial"], "allowed");
    assert_eq!(m["builtin"], true);
    assert_eq!(m["pulled"], true);
    let r = sb.run(&["list"]);
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("stories260k"))
        .unwrap();
    assert!(row.contains("mit") && row.contains("built in"), "{row}");

    // Nothing is downloaded (the sandbox's hub is a closed port), nothing is in the HF cache.
    let r = sb.run(&[
        "run",
        "stories260k",
        "Once upon a time",
        "-t",
        "0",
        "-n",
        "8",
    ]);
    r.ok();
    assert!(
        r.stdout.starts_with(", there was a little girl"),
        "{}",
        r.stdout
    );
    assert!(!sb.hub_cache().join("models--karpathy--tinyllamas").exists());
    // Its license text and model card travel with it.
    let r = sb.run(&["show", "stories260k"]);
    r.ok();
    assert!(r.stdout.contains("built into owrun"), "{}", r.stdout);
    assert!(r.stdout.contains("LICENSE"), "{}", r.stdout);
    sb.run(&["pull", "stories260k"])
        .fails_with(2, "built into owrun");
    sb.run(&["rm", "stories260k"])
        .fails_with(2, "built into owrun");
}

#[test]
fn only_models_owrun_carries_can_be_builtin() {
    let sb = sandbox();
    let reg = sb.registry_file(
        "bad.toml",
        r#"[models.x]
repo = "a/b"
builtin = "not-here"
family = "llama"
params = 1
context = 8
license = "mit"
description = "x"
"#,
    );
    sb.run(&["--registry", reg.to_str().unwrap(), "list"])
        .fails_with(2, "not a model this owrun carries");
}

#[test]
fn adapter_entries_name_an_adapter_and_a_model_as_base() {
    let sb = sandbox();
    let check = |toml: &str, needle: &str| {
        let reg = sb.registry_file("adapters.toml", toml);
        sb.run(&["--registry", reg.to_str().unwrap(), "list"])
            .fails_with(2, needle);
    };
    let entry =
        |extra: &str| format!("[models.tune]\nlicense = \"mit\"\ndescription = \"d\"\n{extra}");
    check(&entry("adapter = \"acme/lora\"\n"), "adapter needs a base");
    check(
        &entry(
            "base = \"qwen2.5-0.5b\"\nrepo = \"a/b\"\nfamily = \"f\"\nparams = 1\ncontext = 1\n",
        ),
        "base is for adapter entries",
    );
    check(
        &entry("adapter = \"acme/lora\"\nbase = \"qwen2.5-0.5b\"\nrepo = \"a/b\"\n"),
        "not a repo",
    );
    check(
        &entry("adapter = \"lora\"\nbase = \"qwen2.5-0.5b\"\n"),
        "adapter \"lora\" is not of the form owner/name",
    );
    check(
        &entry("adapter = \"acme/lora\"\nbase = \"no-such-model\"\n"),
        "base \"no-such-model\" is not a registry name or hf:owner/name",
    );
    check(
        &entry("adapter = \"acme/lora\"\nbase = \"/tmp/model\"\n"),
        "is not a registry name or hf:owner/name",
    );
    check(
        &format!(
            "{}\n[models.tune2]\nadapter = \"acme/lora2\"\nbase = \"tune\"\nlicense = \"mit\"\n\
             description = \"d\"\n",
            entry("adapter = \"acme/lora\"\nbase = \"qwen2.5-0.5b\"\n")
        ),
        "is an adapter entry itself",
    );
    check(
        "[models.x]\nrepo = \"a/b\"\nlicense = \"mit\"\ndescription = \"d\"\n",
        "family is missing",
    );

    // A good one takes its base's family, size and context; its base may come from a later
    // file.
    let base = sb.registry_file(
        "base.toml",
        "[models.mybase]\nrepo = \"a/b\"\nfamily = \"qwen2\"\nparams = 500\ncontext = 64\n\
         license = \"apache-2.0\"\ndescription = \"d\"\n",
    );
    let tune = sb.registry_file(
        "tune.toml",
        &entry("adapter = \"acme/lora\"\nbase = \"mybase\"\n"),
    );
    let r = sb.run(&[
        "--registry",
        tune.to_str().unwrap(),
        "--registry",
        base.to_str().unwrap(),
        "show",
        "tune",
        "--json",
    ]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["registry"]["family"], "qwen2");
    assert_eq!(v["registry"]["params"], 500);
    assert_eq!(v["base"], "mybase");
    assert_eq!(v["pulled"], false);
    assert_eq!(v["repo"], "acme/lora");
}
