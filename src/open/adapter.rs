//! LoRA adapters on the way to a model: named by `--lora` (a path or `hf:owner/name`) or by an
//! adapter entry of the registry, found on disk or pulled like a model, and judged by their own
//! licenses beside the base's. The engine takes their paths.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{gguf_license, licenses_of, pull, Opener};
use crate::engine::format::gguf::is_gguf_file;
use crate::error::usage;
use crate::license::{self, GateRequest, License};
use crate::registry::{resolve_known, AdapterRef, ModelRef};

impl Opener {
    /// The model an adapter entry runs on (the registry checked, when it loaded, that it is one).
    pub fn base_of(&self, model: &ModelRef) -> Result<ModelRef> {
        let entry = model.adapter_entry().ok_or_else(|| {
            usage(format!(
                "{} is not an adapter entry: it has no base",
                model.display_name()
            ))
        })?;
        let base = entry.base.as_deref().unwrap_or_default();
        resolve_known(&self.registry, base).unwrap_or_else(|| {
            Err(usage(format!(
                "{}: its base {base:?} is not a registry name or hf:owner/name",
                model.display_name()
            )))
        })
    }

    /// The adapter an adapter entry names, as `--lora` would take it.
    pub fn entry_adapter(&self, model: &ModelRef) -> Option<AdapterRef> {
        match model {
            ModelRef::Registry { name, entry, .. } if entry.adapter.is_some() => {
                Some(AdapterRef::Registry {
                    name: name.clone(),
                    entry: Box::new(entry.clone()),
                })
            }
            _ => None,
        }
    }

    /// The adapter `model` is when it names one on disk by itself: a PEFT folder or GGUF
    /// adapter file, or a Hub repo pulled as an adapter (an adapter entry: `entry_adapter`).
    pub fn adapter_on_disk_named(&self, model: &ModelRef) -> Option<AdapterRef> {
        match model {
            ModelRef::Local { path } if crate::engine::format::lora::is_adapter(path) => {
                Some(AdapterRef::Local { path: path.clone() })
            }
            ModelRef::Hub {
                repo,
                revision,
                gguf: None,
            } if self
                .store()
                .repo(repo)
                .complete_adapter_snapshot(revision)
                .is_some() =>
            {
                Some(AdapterRef::Hub {
                    repo: repo.clone(),
                    revision: revision.clone(),
                })
            }
            _ => None,
        }
    }

    /// An adapter entry is not a model: `doing` says what the command does instead.
    pub(super) fn refuse_adapter_entry(&self, model: &ModelRef, doing: &str) -> Result<()> {
        if model.adapter_entry().is_none() {
            return Ok(());
        }
        let base = self
            .base_of(model)
            .map(|b| b.display_name())
            .unwrap_or_default();
        Err(usage(format!(
            "{} is a LoRA adapter on {base}: `owrun run`, `chat`, `bench` and `kld` run it; this \
             command {doing}",
            model.display_name()
        )))
    }

    /// The path to load a model from and the adapters to load with it, each pulled first when
    /// it is not on disk, each through its license gate: the adapters named (`--lora`), and for
    /// an adapter entry of the registry, its base with its adapter. The adapters go first: their
    /// files are small, and one whose license refuses the use stops the run before a base is
    /// downloaded for nothing.
    pub fn ready_with_adapters(
        &self,
        model: &ModelRef,
        adapters: &[(AdapterRef, f32)],
        accept_license: bool,
    ) -> Result<(PathBuf, Vec<(PathBuf, f32)>)> {
        let (base, mut all) = match self.entry_adapter(model) {
            Some(adapter) => (self.base_of(model)?, vec![(adapter, 1.0)]),
            None => (model.clone(), Vec::new()),
        };
        all.extend(adapters.iter().cloned());
        let mut paths = Vec::new();
        for (adapter, scale) in &all {
            paths.push((self.ready_adapter(adapter, accept_license)?, *scale));
        }
        Ok((self.ready(&base, accept_license)?, paths))
    }

    /// The path `--lora` loads `adapter` from: a local one as it is (checked only against a
    /// declared commercial use, as a local model is), a Hub one from the store, pulled first
    /// when it is not whole there; through the license gate.
    pub fn ready_adapter(&self, adapter: &AdapterRef, accept_license: bool) -> Result<PathBuf> {
        if let AdapterRef::Local { path } = adapter {
            if !path.exists() {
                return Err(usage(format!(
                    "--lora {}: no such file or folder",
                    path.display()
                )));
            }
            let licenses = self.adapter_licenses(adapter, Some(path));
            license::check_declared_use(&self.settings, &adapter.display_name(), &licenses, true)?;
            return Ok(path.clone());
        }
        if let Some(path) = self.adapter_on_disk(adapter) {
            self.gate_adapter(
                adapter,
                self.adapter_licenses(adapter, Some(&path)),
                accept_license,
            )?;
            return Ok(path);
        }
        eprintln!(
            "owrun: the LoRA adapter {} is not pulled yet; pulling it",
            adapter.display_name()
        );
        let (dir, path) = pull::pull_adapter(self, adapter, accept_license)?;
        // The model card was judged before the download; a GGUF adapter states a license in its
        // own metadata too, which may be another.
        if let Some(id) = Some(&path)
            .filter(|p| is_gguf_file(p))
            .and_then(|p| gguf_license(p))
        {
            if !self
                .adapter_licenses(adapter, Some(&dir))
                .iter()
                .any(|l| l.id == id)
            {
                self.gate_adapter(adapter, vec![license::lookup(&id)], accept_license)?;
            }
        }
        Ok(path)
    }

