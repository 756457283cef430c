//! `owrun show NAME`: everything owrun knows about one model, from the registry and the disk.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::json;

use super::variant_sizes;
use crate::cli::ShowArgs;
use crate::engine::format::gguf::is_gguf_file;
use crate::engine::format::lora::{Adapter, BaseHeads, Stored};
use crate::engine::KvType;
use crate::error::usage;
use crate::license::{wrap, Acceptances, License};
use crate::open::{acceptance_key, Opener};
use crate::registry::{format_params, AdapterRef, ModelRef};
use crate::store::format_bytes;

pub fn run(opener: &Opener, args: &ShowArgs) -> Result<()> {
    let model = opener.resolve(&args.model)?;
    if let Some(adapter) = adapter_of(opener, &model) {
        return show_adapter(opener, args, &model, &adapter);
    }
    let repo_store = model.hub_repo().map(|(r, _)| opener.store().repo(r));
    // A partial snapshot is shown too (with what is missing); the license card may be in it.
    let builtin = matches!(&model, ModelRef::Registry { entry, .. } if entry.builtin.is_some());
    let snapshot = match &model {
        ModelRef::Local { .. } => opener.local_snapshot(&model),
        _ if builtin => opener.local_snapshot(&model),
        _ => model
            .hub_repo()
            .and_then(|(r, rev)| opener.store().repo(r).snapshot(rev)),
    };
    let licenses = opener.licenses(&model, snapshot.as_ref());
    let acceptances = Acceptances::load(&opener.settings)?;
    let key = acceptance_key(&model);
    let accepted = |l: &License| acceptances.find(&l.id, &key).map(|a| a.date.clone());

    // A GGUF file is the whole model (with its shards); a folder holds several files.
    let gguf = match &snapshot {
        Some(s) if s.dir.is_file() => Some(crate::engine::gguf_summary(&s.dir)?),
        _ => None,
    };
    let files: Vec<(String, u64)> = match (&snapshot, &gguf) {
        (Some(_), Some(g)) => g
            .parts
            .iter()
            .filter_map(|p| {
                Some((
                    p.file_name()?.to_str()?.to_string(),
                    p.metadata().ok()?.len(),
                ))
            })
            .collect(),
        (Some(s), None) => list_files(&s.dir),
        (None, _) => Vec::new(),
    };
    let missing = match &snapshot {
        Some(s) if gguf.is_none() => crate::store::missing_files(&s.dir),
        _ => Vec::new(),
    };
    let pulled = snapshot.is_some() && missing.is_empty();
    // The KV cache as owrun holds it by default (f16), from the configuration on disk. A model
    // the user named by its path is checked as `run` would check it: a file that would not
    // load is an error here too, not a description of garbage.
    let local = matches!(model, ModelRef::Local { .. });
    let kv = match snapshot.as_ref().filter(|_| pulled) {
        Some(s) if local => Some(
            crate::engine::kv_cache_size(&s.dir, KvType::default())
                .with_context(|| format!("{} would not load", s.dir.display()))?,
        ),
        Some(s) => crate::engine::kv_cache_size(&s.dir, KvType::default()).ok(),
        None => None,
    };

    let mut out = std::io::stdout().lock();
    if args.json {
        let entry = match &model {
            ModelRef::Registry { entry, .. } => serde_json::to_value(entry)?,
            _ => serde_json::Value::Null,
        };
        let doc = json!({
            "name": model.display_name(),
            "repo": model.hub_repo().map(|(r, _)| r),
            "revision": model.hub_repo().map(|(_, v)| v),
            "registry": entry,
            "pulled": pulled,
            "commit": snapshot.as_ref().and_then(|s| s.commit.clone()),
            "location": snapshot.as_ref().map(|s| s.dir.display().to_string()),
            "files": files.iter().map(|(n, s)| json!({"name": n, "size": s})).collect::<Vec<_>>(),
            "missing_files": missing,
            "kv_cache": kv.map(|(per_token, context, full)| json!({
                "type": KvType::default().name(),
                "bytes_per_token": per_token,
                "context": context,
                "bytes_at_context": full,
            })),
            "size_on_disk": repo_store.as_ref().map(|r| r.size_on_disk()),
            "variant_sizes": match &model {
                ModelRef::Registry { entry, .. } => json!(variant_sizes(entry.params)
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()),
                _ => serde_json::Value::Null,
            },
            "licenses": licenses.iter().map(|l| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                v["accepted"] = json!(accepted(l));
                v
            }).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }

    if !args.license {
        writeln!(out, "name:         {}", model.display_name())?;
        if let ModelRef::Registry { entry, .. } = &model {
            writeln!(out, "description:  {}", entry.description)?;
        }
        if let Some((repo, revision)) = model.hub_repo() {
            writeln!(
                out,
                "repo:         {repo}  ({}/{repo})",
                opener.settings.endpoint
            )?;
            writeln!(out, "revision:     {revision}")?;
        }
        match snapshot.as_ref().and_then(|s| s.commit.as_deref()) {
            Some(c) => writeln!(out, "commit:       {c} (on disk)")?,
            None if builtin => writeln!(out, "commit:       built into owrun")?,
            None if model.hub_repo().is_some() => writeln!(out, "commit:       not pulled")?,
            None => {}
        }
        if let ModelRef::Registry { entry, .. } = &model {
            writeln!(out, "family:       {}", entry.family)?;
            writeln!(out, "parameters:   {}", format_params(entry.params))?;
            let sizes: Vec<String> = variant_sizes(entry.params)
                .iter()
                .map(|(name, bytes)| format!("{name} {}", format_bytes(*bytes)))
                .collect();
            writeln!(out, "sizes:        {} (estimated)", sizes.join(", "))?;
            writeln!(out, "context:      {} tokens", entry.context)?;
            writeln!(
                out,
                "gated:        {}",
                if entry.gated {
                    "yes (needs a Hugging Face account that accepted the terms, and HF_TOKEN)"
                } else {
                    "no"
                }
            )?;
            if !entry.tags.is_empty() {
                writeln!(out, "tags:         {}", entry.tags.join(", "))?;
            }
        }
    }
    write_licenses(&mut out, "license:     ", &licenses, &accepted)?;
    if args.license {
        return Ok(());
    }
    match &snapshot {
        Some(s) => {
            writeln!(out, "location:     {}", s.dir.display())?;
            if let Some(g) = &gguf {
                let types: Vec<String> =
                    g.types.iter().map(|(ty, n)| format!("{ty} x{n}")).collect();
                writeln!(
                    out,
                    "format:       GGUF, architecture {}; tensors {}",
                    g.arch,
                    types.join(", ")
                )?;
            }
            if !missing.is_empty() {
                writeln!(
                    out,
                    "incomplete:   missing {} (run `owrun pull {}`)",
                    missing.join(", "),
                    model.display_name()
                )?;
            }
            writeln!(out, "files:")?;
            let width = files.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            for (name, size) in &files {
                writeln!(out, "  {name:width$}  {:>9}", format_bytes(*size))?;
            }
            let total: u64 = files.iter().map(|(_, s)| s).sum();
            writeln!(out, "  {:width$}  {:>9}", "total", format_bytes(total))?;
            if let Some((per_token, context, full)) = kv {
                writeln!(
                    out,
                    "kv cache:     {} per token ({}), {} at the full context of {context} tokens",
                    format_bytes(per_token as u64),
                    KvType::default().name(),
                    format_bytes(full as u64)
                )?;
            }
        }
        None => writeln!(
            out,
            "location:     not on disk (run `owrun pull {}`)",
            model.display_name()
        )?,
    }
    Ok(())
}

/// Each license's terms, as `show` and `show --license` print them, the first line led by `label`.
fn write_licenses(
    out: &mut impl Write,
    label: &str,
    licenses: &[License],
    accepted: &dyn Fn(&License) -> Option<String>,
) -> std::io::Result<()> {
    for l in licenses {
        writeln!(out, "{label} {} ({})", l.name, l.id)?;
        let commercial = match l.commercial {
            crate::license::Commercial::Allowed => "allowed",
            crate::license::Commercial::Conditional => "allowed, with conditions",
            crate::license::Commercial::NotAllowed => "not allowed",
            crate::license::Commercial::Unknown => "unknown (treated as not allowed)",
        };
        writeln!(out, "  commercial use: {commercial}")?;
        writeln!(
            out,
            "  OSI approved:   {}",
            if l.osi_approved { "yes" } else { "no" }
        )?;
        let acceptance = match (l.needs_acceptance, accepted(l)) {
            (_, Some(date)) => format!("accepted on {date}"),
            (true, None) => "required before first use, not yet accepted".into(),
            (false, None) => "not required".into(),
        };
        writeln!(out, "  acceptance:     {acceptance}")?;
        if !l.url.is_empty() {
            writeln!(out, "  terms:          {}", l.url)?;
        }
        writeln!(out, "{}", wrap(&l.summary, 96, "  "))?;
    }
    Ok(())
}

/// The LoRA adapter `model` names, if it is one: an adapter entry of the registry, a PEFT
/// folder or GGUF adapter file, or a Hub repo pulled as an adapter.
fn adapter_of(opener: &Opener, model: &ModelRef) -> Option<AdapterRef> {
    opener
        .entry_adapter(model)
        .or_else(|| opener.adapter_on_disk_named(model))
}

/// `owrun show` of a LoRA adapter: what it is, what it adapts, what it was trained on and the
/// terms it comes under (beside its base's). An adapter that would not load is an error here,
/// as it is for `run`.
fn show_adapter(
    opener: &Opener,
    args: &ShowArgs,
    model: &ModelRef,
    adapter: &AdapterRef,
) -> Result<()> {
    let path = opener.adapter_on_disk(adapter);
    let snapshot = adapter
        .hub_repo()
        .and_then(|(r, rev)| opener.store().repo(r).snapshot(rev));
    let read = match &path {
        Some(p) => Some(
            Adapter::open(
                p,
                1.0,
                BaseHeads {
                    heads: 0,
                    kv_heads: 0,
                },
            )
            .map_err(|e| usage(format!("{e:#}")))?,
        ),
        None => None,
    };
    let licenses = opener.adapter_licenses(adapter, path.as_deref());
    let acceptances = Acceptances::load(&opener.settings)?;
    let key = acceptance_key(model);
    let accepted = |l: &License| acceptances.find(&l.id, &key).map(|a| a.date.clone());
    // An adapter entry runs on a base of the registry's choosing, whose terms it shows too.
    let base = opener.base_of(model).ok();
    let base_licenses = base
        .as_ref()
        .map(|b| opener.licenses(b, opener.local_snapshot(b).as_ref()))
        .unwrap_or_default();
    let base_key = base.as_ref().map(acceptance_key).unwrap_or_default();
    let base_accepted = |l: &License| acceptances.find(&l.id, &base_key).map(|a| a.date.clone());
    let gguf = path.as_deref().is_some_and(is_gguf_file);
    let files: Vec<(String, u64)> = match &path {
        Some(p) if gguf => vec![(
            p.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().to_string()),
            std::fs::metadata(p).map_or(0, |m| m.len()),
        )],
        Some(p) => list_files(p),
        None => Vec::new(),
    };
    let summary = read.as_ref().map(AdapterSummary::of);

    let mut out = std::io::stdout().lock();
    if args.json {
        let entry = match model {
            ModelRef::Registry { entry, .. } => serde_json::to_value(entry)?,
            _ => serde_json::Value::Null,
        };
        let license_json = |ls: &[License], accepted: &dyn Fn(&License) -> Option<String>| {
            ls.iter()
                .map(|l| {
                    let mut v = serde_json::to_value(l).unwrap_or_default();
                    v["accepted"] = json!(accepted(l));
                    v
                })
                .collect::<Vec<_>>()
        };
        let doc = json!({
            "name": model.display_name(),
            "kind": "lora adapter",
            "format": path.as_ref().map(|_| if gguf { "gguf" } else { "peft" }),
            "repo": adapter.hub_repo().map(|(r, _)| r),
            "revision": adapter.hub_repo().map(|(_, v)| v),
            "registry": entry,
            "pulled": path.is_some(),
            "commit": snapshot.as_ref().and_then(|s| s.commit.clone()),
            "location": path.as_ref().map(|p| p.display().to_string()),
            "files": files.iter().map(|(n, s)| json!({"name": n, "size": s})).collect::<Vec<_>>(),
            "base": base.as_ref().map(|b| b.display_name()),
            "base_model": read.as_ref().and_then(|a| a.base_model.clone()),
            "architecture": read.as_ref().and_then(|a| a.architecture.clone()),
            "rank": summary.as_ref().map(|s| s.rank),
            "alpha": read.as_ref().and_then(|a| a.alpha),
            "scale": summary.as_ref().map(|s| s.scale),
            "rslora": read.as_ref().and_then(|a| a.rslora),
            "target_modules": summary.as_ref().map(|s| s.targets.clone()),
            "layers": summary.as_ref().map(|s| s.layers),
            "precision": summary.as_ref().map(|s| s.precision),
            "licenses": license_json(&licenses, &accepted),
            "base_licenses": base.as_ref().map(|_| license_json(&base_licenses, &base_accepted)),
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }

    if !args.license {
        writeln!(out, "name:         {}", model.display_name())?;
        let kind = match (&path, gguf) {
            (None, _) => "LoRA adapter",
            (Some(_), true) => "LoRA adapter (GGUF, from llama.cpp's convert_lora_to_gguf.py)",
            (Some(_), false) => "LoRA adapter (PEFT)",
        };
        writeln!(out, "kind:         {kind}")?;
        if let ModelRef::Registry { entry, .. } = model {
            writeln!(out, "description:  {}", entry.description)?;
        }
        if let Some((repo, revision)) = adapter.hub_repo() {
            writeln!(
                out,
                "repo:         {repo}  ({}/{repo})",
                opener.settings.endpoint
            )?;
            writeln!(out, "revision:     {revision}")?;
            match snapshot.as_ref().and_then(|s| s.commit.as_deref()) {
                Some(c) if path.is_some() => writeln!(out, "commit:       {c} (on disk)")?,
                _ => writeln!(out, "commit:       not pulled")?,
            }
        }
        if let Some(b) = &base {
            writeln!(out, "runs on:      {}", b.display_name())?;
        }
        if let Some(a) = &read {
            writeln!(
                out,
                "base model:   {}",
                a.base_model
                    .as_deref()
                    .map_or("not stated".to_string(), |b| format!(
                        "{b} (as the adapter names it)"
                    ))
            )?;
            if let Some(arch) = &a.architecture {
                writeln!(out, "architecture: {arch}")?;
            }
        }
        if let (Some(a), Some(s)) = (&read, &summary) {
            writeln!(out, "rank:         {}", s.rank_text)?;
            if let Some(alpha) = a.alpha {
                writeln!(out, "alpha:        {alpha}")?;
            }
            let how = match a.rslora {
                Some(true) => "alpha / sqrt(r), rsLoRA",
                Some(false) => "alpha / r",
                None if a.alpha.is_some() => "alpha / r, as llama.cpp scales a GGUF adapter",
                None => "no alpha stated: 1, as llama.cpp scales a GGUF adapter",
            };
            writeln!(out, "scale:        {} ({how})", s.scale)?;
            let rslora = match a.rslora {
                Some(true) => "yes",
                Some(false) => "no",
                None => "not recorded (llama.cpp's converter drops it)",
            };
            writeln!(out, "rsLoRA:       {rslora}")?;
            writeln!(
                out,
                "targets:      {} ({} linear layers)",
                s.targets.join(", "),
                s.layers
            )?;
            let kept = match s.precision {
                "f32" => "kept in f32",
                _ => "kept 16-bit at run time",
            };
            writeln!(out, "precision:    {} ({kept})", s.precision)?;
        }
    }
    write_licenses(&mut out, "license:     ", &licenses, &accepted)?;
    match &base {
        Some(b) => {
            writeln!(
                out,
                "note:         the license of its base, {}, applies too:",
                b.display_name()
            )?;
            write_licenses(&mut out, "base license:", &base_licenses, &base_accepted)?;
        }
        None => writeln!(
            out,
            "note:         the license of the base model it runs on applies too"
        )?,
    }
    if args.license {
        return Ok(());
    }
    match &path {
        Some(p) => {
            writeln!(out, "location:     {}", p.display())?;
            writeln!(out, "files:")?;
            let width = files.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            for (name, size) in &files {
                writeln!(out, "  {name:width$}  {:>9}", format_bytes(*size))?;
            }
        }
        None => writeln!(
            out,
            "location:     not on disk (run `owrun pull {}`)",
            model.display_name()
        )?,
    }
    Ok(())
}

/// What `show` says of an adapter's layers.
struct AdapterSummary {
    /// The largest rank, and as text: "4", or "4 to 16" when layers differ.
    rank: usize,
    rank_text: String,
    /// The factor B·A is scaled by (the first layer's: one factor for all).
    scale: f32,
    /// The adapted modules' names (q_proj, ...), each once, and how many layers are adapted.
    targets: Vec<String>,
    layers: usize,
    /// How its matrices are stored ("f32", "f16", "bf16", or "mixed" where layers differ).
    precision: &'static str,
}

impl AdapterSummary {
    fn of(a: &Adapter) -> AdapterSummary {
        let ranks = a.layers.values().map(|p| p.rank);
        let (low, high) = (ranks.clone().min().unwrap_or(0), ranks.max().unwrap_or(0));
        let mut targets: Vec<String> = Vec::new();
        for name in a.layers.keys() {
            let module = name.rsplit('.').next().unwrap_or(name).to_string();
            if !targets.contains(&module) {
                targets.push(module);
            }
        }
        // In the order of a block: attention, then the MLP; others after them.
        const ORDER: [&str; 7] = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ];
        targets.sort_by_key(|t| ORDER.iter().position(|o| o == t).unwrap_or(ORDER.len()));
        AdapterSummary {
            rank: high,
            rank_text: if low == high {
                high.to_string()
            } else {
                format!("{low} to {high}")
            },
            scale: a.layers.values().next().map_or(0.0, |p| p.scale),
            targets,
            layers: a.layers.len(),
            precision: precision(a),
        }
    }
}

/// An adapter's matrices' precision, as `show` says it.
fn precision(a: &Adapter) -> &'static str {
    let name = |s: Stored| match s {
        Stored::F32 => "f32",
        Stored::F16 => "f16",
        Stored::Bf16 => "bf16",
    };
    let mut kinds = a.layers.values().map(|p| name(p.stored));
    let first = kinds.next().unwrap_or("f32");
    if kinds.all(|k| k == first) {
        first
    } else {
        "mixed"
    }
}

/// Files of a model folder (following the store's symlinks), with sizes, sorted by name.
fn list_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with('.') {
                return None;
            }
            let meta = std::fs::metadata(e.path()).ok()?;
            meta.is_file().then_some((name, meta.len()))
        })
        .collect();
    files.sort();
    files
}
