//! Where the server's models come from: the registry and the local store, through the model
//! opener and the license gate.

use std::path::PathBuf;

use anyhow::Result;

use super::error::ApiError;
use crate::engine::Engine;
use crate::error::Fatal;
use crate::license;
use crate::open::{LoadChoices, Opener};
use crate::registry::{self, ModelRef};

/// A model a request named, resolved and allowed by its license, not yet loaded.
pub struct Opened {
    /// The name it is served under (the registry name, `hf:owner/name`, or a path).
    pub id: String,
    /// The names of the LoRA adapters it loads with (`--lora NAME=PATH`), in order.
    pub adapters: Vec<String>,
    /// Loads it (slow: run off the async threads).
    pub load: Box<dyn FnOnce() -> anyhow::Result<Engine> + Send>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Card {
    pub id: String,
    pub licenses: Vec<String>,
    /// "allowed", "conditions", "not allowed" or "unknown" (the strictest of its licenses).
    pub commercial: String,
    pub pulled: bool,
}

/// The models a client may name: the registry's, `hf:` repos already pulled, and what the
/// operator named on the command line (paths included) — never a path a client names that the
/// operator did not: a client's name is resolved without looking at the filesystem, so it can
/// neither load a file nor learn whether one exists. Opened through the opener as `run` opens
/// them, but never downloading and never asking (a server has no one to ask).
pub struct Catalog {
    opener: Opener,
    choices: LoadChoices,
    /// Named on the command line (listed by /v1/models even when they are local paths).
    named: Vec<String>,
    /// LoRA adapters (`--lora NAME=SPEC`, or an adapter entry named on the command line) and
    /// the model they are for (its name as served): that model loads with all of them; a
    /// request picks among them.
    adapters: Vec<ServedAdapter>,
    adapted: Option<String>,
}

/// A LoRA adapter the server loads with its model.
pub struct ServedAdapter {
    /// What requests call it (`base+NAME`, the `lora` field's "id").
    pub name: String,
    pub path: PathBuf,
    pub scale: f32,
    /// Its own license ids (the base's apply too).
    pub licenses: Vec<String>,
    /// An adapter entry of the registry named on the command line: also served by its own
    /// name, as `owrun run NAME` runs it.
    pub entry: bool,
}

/// Longest model name a client may send: a longer one is unknown, without suggestions (which
/// take time in proportion to its length).
const MAX_NAME: usize = 256;

/// A name as error messages show it: a long one cut short.
pub fn shown(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}… ({} bytes)", &name[..end], name.len()),
        None => name.to_string(),
    }
}

impl Catalog {
    pub fn new(opener: Opener, choices: LoadChoices, named: Vec<String>) -> Catalog {
        Catalog {
            opener,
            choices,
            named,
            adapters: Vec::new(),
            adapted: None,
        }
    }

    /// Load the model served as `model` with these adapters.
    pub fn with_adapters(mut self, model: String, adapters: Vec<ServedAdapter>) -> Self {
        self.adapted = Some(model);
        self.adapters = adapters;
        self
    }

    /// `base+adapter` as (base, adapter) when `adapter` is one of the server's adapters, an
    /// adapter entry's own name as (its base, it); any other name as it is.
    pub fn split_adapter(&self, name: &str) -> (String, Option<String>) {
        if let (Some(base), true) = (
            &self.adapted,
            self.adapters.iter().any(|a| a.entry && a.name == name),
        ) {
            return (base.clone(), Some(name.to_string()));
        }
        match name.rsplit_once('+') {
            Some((base, a)) if self.adapters.iter().any(|s| s.name == a) => {
                (base.to_string(), Some(a.to_string()))
            }
            _ => (name.to_string(), None),
        }
    }

    /// Resolve a name from the command line, find it on disk and pass the license gate (never
    /// asking: a server has no one to ask).
    pub fn check(&self, name: &str) -> Result<(ModelRef, std::path::PathBuf)> {
        let model = self.opener.resolve(name)?;
        let path = self.opener.pulled(&model)?;
        Ok((model, path))
    }

    /// The operator named `name` on the command line.
    pub fn is_named(&self, name: &str) -> bool {
        self.named.iter().any(|n| n == name)
    }

