//! Shared test helpers: a sandboxed environment for the owrun binary, and the fake hub.

#![allow(dead_code)]

pub mod gguf;
pub mod hub;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh OWRUN_HOME and HF_HOME for one test, pointed at a hub.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
}

impl Sandbox {
    pub fn new(endpoint: &str) -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
            endpoint: endpoint.to_string(),
        }
    }

    pub fn owrun_home(&self) -> PathBuf {
        self.dir.path().join("owrun")
    }

    pub fn hf_home(&self) -> PathBuf {
        self.dir.path().join("hf")
    }

    pub fn hub_cache(&self) -> PathBuf {
        self.hf_home().join("hub")
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.hub_cache()
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// `owrun` with a clean environment (see [`Sandbox::program`]) and no stdin.
    pub fn cmd(&self) -> Command {
        let mut c = self.program(env!("CARGO_BIN_EXE_owrun"));
        c.stdin(std::process::Stdio::null());
        c
    }

    /// A program with the sandbox's environment: nothing of the user's HF or owrun settings
    /// leaks in. Its stdio is left alone (for pseudo-terminals).
    pub fn program(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars() {
            if k.starts_with("HF_") || k.starts_with("OWRUN_") || k == "NO_COLOR" {
                c.env_remove(&k);
            }
        }
        c.env("OWRUN_HOME", self.owrun_home())
            .env("HF_HOME", self.hf_home())
            .env("HF_ENDPOINT", &self.endpoint)
            .env("OWRUN_RETRY_BASE_MS", "10");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().expect("run owrun"))
    }

    /// Run with `stdin` written to standard input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run owrun");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        Run::from(child.wait_with_output().expect("run owrun"))
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().expect("run owrun"))
    }

    /// Run with a stdout whose reader is already gone (as with `| head -0`): owrun must end
    /// quietly with exit code 0.
    #[track_caller]
    pub fn assert_quiet_on_closed_stdout(&self, args: &[&str]) {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = self.cmd().args(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
    }

    /// The files of `from` in the store as the Hub repo `repo` pulled: one snapshot, `refs/main`
    /// pointing at it (a folder a registry entry can serve, not a path a client names).
    pub fn install_pulled(&self, repo: &str, from: &Path) {
        let snapshot = self.repo_dir(repo).join("snapshots").join("0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        for f in std::fs::read_dir(from).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                std::fs::copy(&f, snapshot.join(f.file_name().unwrap())).unwrap();
            }
        }
        std::fs::create_dir_all(self.repo_dir(repo).join("refs")).unwrap();
        std::fs::write(self.repo_dir(repo).join("refs/main"), "0123abcd").unwrap();
    }

    /// Greedy runs of `model` (a path or a name) on a fixture's two prompts, as its
    /// expected.json `exp` records them: the plain prompt raw, and the chat conversation.
    /// Returns (prompt ids, new token ids) of each.
    pub fn greedy_runs(
        &self,
        model: &str,
        exp: &serde_json::Value,
        extra: &[&str],
    ) -> Vec<(serde_json::Value, serde_json::Value)> {
        let mut messages: Vec<serde_json::Value> =
            serde_json::from_value(exp["chat_messages"].clone()).unwrap();
        if exp["system_folded"] == true {
            messages.remove(0);
        }
        let last = messages.pop().unwrap();
        let history = self.dir.path().join("history.json");
        std::fs::write(&history, serde_json::to_string(&messages).unwrap()).unwrap();
        let plain = exp["plain"]["prompt"]
            .as_str()
            .unwrap_or("The quick brown fox");
        let h = history.to_str().unwrap();
        let chat = last["content"].as_str().unwrap();
        let runs: [Vec<&str>; 2] = [
            vec!["run", model, plain, "--raw"],
            vec!["run", model, chat, "--messages", h],
        ];
        runs.iter()
            .map(|args| {
                let mut args = args.clone();
                args.extend_from_slice(&["-t", "0", "-n", "12", "--json"]);
                args.extend_from_slice(extra);
                let r = self.run(&args);
                r.ok();
                let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                (doc["prompt_tokens"].clone(), doc["tokens"].clone())
            })
            .collect()
    }

    /// A copy of the fixture model folder `family` (tests/fixtures/models) as `name` in the
    /// sandbox, for tests that change its files.
    pub fn fixture_copy(&self, family: &str, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(family);
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
        dir
    }

    /// Write a registry overlay file and return its path.
    pub fn registry_file(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, toml).unwrap();
        p
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails_with(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// Deterministic pseudo-random bytes (xorshift), so fixtures need no files in the repo.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A small model repo as the Hub would hold it, with files owrun must not fetch.
pub fn model_repo(id: &str, license: &str, weights_len: usize) -> hub::RepoFixture {
    hub::RepoFixture::new(id)
        .file(
            "config.json",
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama"}"#,
        )
        .file("tokenizer.json", r#"{"version":"1.0"}"#)
        .file("generation_config.json", r#"{"eos_token_id":2}"#)
        .file(
            "README.md",
            format!("---\nlicense: {license}\nlanguage: en\n---\n# {id}\n"),
        )
        .file("model.safetensors", noise(weights_len, weights_len as u64))
        .file("pytorch_model.bin", noise(1000, 7))
        .file("original/consolidated.00.pth", noise(1000, 8))
}

/// stories260K as committed under assets/ (the folder owrun embeds as `stories260k`): for tests
/// that need it as a folder (a fake Hub repo, a quantization, a sharded copy).
pub fn stories260k_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/stories260K")
}

/// stories260K's greedy generations recorded with transformers (prompt, ids, continuation).
pub fn stories260k_expected() -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stories260K_expected_generations.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["generations"].as_array().unwrap().clone()
}
