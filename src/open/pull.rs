//! Pulling a model or a LoRA adapter: the license gate (on the registry's license first, then on
//! the model card's), then its files into the store, each verified, with progress on stderr.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::progress::{Bars, FileProgress};
use super::{acceptance_key, Opener};
use crate::error::usage;
use crate::hub::{Hub, HubError, RemoteFile};
use crate::license::{self, GateRequest, License};
use crate::registry::{AdapterRef, ModelRef};
use crate::store::{
    format_bytes, plan_adapter_files, plan_files, shards_in_index, FilePlan, RepoStore, Snapshot,
    Weights, ADAPTER_CONFIG, WEIGHTS_INDEX,
};

/// One repo to pull: how owrun names it, the terms the registry gives it, and which of its
/// files it takes.
struct Pullable<'a> {
    name: String,
    repo: &'a str,
    revision: &'a str,
    /// Acceptances are recorded under this key.
    key: String,
    registry_licenses: Vec<License>,
    /// The registry says the repo is gated.
    registry_gated: bool,
    kind: Kind<'a>,
}

enum Kind<'a> {
    /// A model: config, tokenizer and safetensors weights, or one GGUF quantization's files.
    Model { gguf: Option<&'a str> },
    /// A LoRA adapter: a PEFT adapter's two files, or its one GGUF file.
    Adapter,
}

impl Pullable<'_> {
    fn is_adapter(&self) -> bool {
        matches!(self.kind, Kind::Adapter)
    }

    fn plan(&self, names: &[String]) -> Result<FilePlan> {
        let has = |n: &str| names.iter().any(|x| x == n);
        match self.kind {
            // `owrun pull hf:owner/adapter` pulls an adapter as `--lora` would.
            Kind::Model { gguf: None } if has(ADAPTER_CONFIG) && !has("config.json") => {
                plan_adapter_files(self.repo, names)
            }
            Kind::Model { gguf } => plan_files(self.repo, names, gguf),
            Kind::Adapter => plan_adapter_files(self.repo, names),
        }
    }

    fn complete(&self, store: &RepoStore) -> Option<Snapshot> {
        match self.kind {
            Kind::Model { gguf: Some(tag) } => store.complete_gguf_snapshot(self.revision, tag),
            Kind::Model { gguf: None } => store
                .complete_snapshot(self.revision)
                .or_else(|| store.complete_adapter_snapshot(self.revision)),
            Kind::Adapter => store.complete_adapter_snapshot(self.revision),
        }
    }
}

/// Make sure `model` is complete on disk, downloading what is missing. Returns the snapshot
/// directory. Used by `owrun pull` and, for models not yet pulled, by the commands that run
/// models. An adapter entry of the registry pulls its base, then its adapter (whose snapshot
/// it returns).
pub fn pull(opener: &Opener, model: &ModelRef, accept_license: bool) -> Result<PathBuf> {
    let name = model.display_name();
    let Some((repo, revision)) = model.hub_repo() else {
        return Err(usage(format!(
            "{name} is a local directory: there is nothing to pull"
        )));
    };
    if matches!(model, ModelRef::Registry { entry, .. } if entry.builtin.is_some()) {
        return Err(usage(format!(
            "{name} is built into owrun: there is nothing to pull"
        )));
    }
    if let Some(adapter) = opener.entry_adapter(model) {
        let base = opener.base_of(model)?;
        if opener.local_snapshot(&base).is_none() {
            pull(opener, &base, accept_license)?;
        }
        return pull_adapter(opener, &adapter, accept_license).map(|(dir, _)| dir);
    }
    let registry_licenses: Vec<License> = match model {
        ModelRef::Registry { entry, .. } => entry
            .license_ids()
            .iter()
            .map(|id| license::lookup(id))
            .collect(),
        _ => Vec::new(),
    };
    // The registry's gated flag is about the original repo, not a GGUF repo of it.
    let registry_gated =
        matches!(model, ModelRef::Registry { entry, .. } if entry.gated && model.gguf().is_none());
    pull_repo(
        opener,
        &Pullable {
            key: acceptance_key(model),
            name,
            repo,
            revision,
            registry_licenses,
            registry_gated,
            kind: Kind::Model { gguf: model.gguf() },
        },
        accept_license,
    )
}

