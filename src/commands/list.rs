//! `owrun list`: the registry (and other pulled Hub repos) as a table or JSON.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::{print_table, variant_sizes};
use crate::cli::ListArgs;
use crate::engine::format::json::read_json;
use crate::error::usage;
use crate::license::{self, Commercial, License};
use crate::open::Opener;
use crate::registry::{format_params, AdapterRef, ModelRef};
use crate::store::{format_bytes, Snapshot};

#[derive(Serialize)]
struct Row {
    name: String,
    repo: String,
    revision: String,
    family: String,
    params: Option<u64>,
    context: Option<u64>,
    licenses: Vec<String>,
    commercial: Commercial,
    osi_approved: bool,
    gated: bool,
    description: String,
    tags: Vec<String>,
    pulled: bool,
    /// Shipped inside owrun (always available, never downloaded).
    builtin: bool,
    /// A LoRA adapter (`repo` is the adapter's): run on `base` (an adapter entry's), and
    /// pulled when both are on disk. Its licenses are the adapter's and the base's.
    adapter: bool,
    base: Option<String>,
    size_on_disk: u64,
    /// Estimated size of the weights in 16 bits and in each quantization.
    sizes: std::collections::BTreeMap<String, u64>,
}

enum LicenseFilter {
    Commercial,
    Noncommercial,
    Osi,
    Id(String),
}

fn parse_filter(opener: &Opener, f: &str) -> Result<LicenseFilter> {
    Ok(match f.to_ascii_lowercase().as_str() {
        "commercial" => LicenseFilter::Commercial,
        "noncommercial" | "non-commercial" => LicenseFilter::Noncommercial,
        "osi" => LicenseFilter::Osi,
        id => {
            let used = opener
                .registry
                .iter()
                .any(|(_, e)| e.license_ids().iter().any(|l| l == id));
            if !license::is_known(id) && !used && id != "unknown" {
                return Err(usage(format!(
                    "unknown license filter {f:?}: use commercial, noncommercial, osi, or a \
                     license id from `owrun license list`"
                )));
            }
            LicenseFilter::Id(id.to_string())
        }
    })
}

