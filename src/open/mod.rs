//! Opening a model: a name becomes a loaded [`Engine`], one step at a time, for every command
//! and for the server.
//!
//! ```text
//! name ──resolve──► ModelRef ──local / pull──► files on disk ──gate──► allowed ──load──► Engine
//!        registry              store, hub                      license           engine
//! ```
//!
//! [`Opener`] holds what those steps read (owrun's settings and the registry). Each step is a
//! method, so a front end walks as far as it needs: `list` and `show` stop at the files and
//! their licenses, `pull` downloads ([`pull`]), `run`, `chat`, `bench`, `kld` and `quantize` go
//! through [`Opener::ready`] (the first four with their LoRA adapters:
//! [`Opener::ready_with_adapters`]) and [`Opener::load`], and the server, which never downloads
//! and never asks, through [`Opener::pulled`]. How to load is a value, [`LoadChoices`], not the
//! process environment.
//!
//! It knows nothing of terminals or HTTP beyond what pulling and the license gate need (a
//! progress bar, a question on a terminal): it returns engines, paths and errors.

mod adapter;
mod progress;
pub mod pull;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::Digest;

use crate::engine::format::config::stores_32_bit;
use crate::engine::format::gguf::{self, is_gguf_file, GgufFile};
use crate::engine::quantize::Scheme;
use crate::engine::{DTypeChoice, DeviceChoice, Engine, KvType, LoadError, LoadOptions};
use crate::error::usage;
use crate::license::{self, GateRequest, License};
use crate::registry::{ModelRef, Registry};
use crate::settings::Settings;
use crate::store::{format_bytes, Snapshot, Store};

/// How to load a model: the user's choices, before they meet the model and the machine.
#[derive(Debug, Clone)]
pub struct LoadChoices {
    /// Threads of the CPU kernels (None: one per core).
    pub threads: Option<NonZeroUsize>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Quantize at load (None: as stored, or quantized automatically when it does not fit).
    pub quant: Option<Scheme>,
    /// How the KV cache stores keys and values on the CPU.
    pub kv_type: KvType,
    /// Positions a sequence may hold (None: the model's context, or what fits in memory).
    pub context: Option<usize>,
    /// LoRA adapters (path, multiplier of its scale).
    pub adapters: Vec<(PathBuf, f32)>,
    /// Merge the adapters into the weights at load (`--lora-merge`).
    pub merge_adapters: bool,
}

/// What opening a model reads: owrun's settings and the registry.
#[derive(Clone)]
pub struct Opener {
    pub settings: Settings,
    pub registry: Registry,
}

impl Opener {
    pub fn store(&self) -> Store {
        Store::new(self.settings.hub_cache.clone())
    }

    /// A model name as a reference: a registry name, `hf:owner/name`, a folder or a file.
    pub fn resolve(&self, name: &str) -> Result<ModelRef> {
        crate::registry::resolve(&self.registry, name)
    }

    /// The folder a model runs from, if it is on disk and complete.
    pub fn local_snapshot(&self, model: &ModelRef) -> Option<Snapshot> {
        match model {
            ModelRef::Local { path } => Some(Snapshot {
                dir: path.clone(),
                commit: None,
            }),
            ModelRef::Registry { entry, .. } if entry.builtin.is_some() => {
                let asset = crate::builtin::find(entry.builtin.as_deref()?)?;
                match asset.folder_in(&self.settings.data_dir) {
                    Ok(dir) => Some(Snapshot { dir, commit: None }),
                    Err(e) => {
                        eprintln!("owrun: {e:#}");
                        None
                    }
                }
            }
            _ => {
                let (repo, revision) = model.hub_repo()?;
                let repo = self.store().repo(repo);
                if model.adapter_entry().is_some() {
                    return repo.complete_adapter_snapshot(revision);
                }
                match model.gguf() {
                    Some(tag) => repo.complete_gguf_snapshot(revision, tag),
                    None => repo.complete_snapshot(revision),
                }
            }
        }
    }

