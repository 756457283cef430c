//! The model registry: short names → Hub repos, with what owrun knows about each.
//!
//! The built-in registry is `models.toml` at the repository root, embedded in the binary. Users
//! extend or override it with `$OWRUN_HOME/models.toml`, the file named by `OWRUN_MODELS`, and
//! `--registry FILE` (in that order; a later file's entry replaces an earlier one of the same
//! name as a whole).
//!
//! An entry may also be a LoRA adapter on a base (`adapter = "owner/name"`, `base = NAME`): it
//! runs the base with the adapter, and both licenses apply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::{usage, Fatal};

pub const BUILTIN_REGISTRY: &str = include_str!("../models.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Hugging Face repo id, `owner/name` (empty for an adapter entry, which names `adapter`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repo: String,
    /// Branch, tag or commit (default `main`).
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Architecture family (llama, mistral, mixtral, phi3, gemma, gemma2, gemma3, qwen2, qwen3).
    /// An adapter entry takes its base's family, parameters and context when it does not say.
    #[serde(default)]
    pub family: String,
    /// Parameter count.
    #[serde(default)]
    pub params: u64,
    /// Context length in tokens.
    #[serde(default)]
    pub context: u64,
    /// License id from the catalogue (`owrun license list`).
    pub license: String,
    /// Licenses of the model this one was derived from, whose terms also apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_licenses: Vec<String>,
    /// Whether the Hub repo is gated (needs an account, accepted terms and HF_TOKEN).
    #[serde(default)]
    pub gated: bool,
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A Hub repo of GGUF files of this model (one per quantization), for `NAME:QUANT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf_repo: Option<String>,
    /// The model ships inside owrun: the folder under `assets/` embedded in the binary. It
    /// runs from there and is never downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// A LoRA adapter's Hub repo (`owner/name`, at `revision`): the entry runs `base` with it.
    /// `license` is then the adapter's own; the base's applies too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The model an adapter entry runs on: a registry name (`NAME:QUANT` too) or
    /// `hf:owner/name[@revision][:QUANT]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

fn default_revision() -> String {
    "main".to_string()
}

impl ModelEntry {
    /// Every license id whose terms apply, the model's own first.
    pub fn license_ids(&self) -> Vec<String> {
        std::iter::once(&self.license)
            .chain(&self.upstream_licenses)
            .cloned()
            .collect()
    }

    /// The most restrictive commercial-use verdict among the licenses that apply.
    #[cfg(test)]
    pub fn commercial(&self) -> crate::license::Commercial {
        let licenses: Vec<_> = self
            .license_ids()
            .iter()
            .map(|id| crate::license::lookup(id))
            .collect();
        crate::license::strictest(&licenses)
    }

    /// The adapter's Hub repo, for an adapter entry.
    pub fn adapter_repo(&self) -> Option<&str> {
        self.adapter.as_deref()
    }

    fn validate(&self, name: &str, path: &str) -> Result<()> {
        let bad = |what: &str| usage(format!("{path}: model {name:?}: {what}"));
        match (&self.adapter, &self.base) {
            (Some(adapter), Some(base)) => {
                if !is_repo_id(adapter) {
                    return Err(bad(&format!(
                        "adapter {adapter:?} is not of the form owner/name"
                    )));
                }
                for (key, given) in [
                    ("repo", !self.repo.is_empty()),
                    ("gguf_repo", self.gguf_repo.is_some()),
                    ("builtin", self.builtin.is_some()),
                ] {
                    if given {
                        return Err(bad(&format!(
                            "an adapter entry names its adapter and its base, not a {key}"
                        )));
                    }
                }
                if base.trim().is_empty() {
                    return Err(bad("base is empty"));
                }
            }
            (Some(_), None) => {
                return Err(bad(
                    "adapter needs a base: the registry name or hf:owner/name it runs on",
                ))
            }
            (None, Some(_)) => return Err(bad(
                "base is for adapter entries: name the adapter's repo as adapter = \"owner/name\"",
            )),
            (None, None) => {
                if self.repo.is_empty() {
                    return Err(bad("missing field `repo` (or `adapter` and `base`)"));
                }
                if !is_repo_id(&self.repo) {
                    return Err(bad(&format!(
                        "repo {:?} is not of the form owner/name",
                        self.repo
                    )));
                }
                if self.family.trim().is_empty() {
                    return Err(bad("family is missing or empty"));
                }
                if self.params == 0 || self.context == 0 {
                    return Err(bad("params and context must be given, above 0"));
                }
            }
        }
        if self.revision.trim().is_empty() {
            return Err(bad("revision is empty"));
        }
        if let Some(folder) = &self.builtin {
            if crate::builtin::find(folder).is_none() {
                let known: Vec<&str> = crate::builtin::ASSETS.iter().map(|a| a.folder).collect();
                return Err(bad(&format!(
                    "builtin {folder:?} is not a model this owrun carries (it has: {})",
                    known.join(", ")
                )));
            }
        }
        if self.license.trim().is_empty() {
            return Err(bad(
                "license is empty (use \"unknown\" if you do not know it)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: BTreeMap<String, ModelEntry>,
}

impl Registry {
    /// The built-in registry plus every overlay file that exists, in order. A file named
    /// explicitly (OWRUN_MODELS, --registry) must exist.
    pub fn load(user_file: &Path, explicit: &[PathBuf]) -> Result<Self> {
        let mut reg = Registry::default();
        reg.merge_str(BUILTIN_REGISTRY, "models.toml (built in)")?;
        if user_file.exists() {
            reg.merge_file(user_file)?;
        }
        for path in explicit {
            if !path.exists() {
                return Err(usage(format!(
                    "registry file {} does not exist",
                    path.display()
                )));
            }
            reg.merge_file(path)?;
        }
        reg.link_adapters()?;
        Ok(reg)
    }

    /// Check that every adapter entry's base is a model (not a path, not another adapter),
    /// once every file is in (a base may come from another file), and give the entry its base's
    /// family, parameters and context where it does not say them.
    fn link_adapters(&mut self) -> Result<()> {
        let mut inherited = Vec::new();
        for (name, entry) in &self.entries {
            let Some(base) = entry.base.as_deref() else {
                continue;
            };
            let bad =
                |what: String| usage(format!("registry: model {name:?}: base {base:?} {what}"));
            let base_ref = match resolve_known(self, base) {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Err(bad(format!("does not resolve: {e:#}"))),
                None => {
                    return Err(bad(
                        "is not a registry name or hf:owner/name (see `owrun list`)".into(),
                    ))
                }
            };
            if let ModelRef::Registry { entry: b, .. } = &base_ref {
                if b.adapter.is_some() {
                    return Err(bad(
                        "is an adapter entry itself: a base must be a model".into()
                    ));
                }
                inherited.push((name.clone(), b.family.clone(), b.params, b.context));
            }
        }
        for (name, family, params, context) in inherited {
            let e = self.entries.get_mut(&name).expect("an entry just read");
            if e.family.is_empty() {
                e.family = family;
            }
            if e.params == 0 {
                e.params = params;
            }
            if e.context == 0 {
                e.context = context;
            }
        }
        Ok(())
    }

    fn merge_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read registry file {}", path.display()))?;
        self.merge_str(&text, &path.display().to_string())
    }

    /// Parse one file completely before changing anything, so a malformed file leaves the
    /// registry as it was.
    fn merge_str(&mut self, text: &str, origin: &str) -> Result<()> {
        let file: RegistryFile = toml::from_str(text)
            .map_err(|e| Fatal::Usage(describe_toml_error(Path::new(origin), text, &e)))?;
        for (name, entry) in &file.models {
            if !is_valid_name(name) {
                return Err(usage(format!(
                    "{origin}: model name {name:?} may only use letters, digits, '.', '-' and '_'"
                )));
            }
            entry.validate(name, origin)?;
        }
        self.entries.extend(file.models);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.entries.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &ModelEntry)> {
        self.entries.iter()
    }

    /// Up to three registry names close to `name`, best first.
    pub fn suggestions(&self, name: &str) -> Vec<String> {
        let lower = name.to_ascii_lowercase();
        let mut scored: Vec<(f64, &String)> = self
            .entries
            .keys()
            .map(|k| {
                let mut s = strsim::jaro_winkler(&lower, k);
                if k.contains(&lower) || lower.contains(k.as_str()) {
                    s += 0.2;
                }
                (s, k)
            })
            .filter(|(s, _)| *s >= 0.8)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored.into_iter().take(3).map(|(_, k)| k.clone()).collect()
    }
}

/// What a model name on the command line refers to.
// One per command, never in a collection: the size of the registry variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ModelRef {
    /// A registry entry; with `gguf`, that quantization's file from its GGUF repo.
    Registry {
        name: String,
        entry: ModelEntry,
        gguf: Option<String>,
    },
    /// `hf:owner/name[@revision][:QUANT]`: any Hub repo; with a QUANT, that quantization's
    /// GGUF file(s) from it (as `llama-cli -hf` picks them).
    Hub {
        repo: String,
        revision: String,
        gguf: Option<String>,
    },
    /// A local directory in Hugging Face layout.
    Local { path: PathBuf },
}

impl ModelRef {
    /// The name to show the user.
    pub fn display_name(&self) -> String {
        match self {
            ModelRef::Registry { name, gguf, .. } => match gguf {
                Some(q) => format!("{name}:{}", q.to_ascii_lowercase()),
                None => name.clone(),
            },
            ModelRef::Hub {
                repo,
                revision,
                gguf,
            } => {
                let mut s = format!("hf:{repo}");
                if revision != "main" {
                    s.push_str(&format!("@{revision}"));
                }
                if let Some(q) = gguf {
                    s.push_str(&format!(":{q}"));
                }
                s
            }
            ModelRef::Local { path } => path.display().to_string(),
        }
    }

    /// The GGUF quantization asked for (`NAME:QUANT`, `hf:repo:QUANT`).
    pub fn gguf(&self) -> Option<&str> {
        match self {
            ModelRef::Registry { gguf, .. } | ModelRef::Hub { gguf, .. } => gguf.as_deref(),
            ModelRef::Local { .. } => None,
        }
    }

    /// The registry entry, when it is an adapter entry (a base run with a LoRA adapter).
    pub fn adapter_entry(&self) -> Option<&ModelEntry> {
        match self {
            ModelRef::Registry { entry, .. } if entry.adapter.is_some() => Some(entry),
            _ => None,
        }
    }

    /// Hub repo and revision, when the model comes from the Hub (an adapter entry's: the
    /// adapter's).
    pub fn hub_repo(&self) -> Option<(&str, &str)> {
        match self {
            ModelRef::Registry {
                entry,
                gguf: Some(_),
                ..
            } => entry.gguf_repo.as_deref().map(|r| (r, "main")),
            ModelRef::Registry { entry, .. } => match entry.adapter_repo() {
                Some(adapter) => Some((adapter, &entry.revision)),
                None => Some((&entry.repo, &entry.revision)),
            },
            ModelRef::Hub { repo, revision, .. } => Some((repo, revision)),
            ModelRef::Local { .. } => None,
        }
    }
}

/// Resolve a name from the command line: `hf:owner/name[@rev]`, a directory, or a registry name.
pub fn resolve(registry: &Registry, name: &str) -> Result<ModelRef> {
    if let Some(known) = resolve_known(registry, name) {
        return known;
    }
    let path = Path::new(name);
    let looks_like_path = name.contains('/')
        || name.contains(std::path::MAIN_SEPARATOR)
        || name.starts_with('.')
        || name.starts_with('~');
    let gguf_file = path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if path.is_dir() || gguf_file {
        return Ok(ModelRef::Local {
            path: path.to_path_buf(),
        });
    }
    if looks_like_path {
        let hint = if is_repo_id(name) && !name.starts_with('.') {
            format!(" (for the Hub repo, write hf:{name})")
        } else {
            String::new()
        };
        return Err(usage(format!(
            "{name:?} is not a directory or a .gguf file{hint}; a model is a registry name (see \
             `owrun list`), hf:owner/name, a local directory in Hugging Face layout, or a GGUF file"
        )));
    }
    Err(unknown(registry, name))
}

/// Resolve a name without looking at the filesystem: `hf:owner/name[@rev][:QUANT]`, a registry
/// name or `NAME:QUANT`. None when it is none of these (it may be a path). The server resolves
/// its clients' names so: a client must not open, or learn of, files by naming them.
pub fn resolve_known(registry: &Registry, name: &str) -> Option<Result<ModelRef>> {
    if let Some(rest) = name.strip_prefix("hf:") {
        return Some(resolve_hub(name, rest));
    }
    if let Some(entry) = registry.get(name) {
        return Some(Ok(ModelRef::Registry {
            name: name.to_string(),
            entry: entry.clone(),
            gguf: None,
        }));
    }
    // NAME:QUANT, like ollama's tags: the entry's GGUF repo.
    let (base, quant) = name.rsplit_once(':')?;
    let entry = registry.get(base)?;
    if entry.gguf_repo.is_none() {
        return Some(Err(usage(format!(
            "{base} has no GGUF repo in the registry, so no {quant:?} file; run it as it \
             is, or quantize it at load with --quant {quant}"
        ))));
    }
    Some(Ok(ModelRef::Registry {
        name: base.to_string(),
        entry: entry.clone(),
        gguf: Some(quant.to_ascii_uppercase()),
    }))
}

/// The error for a name that is no model: with the registry names closest to it.
pub fn unknown(registry: &Registry, name: &str) -> anyhow::Error {
    let suggestions = registry.suggestions(name);
    let mut msg = format!("unknown model {name:?}");
    if !suggestions.is_empty() {
        msg.push_str(&format!("; did you mean {}?", suggestions.join(", ")));
    }
    msg.push_str("\nSee `owrun list` for known models, or use hf:owner/name for any Hub repo.");
    usage(msg)
}

/// `hf:owner/name[@revision][:QUANT]`, `rest` being what follows `hf:`.
fn resolve_hub(name: &str, rest: &str) -> Result<ModelRef> {
    // hf:owner/name[@revision][:QUANT]
    let (rest, gguf) = match rest.rsplit_once(':') {
        Some((r, q)) if !q.is_empty() && !q.contains('/') => (r, Some(q.to_ascii_uppercase())),
        _ => (rest, None),
    };
    let (repo, revision) = repo_and_revision(name, rest)?;
    Ok(ModelRef::Hub {
        repo,
        revision,
        gguf,
    })
}

/// `owner/name[@revision]` of an `hf:` name (`name`, for messages).
fn repo_and_revision(name: &str, rest: &str) -> Result<(String, String)> {
    let (repo, revision) = match rest.split_once('@') {
        Some((r, rev)) if !rev.is_empty() => (r, rev),
        Some(_) => return Err(usage(format!("{name:?}: empty revision after '@'"))),
        None => (rest, "main"),
    };
    if !is_repo_id(repo) {
        return Err(usage(format!(
            "{name:?}: expected hf:owner/name or hf:owner/name@revision"
        )));
    }
    if !is_revision(revision) {
        return Err(usage(format!(
            "{name:?}: the revision must be a branch, tag or commit name (letters, digits, \
             '.', '-', '_' and '/' between names)"
        )));
    }
    Ok((repo.to_string(), revision.to_string()))
}

/// A LoRA adapter to run a model with: given to `--lora`, or named by a registry entry.
#[derive(Debug, Clone)]
pub enum AdapterRef {
    /// An adapter entry of the registry: its `adapter` repo at its `revision`, with the
    /// entry's license.
    Registry {
        name: String,
        entry: Box<ModelEntry>,
    },
    /// `hf:owner/name[@revision]`: a Hub repo of a PEFT adapter or of one GGUF adapter file.
    Hub { repo: String, revision: String },
    /// A PEFT adapter folder or a GGUF adapter file.
    Local { path: PathBuf },
}

impl AdapterRef {
    /// The name to show the user (and to give `owrun license accept`).
    pub fn display_name(&self) -> String {
        match self {
            AdapterRef::Registry { name, .. } => name.clone(),
            AdapterRef::Hub { repo, revision } if revision == "main" => format!("hf:{repo}"),
            AdapterRef::Hub { repo, revision } => format!("hf:{repo}@{revision}"),
            AdapterRef::Local { path } => path.display().to_string(),
        }
    }

    /// Hub repo and revision, when the adapter comes from the Hub.
    pub fn hub_repo(&self) -> Option<(&str, &str)> {
        match self {
            AdapterRef::Registry { entry, .. } => {
                Some((entry.adapter_repo()?, entry.revision.as_str()))
            }
            AdapterRef::Hub { repo, revision } => Some((repo, revision)),
            AdapterRef::Local { .. } => None,
        }
    }

    /// The license ids the registry gives it (none outside the registry).
    pub fn registry_license_ids(&self) -> Vec<String> {
        match self {
            AdapterRef::Registry { entry, .. } => entry.license_ids(),
            _ => Vec::new(),
        }
    }
}

/// `--lora SPEC`: `hf:owner/name[@revision][:SCALE]`, or `PATH[:SCALE]` (a PEFT folder or a GGUF
/// adapter file), with the multiplier of the adapter's scale (1 when not given).
pub fn resolve_adapter(spec: &str) -> Result<(AdapterRef, f32)> {
    let Some(rest) = spec.strip_prefix("hf:") else {
        let (path, scale) =
            crate::engine::format::lora::parse_spec(spec).map_err(|e| usage(e.to_string()))?;
        return Ok((AdapterRef::Local { path }, scale));
    };
    let (rest, scale) = match rest.rsplit_once(':') {
        Some((r, s)) => match s.trim().parse::<f32>() {
            Ok(v) if v.is_finite() => (r, v),
            _ => {
                return Err(usage(format!(
                    "--lora {spec}: after the last ':' comes the adapter's scale, a finite number \
                     (hf:owner/name[@revision][:SCALE])"
                )))
            }
        },
        None => (rest, 1.0),
    };
    let (repo, revision) = repo_and_revision(spec, rest)?;
    Ok((AdapterRef::Hub { repo, revision }, scale))
}

/// A git branch, tag or commit as the store files it (`refs/<revision>`): names of letters,
/// digits, `.`, `-`, `_`, joined by `/`; never `..` or an absolute path.
fn is_revision(s: &str) -> bool {
    s.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    })
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// `owner/name` with the characters the Hub allows in each part.
pub fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// "path:line:column: message" for a TOML parse error.
pub fn describe_toml_error(path: &Path, text: &str, err: &toml::de::Error) -> String {
    let msg = err.message();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{}:{line}:{col}: {msg}", path.display())
        }
        None => format!("{}: {msg}", path.display()),
    }
}

