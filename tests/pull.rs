//! `owrun pull`, `rm`, `show` and the license gate, end to end against the fake hub.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::hub::{sha256_hex, FakeHub, Faults, RepoFixture};
use support::{model_repo, noise, Sandbox};

const WEIGHTS: usize = 1_500_000;

fn hub_with(repos: Vec<RepoFixture>) -> FakeHub {
    let hub = FakeHub::start();
    for r in repos {
        hub.add_repo(r);
    }
    hub
}

fn blob_count(sb: &Sandbox, repo: &str) -> usize {
    std::fs::read_dir(sb.repo_dir(repo).join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn snapshot_file(sb: &Sandbox, fixture: &RepoFixture, file: &str) -> std::path::PathBuf {
    sb.repo_dir(&fixture.id)
        .join("snapshots")
        .join(fixture.commit())
        .join(file)
}

#[test]
fn pull_fetches_only_what_is_needed_in_the_hf_cache_layout() {
    let repo = model_repo("acme/tiny", "apache-2.0", WEIGHTS);
    let hub = hub_with(vec![repo.clone()]);
    let sb = Sandbox::new(&hub.url);

    let r = sb.run(&["pull", "hf:acme/tiny"]);
    r.ok();
    assert!(r.stdout.is_empty(), "pull printed to stdout: {}", r.stdout);
    assert!(r.stderr.contains("pulled hf:acme/tiny"), "{}", r.stderr);

    // refs/main → commit; snapshot entries are symlinks to blobs named by their hash.
    let dir = sb.repo_dir("acme/tiny");
    let commit = std::fs::read_to_string(dir.join("refs/main")).unwrap();
    assert_eq!(commit, repo.commit());
    let weights = snapshot_file(&sb, &repo, "model.safetensors");
    let link = std::fs::read_link(&weights).unwrap();
    let content = &repo
        .files
        .iter()
        .find(|f| f.0 == "model.safetensors")
        .unwrap()
        .1;
    assert_eq!(link, Path::new("../../blobs").join(sha256_hex(content)));
    assert_eq!(std::fs::read(&weights).unwrap(), *content);
    for f in [
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "README.md",
    ] {
        assert!(snapshot_file(&sb, &repo, f).exists(), "{f} missing");
    }
    assert!(!snapshot_file(&sb, &repo, "pytorch_model.bin").exists());

    let log = hub.log();
    assert!(
        !log.iter()
            .any(|l| l.path.contains(".bin") || l.path.contains("original/")),
        "fetched files owrun does not need: {log:?}"
    );
    // Weights came through the CDN redirect, and no token travelled there.
    assert!(log.iter().any(|l| l.cdn && l.status == 200));
    assert!(log
        .iter()
        .filter(|l| l.cdn)
        .all(|l| l.authorization.is_none()));

    // A second pull downloads nothing.
    hub.clear_log();
    let r = sb.run(&["pull", "hf:acme/tiny"]);
    r.ok();
    assert!(r.stderr.contains("up to date"), "{}", r.stderr);
    assert!(hub
        .log()
        .iter()
        .all(|l| !l.path.contains("/resolve/") && !l.cdn));

    // show and list see it.
    let r = sb.run(&["show", "hf:acme/tiny"]);
    r.ok();
    assert!(r.stdout.contains(&repo.commit()), "{}", r.stdout);
    assert!(r.stdout.contains("model.safetensors"), "{}", r.stdout);
    assert!(r.stdout.contains("Apache License 2.0"), "{}", r.stdout);
    let r = sb.run(&["list", "--pulled", "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    // The built-in model is always there, ready to run.
    assert_eq!(names, ["stories260k", "hf:acme/tiny"]);
}

#[test]
fn sharded_weights_download_every_shard() {
    let s1 = noise(400_000, 1);
    let s2 = noise(300_000, 2);
    let repo = RepoFixture::new("acme/sharded")
        .file("config.json", r#"{"model_type":"llama"}"#)
        .file("tokenizer.json", "{}")
        .file(
            "model.safetensors.index.json",
            r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#,
        )
        .file("model-00001-of-00002.safetensors", s1.clone())
        .file("model-00002-of-00002.safetensors", s2.clone())
        .file("consolidated.safetensors", noise(500_000, 3));
    let hub = hub_with(vec![repo.clone()]);
    let sb = Sandbox::new(&hub.url);
    sb.run(&["pull", "hf:acme/sharded", "--accept-license"])
        .ok();
    assert_eq!(
        std::fs::read(snapshot_file(
            &sb,
            &repo,
            "model-00001-of-00002.safetensors"
        ))
        .unwrap(),
        s1
    );
    assert_eq!(
        std::fs::read(snapshot_file(
            &sb,
            &repo,
            "model-00002-of-00002.safetensors"
        ))
        .unwrap(),
        s2
    );
    assert!(!snapshot_file(&sb, &repo, "consolidated.safetensors").exists());
    assert!(!hub.log().iter().any(|l| l.path.contains("consolidated")));
}

#[test]
fn a_cut_connection_is_retried_and_resumed_with_a_range_request() {
    let repo = model_repo("acme/flaky", "mit", WEIGHTS);
    let hub = hub_with(vec![repo.clone()]);
    hub.set_faults(Faults {
        cut: Some(("model.safetensors".into(), 600_000, 2)),
        ..Faults::default()
    });
    let sb = Sandbox::new(&hub.url);
    let r = sb.run(&["pull", "hf:acme/flaky"]);
    r.ok();
    assert!(r.stderr.contains("retrying"), "{}", r.stderr);
    let ranges: Vec<String> = hub
        .log()
        .iter()
        .filter(|l| l.cdn)
        .filter_map(|l| l.range.clone())
        .collect();
    assert_eq!(
        ranges,
        ["bytes=600000-", "bytes=1200000-"],
        "each retry resumes where the last one stopped"
    );
    let content = &repo
        .files
        .iter()
        .find(|f| f.0 == "model.safetensors")
        .unwrap()
        .1;
    assert_eq!(
        std::fs::read(snapshot_file(&sb, &repo, "model.safetensors")).unwrap(),
        *content
    );
}

#[test]
fn a_killed_pull_leaves_nothing_that_looks_complete_and_resumes() {
    let repo = model_repo("acme/slow", "mit", WEIGHTS);
    let hub = hub_with(vec![repo.clone()]);
    hub.set_faults(Faults {
        rate: Some(500_000),
        ..Faults::default()
    });
    let sb = Sandbox::new(&hub.url);
    let mut child = sb
        .cmd()
        .args(["pull", "hf:acme/slow"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let content = repo
        .files
        .iter()
        .find(|f| f.0 == "model.safetensors")
        .unwrap()
        .1
        .clone();
    let partial = sb
        .repo_dir("acme/slow")
        .join("blobs")
        .join(format!("{}.incomplete", sha256_hex(&content)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 200_000 {
        assert!(Instant::now() < deadline, "download never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(have > 0 && (have as usize) < content.len());
    assert!(!snapshot_file(&sb, &repo, "model.safetensors").exists());
    assert!(!sb.repo_dir("acme/slow").join("refs/main").exists());
    // Not pulled, as far as owrun is concerned.
    let r = sb.run(&["list", "--pulled", "--json"]);
    assert!(!r.stdout.contains("acme/slow"), "{}", r.stdout);

    hub.set_faults(Faults::default());
    hub.clear_log();
    let r = sb.run(&["pull", "hf:acme/slow"]);
    r.ok();
    assert!(
        r.stderr.contains("resuming model.safetensors"),
        "{}",
        r.stderr
    );
    let first_range = hub
        .log()
        .iter()
        .find(|l| l.cdn)
        .and_then(|l| l.range.clone())
        .unwrap();
    let resumed_at: u64 = first_range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(resumed_at >= have, "resumed at {resumed_at}, had {have}");
    assert_eq!(
        std::fs::read(snapshot_file(&sb, &repo, "model.safetensors")).unwrap(),
        content
    );
    assert!(!partial.exists());
}

#[test]
fn a_corrupted_file_is_deleted_and_reported() {
    let repo = model_repo("acme/corrupt", "mit", WEIGHTS);
    let hub = hub_with(vec![repo.clone()]);
    hub.set_faults(Faults {
        corrupt: Some("model.safetensors".into()),
        ..Faults::default()
    });
    let sb = Sandbox::new(&hub.url);
    let r = sb.run(&["pull", "hf:acme/corrupt"]);
    r.fails_with(1, "does not match the hub's checksum");
    assert!(!snapshot_file(&sb, &repo, "model.safetensors").exists());
    let leftovers: Vec<_> = std::fs::read_dir(sb.repo_dir("acme/corrupt").join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&sha256_hex(&repo.files[4].1)))
        .collect();
    assert!(leftovers.is_empty(), "bad data left behind: {leftovers:?}");

    // A small (non-LFS) file is checked against its git blob id too.
    hub.set_faults(Faults {
        corrupt: Some("config.json".into()),
        ..Faults::default()
    });
    let fresh = Sandbox::new(&hub.url);
    fresh
        .run(&["pull", "hf:acme/corrupt"])
        .fails_with(1, "config.json");
    assert!(!snapshot_file(&fresh, &repo, "config.json").exists());

    hub.set_faults(Faults::default());
    sb.run(&["pull", "hf:acme/corrupt"]).ok();
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let repo = model_repo("acme/busy", "mit", 50_000);
    let hub = hub_with(vec![repo]);
    hub.set_faults(Faults {
        status: Some(("model.safetensors".into(), 503, 2)),
        ..Faults::default()
    });
    let sb = Sandbox::new(&hub.url);
    let r = sb.run(&["pull", "hf:acme/busy"]);
    r.ok();
    assert_eq!(r.stderr.matches("retrying").count(), 2, "{}", r.stderr);

    // A server that keeps failing ends in a clear error, not a hang.
    hub.set_faults(Faults {
        status: Some(("/api/models/".into(), 500, 100)),
        ..Faults::default()
    });
    sb.run(&["pull", "hf:acme/other"]).fails_with(1, "HTTP 500");
}

#[test]
fn gated_repos_need_a_token_with_access() {
    let repo = model_repo("acme/gated", "mit", 50_000).gated();
    let hub = hub_with(vec![repo.clone()]);
    hub.add_token("good-token");
    let sb = Sandbox::new(&hub.url);

    let r = sb.run(&["pull", "hf:acme/gated"]);
    r.fails_with(1, "HF_TOKEN");
    assert!(
        r.stderr.contains(&format!("{}/acme/gated", hub.url)),
        "{}",
        r.stderr
    );
    assert!(!snapshot_file(&sb, &repo, "model.safetensors").exists());

    let r = sb.run_env(&["pull", "hf:acme/gated"], &[("HF_TOKEN", "bad-token")]);
    r.fails_with(1, "no access to acme/gated");

    // The token file written by `huggingface-cli login` works too.
    std::fs::create_dir_all(sb.hf_home()).unwrap();
    std::fs::write(sb.hf_home().join("token"), "good-token\n").unwrap();
    hub.clear_log();
    sb.run(&["pull", "hf:acme/gated"]).ok();
    let log = hub.log();
    assert!(log
        .iter()
        .filter(|l| !l.cdn && l.path.contains("/resolve/"))
        .all(|l| l.authorization.as_deref() == Some("Bearer good-token")));
    assert!(log
        .iter()
        .filter(|l| l.cdn)
        .all(|l| l.authorization.is_none()));
}

#[test]
fn registry_gated_models_fail_before_any_request_without_a_token() {
    let hub = hub_with(vec![model_repo("acme/gated", "mit", 1000).gated()]);
    let sb = Sandbox::new(&hub.url);
    let reg = sb.registry_file(
        "reg.toml",
        r#"[models.g]
repo = "acme/gated"
family = "llama"
params = 1000
context = 64
license = "mit"
gated = true
description = "gated test model"
"#,
    );
    sb.run(&["--registry", reg.to_str().unwrap(), "pull", "g"])
        .fails_with(1, "acme/gated is gated");
    assert!(hub.log().is_empty(), "{:?}", hub.log());
}

#[test]
fn missing_repos_revisions_and_files_are_named() {
    let hub = hub_with(vec![model_repo("acme/tiny", "mit", 1000)]);
    let sb = Sandbox::new(&hub.url);
    sb.run(&["pull", "hf:acme/nope"])
        .fails_with(1, "repository acme/nope not found");
    sb.run(&["pull", "hf:acme/tiny@v9"])
        .fails_with(1, "revision \"v9\" not found in acme/tiny");
    let no_tokenizer = RepoFixture::new("acme/notok")
        .file("README.md", "---\nlicense: mit\n---\n")
        .file("config.json", "{}")
        .file("model.safetensors", noise(100, 1));
    hub.add_repo(no_tokenizer);
    sb.run(&["pull", "hf:acme/notok"])
        .fails_with(1, "no tokenizer.json");
}

#[test]
fn offline_mode_uses_only_what_is_pulled() {
    let hub = hub_with(vec![model_repo("acme/tiny", "mit", 10_000)]);
    let sb = Sandbox::new(&hub.url);
    let off = [("HF_HUB_OFFLINE", "1")];
    sb.run_env(&["pull", "hf:acme/tiny"], &off)
        .fails_with(1, "HF_HUB_OFFLINE is set and hf:acme/tiny is not pulled");
    assert!(hub.log().is_empty());
    sb.run(&["pull", "hf:acme/tiny"]).ok();
    hub.clear_log();
    let r = sb.run_env(&["pull", "hf:acme/tiny"], &off);
    r.ok();
    assert!(r.stderr.contains("already pulled"), "{}", r.stderr);
    assert!(hub.log().is_empty());
}

#[test]
fn two_pulls_at_once_do_not_corrupt_each_other() {
    let repo = model_repo("acme/twice", "mit", WEIGHTS);
    let hub = hub_with(vec![repo.clone()]);
    hub.set_faults(Faults {
        rate: Some(3_000_000),
        ..Faults::default()
    });
    let sb = Sandbox::new(&hub.url);
    let spawn = || {
        sb.cmd()
            .args(["pull", "hf:acme/twice"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let content = &repo
        .files
        .iter()
        .find(|f| f.0 == "model.safetensors")
        .unwrap()
        .1;
    assert_eq!(
        std::fs::read(snapshot_file(&sb, &repo, "model.safetensors")).unwrap(),
        *content
    );
    // One blob per wanted file, no stray partial or temporary files.
    assert_eq!(blob_count(&sb, "acme/twice"), 5);
}

#[test]
fn rm_frees_the_space_and_says_how_much() {
    let hub = hub_with(vec![model_repo("acme/tiny", "mit", WEIGHTS)]);
    let sb = Sandbox::new(&hub.url);
    sb.run(&["pull", "hf:acme/tiny"]).ok();
    let r = sb.run(&["rm", "hf:acme/tiny"]);
    r.ok();
    assert!(r.stderr.contains("freed 1.5 MB"), "{}", r.stderr);
    assert!(!sb.repo_dir("acme/tiny").exists());
    sb.run(&["rm", "hf:acme/tiny"])
        .fails_with(1, "is not pulled");
}

// --- the license gate ---------------------------------------------------------------------

fn registry_for(sb: &Sandbox, name: &str, repo: &str, license: &str) -> String {
    let path = sb.registry_file(
        &format!("{name}.toml"),
        &format!(
            "[models.{name}]\nrepo = \"{repo}\"\nfamily = \"llama\"\nparams = 1000\n\
             context = 64\nlicense = \"{license}\"\ndescription = \"test\"\n"
        ),
    );
    path.to_str().unwrap().to_string()
}

#[test]
fn declared_commercial_use_refuses_noncommercial_models_before_any_download() {
    let hub = hub_with(vec![model_repo("acme/nc", "mnpl", 10_000)]);
    let sb = Sandbox::new(&hub.url);
    let reg = registry_for(&sb, "nc", "acme/nc", "mnpl");
    let r = sb.run_env(
        &["--registry", &reg, "pull", "nc", "--accept-license"],
        &[("OWRUN_USE", "commercial")],
    );
    r.fails_with(4, "does not allow commercial use");
    assert!(r.stderr.contains("Nothing was downloaded"));
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    assert!(!sb.repo_dir("acme/nc").exists());

    // Declared in config.toml instead of the environment: same refusal.
    std::fs::create_dir_all(sb.owrun_home()).unwrap();
    std::fs::write(
        sb.owrun_home().join("config.toml"),
        "use = \"commercial\"\n",
    )
    .unwrap();
    sb.run(&["--registry", &reg, "pull", "nc", "--accept-license"])
        .fails_with(4, "Mistral AI Non-Production License");

    // Hub repos outside the registry are judged on their model card, still before any file.
    let r = sb.run(&["pull", "hf:acme/nc", "--accept-license"]);
    r.fails_with(4, "mnpl");
    assert!(!hub.log().iter().any(|l| l.path.contains("/resolve/")));
}

#[test]
fn licenses_that_need_acceptance_are_refused_without_a_terminal_until_accepted() {
    let hub = hub_with(vec![model_repo("acme/llama", "llama3.2", 10_000)]);
    let sb = Sandbox::new(&hub.url);
    let reg = registry_for(&sb, "ll", "acme/llama", "llama3.2");

    let r = sb.run(&["--registry", &reg, "pull", "ll"]);
    r.fails_with(3, "owrun license accept ll");
    assert!(r.stderr.contains("--accept-license"));
    assert!(
        r.stderr.contains("700 million"),
        "the terms are shown: {}",
        r.stderr
    );
    assert!(hub.log().is_empty());

    sb.run(&["--registry", &reg, "license", "accept", "ll"])
        .ok();
    let r = sb.run(&["license", "accepted", "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rec = &v["accepted"][0];
    assert_eq!(rec["license"], "llama3.2");
    assert_eq!(rec["model"], "acme/llama");
    assert_eq!(rec["date"].as_str().unwrap().len(), 10);

    sb.run(&["--registry", &reg, "pull", "ll"]).ok();
    let r = sb.run(&["--registry", &reg, "show", "ll", "--license"]);
    r.ok();
    assert!(r.stdout.contains("accepted on"), "{}", r.stdout);
}

#[test]
fn accept_license_flag_records_the_acceptance() {
    let hub = hub_with(vec![model_repo("acme/gemma", "gemma", 10_000)]);
    let sb = Sandbox::new(&hub.url);
    let r = sb.run(&["pull", "hf:acme/gemma", "--accept-license"]);
    r.ok();
    assert!(
        r.stderr.contains("accepted the Gemma Terms of Use"),
        "{}",
        r.stderr
    );
    let text = std::fs::read_to_string(sb.owrun_home().join("accepted-licenses.json")).unwrap();
    assert!(
        text.contains("\"gemma\"") && text.contains("acme/gemma"),
        "{text}"
    );
}

#[test]
fn a_license_mismatch_with_the_hub_needs_a_fresh_acceptance() {
    // The registry says Apache-2.0; the model card on the Hub now says CC-BY-NC.
    let hub = hub_with(vec![model_repo("acme/changed", "cc-by-nc-4.0", 10_000)]);
    let sb = Sandbox::new(&hub.url);
    let reg = registry_for(&sb, "changed", "acme/changed", "apache-2.0");
    let r = sb.run(&["--registry", &reg, "pull", "changed"]);
    r.fails_with(3, "license mismatch");
    assert!(r.stderr.contains("cc-by-nc-4.0"), "{}", r.stderr);
    assert!(
        !hub.log().iter().any(|l| l.path.contains("/resolve/")),
        "no file may be fetched before the new license is accepted"
    );
    // Declared commercial use: the Hub's license forbids it.
    sb.run_env(
        &["--registry", &reg, "pull", "changed", "--accept-license"],
        &[("OWRUN_USE", "commercial")],
    )
    .fails_with(4, "Attribution-NonCommercial");
    let r = sb.run(&["--registry", &reg, "pull", "changed", "--accept-license"]);
    r.ok();
    // From now on the card on disk is part of the model's terms.
    let r = sb.run(&["--registry", &reg, "show", "changed", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let ids: Vec<&str> = v["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["apache-2.0", "cc-by-nc-4.0"]);
}

#[test]
fn local_directories_have_nothing_to_pull() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let dir = sb.dir.path().join("mymodel");
    std::fs::create_dir_all(&dir).unwrap();
    sb.run(&["pull", dir.to_str().unwrap()])
        .fails_with(2, "nothing to pull");
    sb.run(&["rm", dir.to_str().unwrap()])
        .fails_with(2, "directory of yours");
}

/// Run owrun on a pseudo-terminal (util-linux `script`), typing `answer` at its prompt.
fn run_on_terminal(sb: &Sandbox, args: &str, answer: &str) -> Option<support::Run> {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("*** SKIPPED: util-linux `script` is not installed ***");
        return None;
    }
    let mut child = sb.program("script");
    let cmdline = format!("'{}' {args}", env!("CARGO_BIN_EXE_owrun"));
    let mut proc = child
        .args(["-qec", &cmdline, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = proc.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(answer.as_bytes()).unwrap();
    drop(stdin);
    let out = proc.wait_with_output().unwrap();
    Some(support::Run::from(out))
}

#[test]
fn on_a_terminal_the_license_is_shown_and_asked_for() {
    let hub = hub_with(vec![model_repo("acme/llama", "llama3.2", 10_000)]);
    let sb = Sandbox::new(&hub.url);
    let reg = registry_for(&sb, "ll", "acme/llama", "llama3.2");
    let Some(r) = run_on_terminal(&sb, &format!("--registry '{reg}' pull ll"), "n\n") else {
        return;
    };
    assert_eq!(r.code, 3, "{}", r.stdout);
    // A terminal merges the streams: the terms and the question were shown.
    assert!(r.stdout.contains("700 million"), "{}", r.stdout);
    assert!(
        r.stdout.contains("Do you accept these terms? [y/N]"),
        "{}",
        r.stdout
    );
    assert!(!sb.repo_dir("acme/llama").exists());

    let r = run_on_terminal(&sb, &format!("--registry '{reg}' pull ll"), "y\n").unwrap();
    assert_eq!(r.code, 0, "{}", r.stdout);
    let text = std::fs::read_to_string(sb.owrun_home().join("accepted-licenses.json")).unwrap();
    assert!(text.contains("llama3.2"), "{text}");
    assert!(snapshot_file(
        &sb,
        &model_repo("acme/llama", "llama3.2", 10_000),
        "model.safetensors"
    )
    .exists());
}