    /// The license terms that apply to a model: the registry's ids, plus the license its model
    /// card declares when the card is on disk and says something else, plus a GGUF file's own
    /// `general.license`. A model with none of them is "unknown". For an adapter entry, the
    /// adapter's own terms (with its base's: [`Opener::all_licenses`]).
    pub fn licenses(&self, model: &ModelRef, snapshot: Option<&Snapshot>) -> Vec<License> {
        if let Some(adapter) = self.entry_adapter(model) {
            let path = snapshot.and_then(|s| crate::store::adapter_in(&s.dir));
            return self.adapter_licenses(&adapter, path.as_deref());
        }
        let ids: Vec<String> = match model {
            ModelRef::Registry { entry, .. } => entry.license_ids(),
            _ => Vec::new(),
        };
        let card = snapshot.map(|s| s.dir.as_path());
        let gguf = snapshot
            .map(|s| s.dir.as_path())
            .filter(|p| is_gguf_file(p));
        licenses_of(ids, card, gguf)
    }

    /// The license a Hub repo's model card declares, asked of the Hub: the terms to accept of
    /// a repo not pulled yet (`owrun license accept hf:owner/name`, as the gate suggests).
    pub fn hub_card_license(&self, repo: &str, revision: &str) -> Result<License> {
        if self.settings.offline {
            return Err(usage(format!(
                "HF_HUB_OFFLINE is set and hf:{repo} is not pulled: its license is not known"
            )));
        }
        let info = crate::hub::Hub::new(&self.settings)
            .model_info(repo, revision)
            .with_context(|| format!("cannot read the model card of hf:{repo}"))?;
        Ok(license::lookup(
            info.card_license.as_deref().unwrap_or("unknown"),
        ))
    }

    /// The license gate for a model on disk. Files the user already has (a local directory)
    /// are checked only against a declared commercial use. `may_ask`: on a terminal, ask for
    /// acceptance.
    pub fn gate(
        &self,
        model: &ModelRef,
        snapshot: &Snapshot,
        accept_license: bool,
        may_ask: bool,
    ) -> Result<()> {
        let licenses = self.licenses(model, Some(snapshot));
        match model {
            ModelRef::Local { .. } => {
                license::check_declared_use(&self.settings, &model.display_name(), &licenses, false)
            }
            _ => license::gate(
                &self.settings,
                &GateRequest {
                    display_name: &model.display_name(),
                    model_key: &acceptance_key(model),
                    licenses,
                    force_acceptance: Vec::new(),
                    accept_flag: accept_license,
                    may_ask,
                    adapter: model.adapter_entry().is_some(),
                },
            ),
        }
    }

    /// The path to load `model` from (a folder, or a GGUF file): the store's snapshot, pulled
    /// first through the license gate when it is not complete. A pulled model still passes the
    /// gate.
    pub fn ready(&self, model: &ModelRef, accept_license: bool) -> Result<PathBuf> {
        self.refuse_adapter_entry(model, "takes a model")?;
        self.refuse_adapter(model, None)?;
        if let Some(snapshot) = self.local_snapshot(model) {
            let missing = if is_gguf_file(&snapshot.dir) || model.gguf().is_some() {
                Vec::new()
            } else {
                crate::store::missing_files(&snapshot.dir)
            };
            if !missing.is_empty() {
                return Err(usage(format!(
                    "{} cannot run: it lacks {}",
                    snapshot.dir.display(),
                    missing.join(", ")
                )));
            }
            self.gate(model, &snapshot, accept_license, true)?;
            return gguf_or_folder(model, snapshot.dir);
        }
        eprintln!(
            "owrun: {} is not pulled yet; pulling it",
            model.display_name()
        );
        let dir = pull::pull(self, model, accept_license)?;
        self.refuse_adapter(model, Some(&dir))?;
        gguf_or_folder(model, dir)
    }

    /// A LoRA adapter given where a model is meant (a folder, a GGUF file, a pulled Hub repo,
    /// or the `dir` a pull just filled) is refused, saying how adapters run.
    fn refuse_adapter(&self, model: &ModelRef, dir: Option<&Path>) -> Result<()> {
        let is_adapter = match (model, dir) {
            (_, Some(dir)) => crate::store::adapter_in(dir).is_some(),
            (ModelRef::Local { path }, None) => crate::engine::format::lora::is_adapter(path),
            (ModelRef::Hub { gguf: None, .. }, None) => model
                .hub_repo()
                .and_then(|(r, rev)| self.store().repo(r).complete_adapter_snapshot(rev))
                .is_some(),
            _ => false,
        };
        if !is_adapter {
            return Ok(());
        }
        let name = model.display_name();
        Err(usage(format!(
            "{name} is a LoRA adapter, not a model: run its base model with `--lora {name}` \
             (`owrun show {name}` says which base it was trained on)"
        )))
    }

