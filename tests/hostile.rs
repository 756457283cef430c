//! Malformed and hostile model files, built here from the valid fixtures (no committed blobs):
//! every one must end `owrun run` and `owrun show` with a clear error naming what is wrong —
//! never a panic, an abort, a hang, an allocation of what the file claims, or garbage output
//! with exit code 0. Each owrun runs under an 8 GiB address-space cap and a time limit, as the
//! probe that found these failures did.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::gguf::{Gguf, Val};
use support::Sandbox;

/// Seconds a malformed file may take to be refused.
const LIMIT: Duration = Duration::from_secs(30);

struct Outcome {
    code: Option<i32>,
    stderr: String,
    stdout: String,
    took: Duration,
}

/// `owrun ARGS` under an 8 GiB address-space cap, killed after [`LIMIT`].
fn owrun_capped(sb: &Sandbox, args: &[&str]) -> Outcome {
    let mut c = sb.program("/bin/sh");
    c.arg("-c")
        .arg("ulimit -v 8388608 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_owrun"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().expect("start owrun");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    );
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code,
        took: start.elapsed(),
        stdout: readers.0.join().unwrap(),
        stderr: readers.1.join().unwrap(),
    }
}

/// `owrun run MODEL hi` and `owrun show MODEL` both refuse `model` with exit 1 or 2 and a
/// message containing `needle` (for `show`, when `show_too`). Panics with every case that did
/// not, at the end of the test (see [`Failures`]).
fn refused(sb: &Sandbox, model: &Path, needle: &str, show_too: bool) {
    let model = model.to_str().unwrap();
    let mut commands = vec![vec!["run", model, "hi", "-n", "4"]];
    if show_too {
        commands.push(vec!["show", model]);
    }
    for args in commands {
        let o = owrun_capped(sb, &args);
        let what = format!(
            "owrun {}: exit {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            o.code,
            o.took,
            o.stdout,
            o.stderr
        );
        let problem = if o.code.is_none() {
            Some("killed (hang or signal)".to_string())
        } else if !matches!(o.code, Some(1 | 2)) {
            Some("not exit 1 or 2".to_string())
        } else if o.stderr.contains("panicked") {
            Some("a panic".to_string())
        } else if !o.stderr.contains(needle) {
            Some(format!("stderr lacks {needle:?}"))
        } else {
            None
        };
        if let Some(p) = problem {
            FAILURES.with(|f| f.borrow_mut().push(format!("{p}: {what}")));
        }
    }
}

thread_local! {
    static FAILURES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks every case of a test, then fails with all the cases that went wrong.
struct Failures;

impl Drop for Failures {
    fn drop(&mut self) {
        let all = FAILURES.with(|f| std::mem::take(&mut *f.borrow_mut()));
        if !all.is_empty() && !std::thread::panicking() {
            panic!("{} case(s) failed:\n\n{}", all.len(), all.join("\n\n"));
        }
    }
}

/// Write `g` as `name` in the sandbox.
fn write_gguf(sb: &Sandbox, name: &str, g: &Gguf) -> PathBuf {
    let p = sb.dir.path().join(name);
    std::fs::write(&p, g.to_bytes()).unwrap();
    p
}

fn gguf_case(sb: &Sandbox, name: &str, edit: impl FnOnce(&mut Gguf), needle: &str) {
    let mut g = Gguf::fixture("llama.gguf");
    edit(&mut g);
    let p = write_gguf(sb, &format!("{name}.gguf"), &g);
    refused(sb, &p, needle, true);
}

#[test]
fn gguf_tables_that_lie_are_refused_before_anything_is_allocated() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    // 2^20 x 2^20 values of 4 bytes: 4 TB claimed by an 89 KB file.
    gguf_case(
        &sb,
        "huge-dims",
        |g| g.tensor("blk.0.attn_norm.weight").dims = vec![1 << 20, 1 << 20],
        "past the end of the file",
    );
    gguf_case(
        &sb,
        "dims-wrap",
        |g| g.tensor("blk.0.attn_norm.weight").dims = vec![1 << 32, 1 << 32],
        "overflow",
    );
    gguf_case(
        &sb,
        "dim-zero",
        |g| g.tensor("blk.0.attn_norm.weight").dims = vec![0, 64],
        "a dimension of 0",
    );
    gguf_case(
        &sb,
        "offset-overflow",
        |g| g.tensor("blk.1.attn_norm.weight").offset = Some(u64::MAX - 31),
        "overflows",
    );
    gguf_case(
        &sb,
        "offset-unaligned",
        |g| g.tensor("blk.1.attn_norm.weight").offset = Some(3),
        "not aligned",
    );
    gguf_case(
        &sb,
        "overlap",
        |g| {
            // The second tensor starts where the first does.
            g.tensors[0].offset = Some(0);
            g.tensors[1].offset = Some(0);
        },
        "overlap",
    );
    gguf_case(
        &sb,
        "alignment-zero",
        |g| {
            g.set("general.alignment", Val::U32(0));
        },
        "general.alignment",
    );
    gguf_case(
        &sb,
        "alignment-three",
        |g| {
            g.set("general.alignment", Val::U32(3));
            g.pad_to = 3;
        },
        "general.alignment",
    );
    gguf_case(
        &sb,
        "unknown-type",
        |g| g.tensor("blk.0.ffn_down.weight").ty = 99,
        "blk.0.ffn_down.weight",
    );
    // `show` reads the tables, not the vocabulary: `run` refuses this one.
    let mut g = Gguf::fixture("llama.gguf");
    let n = match g.get("tokenizer.ggml.tokens") {
        Some(Val::Arr(_, items)) => items.len() as u32,
        other => panic!("the fixture's tokens are {other:?}"),
    };
    g.set(
        "tokenizer.ggml.tokens",
        Val::Arr(4, (0..n).map(Val::U32).collect()),
    );
    let p = write_gguf(&sb, "tokens-not-strings.gguf", &g);
    refused(&sb, &p, "tokenizer.ggml.tokens[0]", false);
}