    /// A client's name as a model: one the operator named, else a registry name or `hf:` repo.
    fn resolve(&self, name: &str) -> Result<ModelRef> {
        if self.is_named(name) {
            return self.opener.resolve(name);
        }
        if name.len() > MAX_NAME {
            return Err(crate::error::usage(format!(
                "unknown model {:?}",
                shown(name)
            )));
        }
        let registry = &self.opener.registry;
        registry::resolve_known(registry, name)
            .unwrap_or_else(|| Err(registry::unknown(registry, name)))
    }

    /// Resolve a client's `name`, check it is on disk and that its license lets it be served.
    /// Slow (it reads the model's files for its licenses): run off the async threads.
    pub fn open(&self, name: &str) -> Result<Opened, ApiError> {
        let model = self
            .resolve(name)
            .map_err(|e| ApiError::model_not_found(format!("{e:#}")))?;
        let path = self.opener.pulled(&model).map_err(|e| {
            let message = format!("{e:#}");
            match e.downcast_ref::<Fatal>() {
                Some(Fatal::LicenseNotAccepted(_)) => {
                    ApiError::license(message, "license_not_accepted")
                }
                Some(Fatal::LicenseForbidsUse(_)) => {
                    ApiError::license(message, "license_forbids_use")
                }
                _ => ApiError::model_not_found(message),
            }
        })?;
        let opener = self.opener.clone();
        let mut choices = self.choices.clone();
        let id = model.display_name();
        let mut adapters = Vec::new();
        if self.adapted.as_deref() == Some(id.as_str()) {
            choices.adapters = self
                .adapters
                .iter()
                .map(|a| (a.path.clone(), a.scale))
                .collect();
            adapters = self.adapters.iter().map(|a| a.name.clone()).collect();
        }
        Ok(Opened {
            id,
            adapters,
            load: Box::new(move || opener.load(&path, &choices)),
        })
    }

    /// Every model a client may name. Slow (it reads each model's license files): run off the
    /// async threads.
    pub fn cards(&self) -> Vec<Card> {
        let mut models: Vec<ModelRef> = self
            .opener
            .registry
            .iter()
            // Adapter entries are served only when named on the command line (below).
            .filter(|(_, entry)| entry.adapter.is_none())
            .map(|(name, entry)| ModelRef::Registry {
                name: name.clone(),
                entry: entry.clone(),
                gguf: None,
            })
            .collect();
        for name in &self.named {
            if let Ok(m) = self.opener.resolve(name) {
                let new = !models.iter().any(|x| x.display_name() == m.display_name());
                // An adapter entry is listed with its base's variants (below).
                if new && m.adapter_entry().is_none() {
                    models.push(m);
                }
            }
        }
        models
            .iter()
            .map(|m| {
                let snapshot = self.opener.local_snapshot(m);
                let licenses = self.opener.licenses(m, snapshot.as_ref());
                Card {
                    id: m.display_name(),
                    commercial: commercial(&licenses),
                    licenses: licenses.into_iter().map(|l| l.id).collect(),
                    pulled: snapshot.is_some(),
                }
            })
            .flat_map(|card| {
                // The adapted model once more per adapter, as `base+adapter` (an adapter entry
                // also by its own name), under its licenses and the base's.
                let adapted = self.adapted.as_deref() == Some(card.id.as_str());
                let variants: Vec<Card> = if adapted { &self.adapters[..] } else { &[] }
                    .iter()
                    .flat_map(|a| {
                        let mut ids = card.licenses.clone();
                        for l in &a.licenses {
                            if !ids.contains(l) {
                                ids.push(l.clone());
                            }
                        }
                        let licenses: Vec<_> = ids.iter().map(|id| license::lookup(id)).collect();
                        let variant = Card {
                            id: format!("{}+{}", card.id, a.name),
                            commercial: commercial(&licenses),
                            licenses: ids,
                            pulled: card.pulled,
                        };
                        let own = a.entry.then(|| Card {
                            id: a.name.clone(),
                            ..variant.clone()
                        });
                        std::iter::once(variant).chain(own)
                    })
                    .collect();
                std::iter::once(card).chain(variants)
            })
            .collect()
    }
}

/// What a card says of commercial use under `licenses`: the strictest of them, as the API
/// spells it.
fn commercial(licenses: &[license::License]) -> String {
    serde_json::to_value(license::strictest(licenses))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
