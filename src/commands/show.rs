//! `owrun show NAME`: everything owrun knows about one model, from the registry and the disk.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::json;

use super::variant_sizes;
use crate::cli::ShowArgs;
use crate::engine::KvType;
use crate::license::{wrap, Acceptances, License};
use crate::open::{acceptance_key, Opener};
use crate::registry::{format_params, ModelRef};
use crate::store::format_bytes;

pub fn run(opener: &Opener, args: &ShowArgs) -> Result<()> {
    let model = opener.resolve(&args.model)?;
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
    for l in &licenses {
        writeln!(out, "license:      {} ({})", l.name, l.id)?;
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