    /// The path the server loads `adapter` from: on disk already (the server never downloads),
    /// its license accepted (the server never asks). With its license ids, for /v1/models.
    pub fn pulled_adapter(&self, adapter: &AdapterRef) -> Result<(PathBuf, Vec<String>)> {
        let Some(path) = self.adapter_on_disk(adapter).filter(|p| p.exists()) else {
            let name = adapter.display_name();
            return Err(usage(match adapter {
                AdapterRef::Local { .. } => format!("--lora {name}: no such file or folder"),
                _ => format!(
                    "the LoRA adapter {name} is not pulled: run `owrun pull {name}` first (the \
                     server never downloads)"
                ),
            }));
        };
        let licenses = self.adapter_licenses(adapter, Some(&path));
        match adapter {
            AdapterRef::Local { .. } => license::check_declared_use(
                &self.settings,
                &adapter.display_name(),
                &licenses,
                true,
            )?,
            _ => self.gate_adapter_as(adapter, licenses.clone(), false, false)?,
        }
        Ok((path, licenses.into_iter().map(|l| l.id).collect()))
    }

    /// A Hub adapter whole in the store (or a local one): the path `--lora` loads.
    pub fn adapter_on_disk(&self, adapter: &AdapterRef) -> Option<PathBuf> {
        if let AdapterRef::Local { path } = adapter {
            return Some(path.clone());
        }
        let (repo, revision) = adapter.hub_repo()?;
        let snapshot = self
            .store()
            .repo(repo)
            .complete_adapter_snapshot(revision)?;
        crate::store::adapter_in(&snapshot.dir)
    }

    /// The license terms of an adapter at `path` (a folder, or a GGUF file): the registry's
    /// ids for an adapter entry, its model card's (README.md in the folder, or beside a GGUF
    /// file pulled from the Hub), a GGUF adapter's `general.license`; "unknown" without any.
    /// Its base's terms apply too, and are the base's own to gate.
    pub fn adapter_licenses(&self, adapter: &AdapterRef, path: Option<&Path>) -> Vec<License> {
        let card = match (adapter, path) {
            (_, Some(p)) if p.is_dir() => Some(p),
            // A README beside a file of the user's may be anyone's: only a repo's is its card.
            (AdapterRef::Local { .. }, _) => None,
            (_, p) => p.and_then(Path::parent),
        };
        let gguf = path.filter(|p| is_gguf_file(p));
        licenses_of(adapter.registry_license_ids(), card, gguf)
    }

    /// Every license that applies to running `model`: its own, and for an adapter entry its
    /// base's too (each once). What `owrun list` filters on.
    pub fn all_licenses(&self, model: &ModelRef) -> Vec<License> {
        let mut licenses = self.licenses(model, self.local_snapshot(model).as_ref());
        if let Ok(base) = self.base_of(model) {
            for l in self.licenses(&base, self.local_snapshot(&base).as_ref()) {
                if !licenses.iter().any(|x| x.id == l.id) {
                    licenses.push(l);
                }
            }
        }
        licenses
    }

    /// The license gate for an adapter from the Hub (or an adapter entry), its acceptances
    /// recorded under its repo.
    fn gate_adapter(
        &self,
        adapter: &AdapterRef,
        licenses: Vec<License>,
        accept_license: bool,
    ) -> Result<()> {
        self.gate_adapter_as(adapter, licenses, accept_license, true)
    }

    /// `gate_adapter`, asking the user (`may_ask`) or not (the server).
    fn gate_adapter_as(
        &self,
        adapter: &AdapterRef,
        licenses: Vec<License>,
        accept_license: bool,
        may_ask: bool,
    ) -> Result<()> {
        let key = adapter
            .hub_repo()
            .map(|(r, _)| r.to_string())
            .unwrap_or_default();
        license::gate(
            &self.settings,
            &GateRequest {
                display_name: &adapter.display_name(),
                model_key: &key,
                licenses,
                force_acceptance: Vec::new(),
                accept_flag: accept_license,
                may_ask,
                adapter: true,
            },
        )
    }
}