/// Make sure the Hub adapter `adapter` is complete on disk, downloading what is missing.
/// Returns its snapshot directory and the path `--lora` takes (the folder, or its GGUF file).
pub fn pull_adapter(
    opener: &Opener,
    adapter: &AdapterRef,
    accept_license: bool,
) -> Result<(PathBuf, PathBuf)> {
    let Some((repo, revision)) = adapter.hub_repo() else {
        return Err(usage(format!(
            "{} is a local adapter: there is nothing to pull",
            adapter.display_name()
        )));
    };
    let registry_gated = matches!(adapter, AdapterRef::Registry { entry, .. } if entry.gated);
    let pullable = Pullable {
        name: adapter.display_name(),
        repo,
        revision,
        key: repo.to_string(),
        registry_licenses: adapter
            .registry_license_ids()
            .iter()
            .map(|id| license::lookup(id))
            .collect(),
        registry_gated,
        kind: Kind::Adapter,
    };
    let dir = pull_repo(opener, &pullable, accept_license)?;
    // The file the plan took: what `adapter_in` finds in a whole snapshot, else (a GGUF model
    // where an adapter was meant) that file, for the loader to say what it is.
    let path = crate::store::adapter_in(&dir)
        .or_else(|| {
            std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| crate::engine::format::gguf::is_gguf_file(p))
        })
        .unwrap_or_else(|| dir.clone());
    Ok((dir, path))
}