/// Human parameter count: 135M, 1.5B, 46.7B.
pub fn format_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        let b = n as f64 / 1e9;
        if b >= 10.0 {
            format!("{b:.0}B")
        } else {
            format!("{b:.1}B")
        }
    } else if n >= 1_000_000 {
        format!("{}M", (n as f64 / 1e6).round() as u64)
    } else {
        format!("{}K", (n as f64 / 1e3).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license;

    #[test]
    fn builtin_registry_parses_and_uses_known_licenses() {
        let reg = Registry::load(Path::new("/nonexistent/models.toml"), &[]).unwrap();
        assert!(reg.iter().count() >= 25);
        for (name, e) in reg.iter() {
            for id in e.license_ids() {
                assert!(license::is_known(&id), "{name}: unknown license {id}");
            }
        }
        let noncommercial = reg
            .iter()
            .filter(|(_, e)| e.commercial() == license::Commercial::NotAllowed)
            .count();
        assert!(noncommercial >= 2);
    }

    #[test]
    fn resolve_forms() {
        let reg = Registry::load(Path::new("/nonexistent"), &[]).unwrap();
        match resolve(&reg, "hf:Qwen/Qwen2.5-0.5B@v1").unwrap() {
            ModelRef::Hub {
                repo,
                revision,
                gguf: None,
            } => {
                assert_eq!(repo, "Qwen/Qwen2.5-0.5B");
                assert_eq!(revision, "v1");
            }
            other => panic!("{other:?}"),
        }
        match resolve(&reg, "hf:bartowski/Qwen2.5-0.5B-GGUF:q4_k_m").unwrap() {
            ModelRef::Hub {
                repo,
                revision,
                gguf: Some(q),
            } => {
                assert_eq!(repo, "bartowski/Qwen2.5-0.5B-GGUF");
                assert_eq!(revision, "main");
                assert_eq!(q, "Q4_K_M");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve(&reg, "smollm2-135m").unwrap(),
            ModelRef::Registry { .. }
        ));
        let err = resolve(&reg, "smollm2-135").unwrap_err().to_string();
        assert!(err.contains("did you mean smollm2-135m"), "{err}");
        let err = resolve(&reg, "hf:nope").unwrap_err().to_string();
        assert!(err.contains("hf:owner/name"), "{err}");
        let err = resolve(&reg, "Qwen/Qwen2.5-0.5B").unwrap_err().to_string();
        assert!(err.contains("hf:Qwen/Qwen2.5-0.5B"), "{err}");
    }

    #[test]
    fn revisions_cannot_leave_the_store_and_known_names_never_touch_files() {
        let reg = Registry::default();
        for ok in ["hf:a/b@main", "hf:a/b@refs/pr/1", "hf:a/b@v1.0"] {
            assert!(resolve(&reg, ok).is_ok(), "{ok}");
        }
        for bad in [
            "hf:a/b@../../../etc",
            "hf:a/b@/etc",
            "hf:a/b@x//y",
            "hf:a/b@a\\b",
        ] {
            let err = resolve(&reg, bad).unwrap_err().to_string();
            assert!(err.contains("revision"), "{bad}: {err}");
        }
        // A folder that exists is no known name: only `resolve` (the command line) opens paths.
        let here = env!("CARGO_MANIFEST_DIR");
        assert!(resolve_known(&reg, here).is_none());
        assert!(matches!(resolve(&reg, here), Ok(ModelRef::Local { .. })));
    }

    #[test]
    fn adapter_specs_are_hub_repos_or_paths_with_a_scale() {
        let hub = |spec: &str| match resolve_adapter(spec).unwrap() {
            (AdapterRef::Hub { repo, revision }, scale) => (repo, revision, scale),
            other => panic!("{other:?}"),
        };
        assert_eq!(hub("hf:a/b"), ("a/b".into(), "main".into(), 1.0));
        assert_eq!(hub("hf:a/b@v1:0.5"), ("a/b".into(), "v1".into(), 0.5));
        assert_eq!(hub("hf:a/b:-1"), ("a/b".into(), "main".into(), -1.0));
        for bad in ["hf:a/b:q4_k_m", "hf:a", "hf:a/b@../x", "hf:a/b:inf"] {
            assert!(resolve_adapter(bad).is_err(), "{bad}");
        }
        match resolve_adapter("dir/x.gguf:2").unwrap() {
            (AdapterRef::Local { path }, scale) => {
                assert_eq!((path, scale), (PathBuf::from("dir/x.gguf"), 2.0))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            AdapterRef::Hub {
                repo: "a/b".into(),
                revision: "v1".into()
            }
            .display_name(),
            "hf:a/b@v1"
        );
    }

    #[test]
    fn toml_errors_have_line_and_column() {
        let text = "[models.x]\nrepo = \"a/b\"\nparams = oops\n";
        let err = toml::from_str::<RegistryFile>(text).unwrap_err();
        let msg = describe_toml_error(Path::new("f.toml"), text, &err);
        assert!(msg.starts_with("f.toml:3:10:"), "{msg}");
    }

    #[test]
    fn params_formatting() {
        assert_eq!(format_params(135_000_000), "135M");
        assert_eq!(format_params(1_540_000_000), "1.5B");
        assert_eq!(format_params(46_700_000_000), "47B");
    }
}