pub fn run(opener: &Opener, args: &ListArgs) -> Result<()> {
    let filter = args
        .license
        .as_deref()
        .map(|f| parse_filter(opener, f))
        .transpose()?;
    let store = opener.store();
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for (name, entry) in opener.registry.iter() {
        let model = ModelRef::Registry {
            name: name.clone(),
            entry: entry.clone(),
            gguf: None,
        };
        if let Some(asset) = entry.builtin.as_deref().and_then(crate::builtin::find) {
            // Shipped in the binary: always there, never in the Hub cache.
            let snapshot = opener.local_snapshot(&model);
            rows.push(make_row(opener, &model, snapshot.as_ref(), asset.size()));
            continue;
        }
        let Some((repo, revision)) = model.hub_repo() else {
            continue;
        };
        let repo_store = store.repo(repo);
        let snapshot = opener.local_snapshot(&model);
        seen.push((repo.to_string(), revision.to_string()));
        rows.push(make_row(
            opener,
            &model,
            snapshot.as_ref(),
            repo_store.size_on_disk(),
        ));
    }
    rows.extend(other_pulled_repos(opener, &seen));

    rows.retain(|r| {
        let licenses: Vec<License> = r.licenses.iter().map(|id| license::lookup(id)).collect();
        let keep_license = match &filter {
            None => true,
            Some(LicenseFilter::Commercial) => r.commercial.allows_commercial(),
            Some(LicenseFilter::Noncommercial) => r.commercial == Commercial::NotAllowed,
            Some(LicenseFilter::Osi) => licenses.iter().all(|l| l.osi_approved),
            Some(LicenseFilter::Id(id)) => r.licenses.iter().any(|l| l == id),
        };
        let keep_family = args
            .family
            .as_deref()
            .is_none_or(|f| r.family.eq_ignore_ascii_case(f));
        keep_license && keep_family && (!args.pulled || r.pulled)
    });

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "models": rows }))?;
        writeln!(out)?;
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("owrun: no models match");
        return Ok(());
    }
    let mut table = vec![[
        "NAME",
        "FAMILY",
        "PARAMS",
        "LICENSE",
        "COMMERCIAL",
        "GATED",
        "BF16",
        "Q4_K_M",
        "PULLED",
        "ON DISK",
    ]
    .map(String::from)
    .to_vec()];
    for r in &rows {
        table.push(vec![
            r.name.clone(),
            match (r.adapter, r.family.as_str()) {
                (true, "-") => "lora".to_string(),
                (true, family) => format!("{family}+lora"),
                (false, family) => family.to_string(),
            },
            r.params.map(format_params).unwrap_or_else(|| "-".into()),
            r.licenses.join("+"),
            r.commercial.label().to_string(),
            yes_no(r.gated).into(),
            r.sizes.get("bf16").map_or("-".into(), |b| format_bytes(*b)),
            r.sizes
                .get("Q4_K_M")
                .map_or("-".into(), |b| format_bytes(*b)),
            if r.builtin {
                "built in".into()
            } else {
                yes_no(r.pulled).into()
            },
            if r.size_on_disk > 0 {
                format_bytes(r.size_on_disk)
            } else {
                "-".into()
            },
        ]);
    }
    print_table(&mut out, &table)?;
    if rows.iter().any(|r| r.adapter) {
        writeln!(
            out,
            "\n\"+lora\": a LoRA adapter, run on its base model; the licenses of both apply (`owrun \
             show NAME`)."
        )?;
    }
    if rows.iter().any(|r| r.commercial == Commercial::Conditional) {
        writeln!(
            out,
            "\n\"conditions\": commercial use is allowed with conditions; see `owrun show NAME --license`."
        )?;
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn make_row(
    opener: &Opener,
    model: &ModelRef,
    snapshot: Option<&Snapshot>,
    size_on_disk: u64,
) -> Row {
    // An adapter entry runs on its base: both licenses apply, and both must be on disk.
    let base = opener.base_of(model).ok();
    let licenses = match &base {
        Some(_) => opener.all_licenses(model),
        None => opener.licenses(model, snapshot),
    };
    let pulled = snapshot.is_some()
        && base
            .as_ref()
            .is_none_or(|b| opener.local_snapshot(b).is_some());
    let (repo, revision) = model
        .hub_repo()
        .map(|(r, v)| (r.to_string(), v.to_string()))
        .unwrap_or_default();
    let (family, params, context, gated, description, tags) = match model {
        // An adapter entry on an `hf:` base knows neither.
        ModelRef::Registry { entry, .. } => (
            if entry.family.is_empty() {
                "-".to_string()
            } else {
                entry.family.clone()
            },
            Some(entry.params).filter(|p| *p > 0),
            Some(entry.context).filter(|c| *c > 0),
            entry.gated,
            entry.description.clone(),
            entry.tags.clone(),
        ),
        _ => (
            snapshot
                .and_then(|s| model_type(&s.dir))
                .unwrap_or_else(|| "-".into()),
            None,
            None,
            false,
            String::new(),
            Vec::new(),
        ),
    };
    Row {
        name: model.display_name(),
        repo,
        revision,
        family,
        params,
        context,
        commercial: license::strictest(&licenses),
        osi_approved: licenses.iter().all(|l| l.osi_approved),
        licenses: licenses.into_iter().map(|l| l.id).collect(),
        gated,
        description,
        tags,
        pulled,
        builtin: matches!(model, ModelRef::Registry { entry, .. } if entry.builtin.is_some()),
        adapter: base.is_some(),
        base: base.map(|b| b.display_name()),
        size_on_disk,
        sizes: params
            .map(variant_sizes)
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

fn model_type(dir: &std::path::Path) -> Option<String> {
    let config = read_json(&dir.join("config.json")).ok()??;
    config.get("model_type")?.as_str().map(str::to_string)
}

/// Complete Hub repos in the store that no registry entry names, as `hf:owner/name` rows.
fn other_pulled_repos(opener: &Opener, seen: &[(String, String)]) -> Vec<Row> {
    let store = opener.store();
    let Ok(dirs) = std::fs::read_dir(store.root()) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    let mut names: Vec<String> = dirs
        .flatten()
        .filter_map(|d| d.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    for folder in names {
        let Some(rest) = folder.strip_prefix("models--") else {
            continue;
        };
        let Some((owner, name)) = rest.split_once("--") else {
            continue;
        };
        let repo = format!("{owner}/{name}");
        let repo_store = store.repo(&repo);
        let Ok(refs) = std::fs::read_dir(repo_store.dir().join("refs")) else {
            continue;
        };
        for r in refs.flatten() {
            let Some(revision) = r.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if seen.contains(&(repo.clone(), revision.clone())) {
                continue;
            }
            if let Some(snapshot) = repo_store.complete_snapshot(&revision) {
                let model = ModelRef::Hub {
                    repo: repo.clone(),
                    revision,
                    gguf: None,
                };
                rows.push(make_row(
                    opener,
                    &model,
                    Some(&snapshot),
                    repo_store.size_on_disk(),
                ));
            } else if let Some(snapshot) = repo_store.complete_adapter_snapshot(&revision) {
                // An adapter pulled by `--lora hf:…`: its own licenses (a base is named at
                // run time).
                let adapter = AdapterRef::Hub {
                    repo: repo.clone(),
                    revision: revision.clone(),
                };
                let model = ModelRef::Hub {
                    repo: repo.clone(),
                    revision,
                    gguf: None,
                };
                let path = crate::store::adapter_in(&snapshot.dir);
                let licenses = opener.adapter_licenses(&adapter, path.as_deref());
                let mut row = make_row(opener, &model, Some(&snapshot), repo_store.size_on_disk());
                row.adapter = true;
                row.family = "-".into();
                row.commercial = license::strictest(&licenses);
                row.osi_approved = licenses.iter().all(|l| l.osi_approved);
                row.licenses = licenses.into_iter().map(|l| l.id).collect();
                rows.push(row);
            }
        }
    }
    rows
}