    /// The path to load `model` from when it is already on disk and its license lets it be
    /// served without asking anyone (the server: it never downloads, and has no one to ask).
    pub fn pulled(&self, model: &ModelRef) -> Result<PathBuf> {
        self.refuse_adapter_entry(
            model,
            "(the server's) serves an adapter entry only when named on its command line \
             (`owrun serve NAME`)",
        )?;
        let Some(snapshot) = self.local_snapshot(model) else {
            return Err(usage(format!(
                "{} is not pulled: run `owrun pull {}` first (the server never downloads)",
                model.display_name(),
                model.display_name()
            )));
        };
        self.gate(model, &snapshot, false, false)?;
        gguf_or_folder(model, snapshot.dir)
    }

    /// Load the model at `path` (a folder or a GGUF file, from `ready` or `pulled`) as
    /// `choices` say. Its notes are left in the engine for the caller to show.
    pub fn load(&self, path: &Path, choices: &LoadChoices) -> Result<Engine> {
        let quant = choices
            .quant
            .or_else(|| auto_quant(path, choices, self.available_memory()));
        let options = LoadOptions {
            threads: choices.threads,
            device: choices.device,
            dtype: choices.dtype,
            quant,
            quant_cache: quant.map(|q| self.quant_cache_path(path, q)),
            kv_type: choices.kv_type,
            context: choices.context,
            adapters: choices.adapters.clone(),
            merge_adapters: choices.merge_adapters,
        };
        let loaded = if is_gguf_file(path) {
            Engine::load_gguf(path, &options)
        } else {
            Engine::load(path, &crate::store::weight_files(path), &options)
        };
        let mut engine = loaded.map_err(|e| {
            // A device that is not there is the user's choice to revisit, not the model's fault.
            match e.downcast_ref::<LoadError>() {
                Some(LoadError::DeviceUnavailable(..)) => usage(format!("--device: {e}")),
                Some(LoadError::Unsuitable(..)) => usage(e.to_string()),
                None => e.context(format!("cannot load the model in {}", path.display())),
            }
        })?;
        if choices.context.is_none() {
            fit_context(&mut engine, self.available_memory());
        }
        crate::memory::keep_freed_memory();
        Ok(engine)
    }

    /// Memory a model may use: `OWRUN_MEMORY_LIMIT`, else what the kernel reports.
    pub fn available_memory(&self) -> Option<u64> {
        crate::memory::available_bytes(self.settings.memory_limit)
    }

    /// Where a model's weights quantized under `scheme` are kept: beside the model in the store
    /// (`models--owner--name/owrun/<commit>.<scheme>.gguf`, so `owrun rm` removes them too), or
    /// for a local directory under owrun's data directory, named after the directory's path.
    fn quant_cache_path(&self, dir: &Path, scheme: Scheme) -> PathBuf {
        let file = |stem: &str| format!("{stem}.{}.gguf", scheme.name().to_ascii_lowercase());
        let snapshots = dir.parent();
        if let (Some(commit), Some(repo)) = (
            dir.file_name().and_then(|c| c.to_str()),
            snapshots
                .filter(|s| s.file_name().is_some_and(|n| n == "snapshots"))
                .and_then(|s| s.parent()),
        ) {
            return repo.join("owrun").join(file(commit));
        }
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let digest = crate::hub::hex(&sha2::Sha256::digest(
            canonical.to_string_lossy().as_bytes(),
        ));
        let name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.settings
            .data_dir
            .join("quantized")
            .join(file(&format!("{name}-{}", &digest[..16])))
    }
}

/// Share of the memory available after loading that one sequence's KV cache may take when the
/// context is chosen automatically (the rest: activations, the page cache, other programs).
const CACHE_SHARE: f64 = 0.75;