#[test]
fn gguf_hyperparameters_out_of_range_are_refused_by_name() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    let cases: &[(&str, &str, Val, &str)] = &[
        (
            "layers-huge",
            "llama.block_count",
            Val::U32(1_000_000_000),
            "block_count",
        ),
        (
            "layers-zero",
            "llama.block_count",
            Val::U32(0),
            "block_count",
        ),
        (
            "head-dim-huge",
            "llama.attention.key_length",
            Val::U64(1 << 40),
            "key_length",
        ),
        (
            "heads-zero",
            "llama.attention.head_count",
            Val::U32(0),
            "head_count",
        ),
        (
            "rope-base-zero",
            "llama.rope.freq_base",
            Val::F32(0.0),
            "freq_base",
        ),
        (
            "rope-base-negative",
            "llama.rope.freq_base",
            Val::F32(-5.0),
            "freq_base",
        ),
        (
            "rope-base-nan",
            "llama.rope.freq_base",
            Val::F32(f32::NAN),
            "freq_base",
        ),
        (
            "eps-negative",
            "llama.attention.layer_norm_rms_epsilon",
            Val::F32(-1.0),
            "epsilon",
        ),
        (
            "context-zero",
            "llama.context_length",
            Val::U32(0),
            "context_length",
        ),
        (
            "rope-dims-huge",
            "llama.rope.dimension_count",
            Val::U32(1 << 30),
            "dimension_count",
        ),
    ];
    for (name, key, v, needle) in cases {
        gguf_case(
            &sb,
            name,
            |g| {
                g.set(key, v.clone());
            },
            needle,
        );
    }
    gguf_case(
        &sb,
        "rope-factor-zero",
        |g| {
            g.tensors.retain(|t| t.name != "rope_freqs.weight");
            g.set("llama.rope.scaling.type", Val::Str("linear".into()));
            g.set("llama.rope.scaling.factor", Val::F32(0.0));
        },
        "factor",
    );
    gguf_case(
        &sb,
        "split-count-huge",
        |g| {
            g.set("split.count", Val::U16(60000));
        },
        "split.count",
    );
}

#[test]
fn gguf_chat_templates_that_never_end_are_stopped() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    // Three nested loops of 10^5: 10^15 steps.
    let spin = "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in \
                range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
    // 4 GB of output from a few bytes of template.
    let flood = "{% for a in range(100000) %}{% for b in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxxx\
                 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}";
    for (name, t) in [("spin", spin), ("flood", flood)] {
        let mut g = Gguf::fixture("llama.gguf");
        g.set("tokenizer.chat_template", Val::Str(t.into()));
        let p = write_gguf(&sb, &format!("template-{name}.gguf"), &g);
        refused(&sb, &p, "chat template", false);
    }
}