fn pull_repo(opener: &Opener, what: &Pullable, accept_license: bool) -> Result<PathBuf> {
    let Pullable {
        name,
        repo,
        revision,
        key,
        registry_licenses,
        ..
    } = what;
    let (name, repo, revision, key) = (name.as_str(), *repo, *revision, key.as_str());

    // The gate runs before anything is fetched: registry models are judged on the registry's
    // license right away.
    if !registry_licenses.is_empty() {
        license::gate(
            &opener.settings,
            &GateRequest {
                display_name: name,
                model_key: key,
                licenses: registry_licenses.clone(),
                force_acceptance: Vec::new(),
                accept_flag: accept_license,
                may_ask: true,
                adapter: what.is_adapter(),
            },
        )?;
    }

    let repo_store = opener.store().repo(repo);
    if opener.settings.offline {
        return match what.complete(&repo_store) {
            Some(s) => {
                eprintln!("owrun: {name} is already pulled (offline mode)");
                Ok(s.dir)
            }
            None => bail!(
                "HF_HUB_OFFLINE is set and {name} is not pulled: unset HF_HUB_OFFLINE and run \
                 `owrun pull {name}`"
            ),
        };
    }
    if what.registry_gated && opener.settings.token.is_none() {
        return Err(HubError::GatedNoToken {
            repo: repo.to_string(),
            page: format!("{}/{repo}", opener.settings.endpoint),
        }
        .into());
    }

    let hub = Hub::new(&opener.settings);
    let info = hub
        .model_info(repo, revision)
        .with_context(|| format!("cannot pull {name}"))?;

    // Now the model card's license is known: compare it with the registry's, and judge Hub
    // repos that are not in the registry.
    let card = info
        .card_license
        .clone()
        .unwrap_or_else(|| "unknown".into());
    let mismatch = !registry_licenses.is_empty() && !registry_licenses.iter().any(|l| l.id == card);
    if mismatch {
        eprintln!(
            "owrun: warning: license mismatch for {name}: the registry says {}, the model card on \
             the Hub says {card}. The Hub's license must be accepted before the download.",
            registry_licenses
                .iter()
                .map(|l| l.id.as_str())
                .collect::<Vec<_>>()
                .join("+"),
        );
    }
    if registry_licenses.is_empty() || mismatch {
        let mut licenses = registry_licenses.clone();
        licenses.push(license::lookup(&card));
        license::gate(
            &opener.settings,
            &GateRequest {
                display_name: name,
                model_key: key,
                licenses,
                force_acceptance: if mismatch {
                    vec![card.clone()]
                } else {
                    Vec::new()
                },
                accept_flag: accept_license,
                may_ask: true,
                adapter: what.is_adapter(),
            },
        )?;
    }

    if info.gated && opener.settings.token.is_none() {
        return Err(HubError::GatedNoToken {
            repo: repo.to_string(),
            page: format!("{}/{repo}", opener.settings.endpoint),
        }
        .into());
    }

    let names: Vec<String> = info.files.iter().map(|f| f.name.clone()).collect();
    let plan = what.plan(&names)?;
    let mut wanted: Vec<&RemoteFile> = Vec::new();
    let find = |n: &str| info.files.iter().find(|f| f.name == n);
    for m in &plan.meta {
        wanted.extend(find(m));
    }
    match &plan.weights {
        Weights::Index => wanted.extend(find(WEIGHTS_INDEX)),
        Weights::Files(files) => wanted.extend(files.iter().filter_map(|f| find(f))),
    }

    let started = Instant::now();
    let bars = Bars::new();
    let mut fetched = 0u64;
    let mut count = 0usize;
    let known: u64 = wanted.iter().filter_map(|f| f.size).sum();
    bars.total.set_length(known);
    for f in &wanted {
        fetched += fetch(&hub, &repo_store, repo, &info.commit, f, &bars)?;
        count += 1;
    }
    if plan.weights == Weights::Index {
        let index_path = repo_store.snapshot_dir(&info.commit).join(WEIGHTS_INDEX);
        let text = std::fs::read_to_string(&index_path)
            .with_context(|| format!("cannot read {}", index_path.display()))?;
        let shards = shards_in_index(&text, &index_path)?;
        let mut shard_files = Vec::new();
        for s in &shards {
            let f = find(s).with_context(|| {
                format!("{repo}: {WEIGHTS_INDEX} names {s}, which the repo does not have")
            })?;
            shard_files.push(f);
        }
        bars.total
            .inc_length(shard_files.iter().filter_map(|f| f.size).sum());
        for f in shard_files {
            fetched += fetch(&hub, &repo_store, repo, &info.commit, f, &bars)?;
            count += 1;
        }
    }
    repo_store.write_ref(revision, &info.commit)?;
    bars.finish();

    let secs = started.elapsed().as_secs_f64();
    let snapshot = repo_store.snapshot_dir(&info.commit);
    if fetched == 0 {
        eprintln!(
            "owrun: {name} is up to date ({count} files, commit {})",
            short(&info.commit)
        );
    } else {
        eprintln!(
            "owrun: pulled {name}: {count} files, {} downloaded in {secs:.1}s ({}/s), commit {}",
            format_bytes(fetched),
            format_bytes((fetched as f64 / secs.max(1e-3)) as u64),
            short(&info.commit)
        );
    }
    Ok(snapshot)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Bring one file into the store; returns the bytes downloaded now.
fn fetch(
    hub: &Hub,
    store: &RepoStore,
    repo: &str,
    commit: &str,
    file: &RemoteFile,
    bars: &Bars,
) -> Result<u64> {
    let (size, etag) = match (file.size, &file.etag) {
        (Some(s), Some(e)) => (s, e.clone()),
        _ => hub
            .file_metadata(repo, commit, &file.name)
            .with_context(|| format!("cannot pull {repo}"))?,
    };
    if !is_safe_name(&etag) {
        bail!(
            "{repo}/{}: the hub sent an unusable etag {etag:?}",
            file.name
        );
    }
    let link = store.snapshot_dir(commit).join(&file.name);
    // `exists` follows the link: a snapshot entry whose blob is gone is fetched again.
    if link.exists() {
        bars.total.inc(size);
        return Ok(0);
    }
    let blob = store.blob_path(&etag);
    if !blob.exists() {
        let lock_path = store.lock_path(&etag);
        std::fs::create_dir_all(lock_path.parent().expect("lock has a parent"))?;
        std::fs::create_dir_all(blob.parent().expect("blob has a parent"))?;
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bars.note(&format!(
                "waiting for another download of {} to finish",
                file.name
            ));
            lock.lock()
                .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        }
        if !blob.exists() {
            let mut progress = FileProgress::new(bars, &file.name, size);
            hub.download(
                repo,
                commit,
                &file.name,
                size,
                &etag,
                &store.partial_path(&etag),
                &blob,
                &mut progress,
            )
            .with_context(|| format!("cannot download {} of {repo}", file.name))?;
            let downloaded = progress.downloaded;
            progress.finish();
            store.link(commit, &file.name, &etag)?;
            return Ok(downloaded);
        }
        // Another process finished it while we waited.
    }
    bars.total.inc(size);
    store.link(commit, &file.name, &etag)?;
    Ok(0)
}

fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
