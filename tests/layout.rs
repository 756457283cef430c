//! The import rules of ARCHITECTURE.md, checked on the source: every module path a file names
//! (`crate::…`, `super::…`) is resolved to the module it points into, and a file may point only
//! into its own room or into the rooms its room is allowed to use. A change that makes a lower
//! room reach up (the engine into the server, `format` into `model`) fails here, naming the file,
//! the line and the rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rooms inside `src/engine/` and the rooms each may import (besides itself).
const ENGINE_ROOMS: &[(&str, &[&str])] = &[
    ("format", &[]),
    ("device", &[]),
    ("quantize", &[]),
    ("model", &["format", "quantize"]),
    ("text", &["format"]),
    ("generate", &["model", "text"]),
    ("quality", &["model", "generate"]),
    ("export", &["format", "quantize", "model", "text"]),
    (
        "load",
        &["format", "device", "quantize", "model", "text", "generate"],
    ),
];

/// Top-level modules and the top-level modules each must not import.
const CRATE_RULES: &[(&str, &[&str])] = &[
    (
        "engine",
        &[
            "commands",
            "server",
            "open",
            "cli",
            "registry",
            "license",
            "hub",
            "store",
            "settings",
            "builtin",
            "memory",
            "error",
            "test_hooks",
        ],
    ),
    (
        "server",
        &["commands", "cli", "hub", "store", "settings", "builtin"],
    ),
    ("open", &["commands", "server", "cli"]),
    ("registry", &["commands", "server", "open", "cli"]),
    ("license", &["commands", "server", "open", "cli"]),
    ("hub", &["commands", "server", "open", "cli"]),
    ("store", &["commands", "server", "open", "cli"]),
    ("settings", &["commands", "server", "open", "cli"]),
    ("builtin", &["commands", "server", "open", "cli", "engine"]),
    ("memory", &["commands", "server", "open", "cli", "engine"]),
    ("error", &["commands", "server", "open", "cli", "engine"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file defines, as path segments below the crate (`src/engine/model/mod.rs` →
/// engine, model).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "main")) {
        parts.pop();
    }
    parts
}

/// Every module path a line names, resolved against the file's module: `crate::a::b`,
/// `super::a`, `self::a`, and each item of a `prefix::{a, b::c}` group (first segment).
fn paths_in(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let bytes: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !ident(bytes[i - 1]);
        let rest: String = bytes[i..].iter().collect();
        let root = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|r| starts_word && rest.starts_with(r));
        let Some(root) = root else {
            i += 1;
            continue;
        };
        let mut base: Vec<String> = match root {
            "crate::" => Vec::new(),
            "self::" => module.to_vec(),
            _ => module[..module.len().saturating_sub(1)].to_vec(),
        };
        let mut j = i + root.len();
        // Further `super::` steps.
        loop {
            let tail: String = bytes[j..].iter().collect();
            if tail.starts_with("super::") {
                base.pop();
                j += "super::".len();
            } else {
                break;
            }
        }
        // Named segments, then perhaps a `{…}` group.
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            if j > start {
                base.push(bytes[start..j].iter().collect());
            }
            let tail: String = bytes[j..].iter().collect();
            // A group right after the root (`super::{a, b}`) or after a segment (`a::{b, c}`).
            let group = match (j == start, tail.starts_with('{'), tail.starts_with("::{")) {
                (true, true, _) => Some(1),
                (false, _, true) => Some(3),
                _ => None,
            };
            if let Some(open) = group {
                let close = tail.find('}').unwrap_or(tail.len());
                for item in tail[open..close].split(',') {
                    let first: String = item.trim().chars().take_while(|&c| ident(c)).collect();
                    if !first.is_empty() {
                        let mut p = base.clone();
                        p.push(first);
                        found.push(p);
                    }
                }
                j += close;
                break;
            } else if tail.starts_with("::") && j > start {
                j += 2;
            } else {
                found.push(base.clone());
                break;
            }
        }
        i = j.max(i + 1);
    }
    found
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let engine_rules: BTreeMap<&str, &[&str]> = ENGINE_ROOMS.iter().copied().collect();
    let crate_rules: BTreeMap<&str, &[&str]> = CRATE_RULES.iter().copied().collect();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in paths_in(line, &module) {
                checked += 1;
                let (Some(from), Some(to)) = (module.first(), target.first()) else {
                    continue;
                };
                let at = format!("{}:{}", file.strip_prefix(&src).unwrap().display(), n + 1);
                if from != to {
                    if crate_rules
                        .get(from.as_str())
                        .is_some_and(|no| no.contains(&to.as_str()))
                    {
                        broken.push(format!("{at}: {from} may not import {}", target.join("::")));
                    }
                    continue;
                }
                if from != "engine" {
                    continue;
                }
                let (Some(room), Some(into)) = (module.get(1), target.get(1)) else {
                    continue;
                };
                if room == into || room == "parity_tests" {
                    continue;
                }
                let Some(allowed) = engine_rules.get(room.as_str()) else {
                    continue;
                };
                if engine_rules.contains_key(into.as_str()) && !allowed.contains(&into.as_str()) {
                    broken.push(format!(
                        "{at}: engine::{room} may not import engine::{}",
                        target[1..].join("::")
                    ));
                }
            }
        }
    }
    assert!(
        checked > 200,
        "only {checked} module paths found: is the scan broken?"
    );
    assert!(
        broken.is_empty(),
        "imports that run back up:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_scan_resolves_paths_as_rust_does() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let module = m("engine::model::weights");
    assert_eq!(
        paths_in("use crate::engine::format::gguf::GgufFile;", &module),
        [m("engine::format::gguf::GgufFile")]
    );
    assert_eq!(
        paths_in("use super::linear::{Matrix, QMatrix};", &module),
        [
            m("engine::model::linear::Matrix"),
            m("engine::model::linear::QMatrix")
        ]
    );
    assert_eq!(
        paths_in("x = super::super::text::Text::new();", &module),
        [m("engine::text::Text::new")]
    );
    assert_eq!(
        paths_in(
            "use super::{format, generate::sampler};",
            &m("engine::load")
        ),
        [m("engine::format"), m("engine::generate")]
    );
    assert!(paths_in("let super_x = 1; // not a path", &module).is_empty());
}