/// Without `--ctx`, the model's context shrinks to what one sequence's KV cache can hold beside
/// the weights (llama.cpp's `--fit`, ollama's automatic context), said once in the notes.
fn fit_context(engine: &mut Engine, available: Option<u64>) {
    let Some(available) = available else { return };
    let model = &mut engine.model;
    let budget = (available as f64 * CACHE_SHARE) as usize;
    let full = model.context();
    if model.cache_bytes_for(full) <= budget {
        return;
    }
    // The largest context whose cache fits, by bisection (windowed layers make it non-linear).
    let (mut lo, mut hi) = (1usize, full);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if model.cache_bytes_for(mid) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let fitted = (lo / 256 * 256).max(lo.min(256));
    model.set_context(fitted);
    engine.notes.push(format!(
        "context {fitted} tokens of the model's {full}: a longer KV cache ({} per token) would \
         not fit in the {} available (--ctx N to choose)",
        format_bytes(model.cache_bytes_per_token() as u64),
        format_bytes(available)
    ));
}

/// The key acceptances of this model are recorded under: its Hub repo, or its directory.
pub fn acceptance_key(model: &ModelRef) -> String {
    match model {
        ModelRef::Local { path } => std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        _ => model
            .hub_repo()
            .map(|(r, _)| r.to_string())
            .unwrap_or_default(),
    }
}

/// The licenses named by `ids` (a registry's), plus the one the model card in the folder `card`
/// declares (README.md front matter) and a GGUF file's `general.license`, each once; "unknown"
/// when there are none.
fn licenses_of(mut ids: Vec<String>, card: Option<&Path>, gguf: Option<&Path>) -> Vec<License> {
    if let Some(card_id) = card
        .and_then(|dir| std::fs::read_to_string(dir.join("README.md")).ok())
        .and_then(|text| license::license_from_model_card(&text))
    {
        if !ids.contains(&card_id) {
            ids.push(card_id);
        }
    }
    // A GGUF file says its license in its metadata (general.license), as converters copy it
    // from the model card.
    if let Some(id) = gguf.and_then(gguf_license) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        ids.push("unknown".into());
    }
    ids.iter().map(|id| license::lookup(id)).collect()
}

/// A GGUF file's `general.license`, as an id.
fn gguf_license(path: &Path) -> Option<String> {
    match GgufFile::open(path).ok()?.meta("general.license") {
        Some(gguf::MetaValue::String(l)) => Some(l.trim().to_lowercase()),
        _ => None,
    }
}

/// For `NAME:QUANT` and `hf:repo:QUANT`, the (first) GGUF file of that quantization in the
/// snapshot; else the snapshot folder.
fn gguf_or_folder(model: &ModelRef, dir: PathBuf) -> Result<PathBuf> {
    let Some(tag) = model.gguf() else {
        return Ok(dir);
    };
    // Named by the model, not by its folder: the server says this to its clients, who must not
    // learn the server's paths.
    crate::store::gguf_files_in(&dir, tag)
        .into_iter()
        .next()
        .with_context(|| format!("{} has no {tag} GGUF file", model.display_name()))
}

/// On the CPU, a model that does not fit in the memory available in its own dtype runs quantized:
/// Q8_0 when that fits, else Q4_K_M, said once on stderr. Only when the user chose neither a
/// dtype nor a quantization.
fn auto_quant(dir: &Path, choices: &LoadChoices, available: Option<u64>) -> Option<Scheme> {
    let gpu = candle_core::utils::cuda_is_available() || candle_core::utils::metal_is_available();
    let cpu = choices.device == DeviceChoice::Cpu || (choices.device == DeviceChoice::Auto && !gpu);
    if !cpu || choices.dtype != DTypeChoice::Auto || is_gguf_file(dir) {
        return None;
    }
    let weights: u64 = crate::store::weight_files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let available = available?;
    // Room for the KV cache, activations and the program: a tenth on top of the weights.
    let fits = |bytes: f64| bytes * 1.1 <= available as f64;
    if weights == 0 || fits(weights as f64) {
        return None;
    }
    // Bits per weight of the checkpoint (f32 or 16-bit) and of the quantized forms.
    let stored_bits = if stores_32_bit(dir) { 32.0 } else { 16.0 };
    let q8 = weights as f64 * 8.5 / stored_bits;
    let scheme = if fits(q8) { Scheme::Q8_0 } else { Scheme::Q4KM };
    eprintln!(
        "owrun: the weights ({}) do not fit in the {} of memory available: running them \
         quantized to {} (--quant or --dtype chooses otherwise)",
        format_bytes(weights),
        format_bytes(available),
        scheme.name()
    );
    Some(scheme)
}