/// A copy of the tiny llama model folder with `edit` applied.
fn model_case(sb: &Sandbox, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = sb.fixture_copy("llama", name);
    edit(&dir);
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn config_case(sb: &Sandbox, name: &str, key: &str, v: serde_json::Value, needle: &str) {
    let dir = model_case(sb, name, |d| {
        edit_json(&d.join("config.json"), |c| c[key] = v);
    });
    refused(sb, &dir, needle, false);
}

#[test]
fn config_values_out_of_range_are_refused_by_name() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    use serde_json::json;
    config_case(
        &sb,
        "layers",
        "num_hidden_layers",
        json!(1_000_000_000u64),
        "num_hidden_layers",
    );
    config_case(&sb, "head-dim", "head_dim", json!(1u64 << 40), "head_dim");
    config_case(
        &sb,
        "partial",
        "partial_rotary_factor",
        json!(1e15),
        "partial_rotary_factor",
    );
    config_case(&sb, "window", "sliding_window", json!(0), "sliding_window");
    config_case(&sb, "vocab", "vocab_size", json!(0), "vocab_size");
    config_case(
        &sb,
        "hidden",
        "hidden_size",
        json!(1u64 << 40),
        "hidden_size",
    );
    let dir = model_case(&sb, "rope-factor", |d| {
        edit_json(&d.join("config.json"), |c| {
            c["rope_parameters"]["factor"] = json!(0.0)
        });
    });
    refused(&sb, &dir, "factor", false);
    let dir = model_case(&sb, "temperature", |d| {
        edit_json(&d.join("generation_config.json"), |c| {
            c["temperature"] = json!(-5.0)
        });
    });
    refused(&sb, &dir, "temperature", false);
}

#[test]
fn tokenizer_config_templates_that_never_end_are_stopped() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    let dir = model_case(&sb, "template", |d| {
        std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
        edit_json(&d.join("tokenizer_config.json"), |c| {
            c["chat_template"] = serde_json::json!(
                "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in \
                 range(100000) %}{% endfor %}{% endfor %}{% endfor %}"
            )
        });
    });
    refused(&sb, &dir, "chat template", false);
}

/// The safetensors file of a copy of the tiny llama, its header rewritten by `edit`.
fn safetensors_case(
    sb: &Sandbox,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    model_case(sb, name, |d| {
        let path = d.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        edit(&mut header);
        let mut h = serde_json::to_vec(&header).unwrap();
        // Keep the data where it was: pad the header to its old length when it fits.
        if h.len() <= n {
            h.resize(n, b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(&h);
        out.extend(data);
        std::fs::write(&path, out).unwrap();
    })
}

#[test]
fn safetensors_headers_that_lie_are_refused_by_name() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    use serde_json::json;
    let t = "model.layers.0.mlp.down_proj.weight";
    let dir = safetensors_case(&sb, "f8", |h| h[t]["dtype"] = json!("F8_E4M3"));
    refused(&sb, &dir, "F8_E4M3", false);
    let dir = safetensors_case(&sb, "i32", |h| h[t]["dtype"] = json!("I32"));
    refused(&sb, &dir, "I32", false);
    let dir = safetensors_case(&sb, "wrap", |h| {
        h[t]["shape"] = json!([1u64 << 32, 1u64 << 32, 4])
    });
    refused(&sb, &dir, t, false);
    let dir = safetensors_case(&sb, "overlap", |h| {
        let other = h["model.layers.0.mlp.up_proj.weight"]["data_offsets"].clone();
        h[t]["data_offsets"] = other;
    });
    refused(&sb, &dir, "overlap", false);
    let dir = safetensors_case(&sb, "offset-overflow", |h| {
        h[t]["data_offsets"] = json!([u64::MAX - 8, u64::MAX])
    });
    refused(&sb, &dir, t, false);
    let dir = safetensors_case(&sb, "shape-mismatch", |h| h[t]["shape"] = json!([32, 128]));
    refused(&sb, &dir, t, false);
}

#[test]
fn a_vocabulary_larger_than_the_embeddings_is_refused_quickly() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    let mut g = Gguf::fixture("llama.gguf");
    let n = 2_000_000u32;
    g.set(
        "tokenizer.ggml.tokens",
        Val::Arr(8, (0..n).map(|i| Val::Str(format!("t{i}"))).collect()),
    );
    g.set(
        "tokenizer.ggml.token_type",
        Val::Arr(5, (0..n).map(|_| Val::I32(1)).collect()),
    );
    let p = write_gguf(&sb, "big-vocab.gguf", &g);
    refused(&sb, &p, "tokenizer.ggml.tokens", false);
}

#[test]
fn show_describes_a_valid_gguf_file() {
    let sb = Sandbox::new("http://127.0.0.1:9");
    let _check = Failures;
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/llama.gguf");
    let r = sb.run(&["show", p.to_str().unwrap()]);
    r.ok();
    assert!(!r.stdout.contains("incomplete"), "{}", r.stdout);
    assert!(!r.stdout.contains("total 0 B"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("format:       GGUF, architecture llama; tensors Q8_0 x15, F32 x6"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("llama.gguf    88.9 KB"), "{}", r.stdout);
    assert!(r.stdout.contains("kv cache:"), "{}", r.stdout);
}
