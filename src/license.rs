//! Open-weights licenses: what each one allows, which ones the user accepted, and the gate every
//! download and run passes through.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::Fatal;
use crate::settings::{write_atomic, DeclaredUse, Settings};

/// Whether a license allows using the model in a commercial product or service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Commercial {
    Allowed,
    /// Allowed, with conditions that matter (user caps, use policies, attribution).
    Conditional,
    NotAllowed,
    /// owrun does not know this license: never treated as allowing anything.
    Unknown,
}

impl Commercial {
    pub fn label(self) -> &'static str {
        match self {
            Commercial::Allowed => "yes",
            Commercial::Conditional => "conditions",
            Commercial::NotAllowed => "no",
            Commercial::Unknown => "unknown",
        }
    }

    pub fn allows_commercial(self) -> bool {
        matches!(self, Commercial::Allowed | Commercial::Conditional)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct License {
    pub id: String,
    pub name: String,
    pub url: String,
    pub commercial: Commercial,
    pub osi_approved: bool,
    /// Whether owrun asks the user to accept the terms before first download or run.
    pub needs_acceptance: bool,
    pub summary: String,
}

struct Entry {
    id: &'static str,
    name: &'static str,
    url: &'static str,
    commercial: Commercial,
    osi: bool,
    accept: bool,
    summary: &'static str,
}

/// Summaries are owrun's reading of the terms, not legal advice; the URL is the authority.
const CATALOGUE: &[Entry] = &[
    Entry {
        id: "apache-2.0",
        name: "Apache License 2.0",
        url: "https://www.apache.org/licenses/LICENSE-2.0",
        commercial: Commercial::Allowed,
        osi: true,
        accept: false,
        summary: "Permissive. Use, modify and redistribute for any purpose, commercial included. \
                  Keep the license and NOTICE file with copies, state significant changes. \
                  Includes an express patent grant that ends if you sue over patents in the work.",
    },
    Entry {
        id: "mit",
        name: "MIT License",
        url: "https://opensource.org/license/mit",
        commercial: Commercial::Allowed,
        osi: true,
        accept: false,
        summary: "Permissive. Use, modify and redistribute for any purpose, commercial included, \
                  as long as the copyright notice and license text travel with copies.",
    },
    Entry {
        id: "bsd-3-clause",
        name: "BSD 3-Clause License",
        url: "https://opensource.org/license/bsd-3-clause",
        commercial: Commercial::Allowed,
        osi: true,
        accept: false,
        summary: "Permissive. Keep the copyright notice and license text; do not use the \
                  authors' names to endorse derived products.",
    },
    Entry {
        id: "cc-by-4.0",
        name: "Creative Commons Attribution 4.0",
        url: "https://creativecommons.org/licenses/by/4.0/",
        commercial: Commercial::Allowed,
        osi: false,
        accept: false,
        summary: "Use and adapt for any purpose, commercial included, with attribution to the \
                  authors and a link to the license; indicate changes.",
    },
    Entry {
        id: "cc-by-nc-4.0",
        name: "Creative Commons Attribution-NonCommercial 4.0",
        url: "https://creativecommons.org/licenses/by-nc/4.0/",
        commercial: Commercial::NotAllowed,
        osi: false,
        accept: true,
        summary: "Non-commercial use only: no use primarily intended for commercial advantage or \
                  monetary compensation. Attribution required; indicate changes.",
    },
    Entry {
        id: "llama3",
        name: "Meta Llama 3 Community License",
        url: "https://llama.meta.com/llama3/license/",
        commercial: Commercial::Conditional,
        osi: false,
        accept: true,
        summary: "Commercial use allowed unless your products had more than 700 million monthly \
                  active users on the release date (then you need a license from Meta). Use must \
                  follow Meta's Acceptable Use Policy. Redistributions must include the license \
                  and show \"Built with Meta Llama 3\"; derived models' names must begin with \
                  \"Llama 3\". Outputs may not be used to improve other large language models.",
    },
    Entry {
        id: "llama3.1",
        name: "Llama 3.1 Community License",
        url: "https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/LICENSE",
        commercial: Commercial::Conditional,
        osi: false,
        accept: true,
        summary: "Commercial use allowed unless your products had more than 700 million monthly \
                  active users on the release date (then you need a license from Meta). Use must \
                  follow the Llama 3.1 Acceptable Use Policy. Redistributions must include the \
                  license and show \"Built with Llama\"; derived models' names must begin with \
                  \"Llama\". Outputs may be used to improve other models, under these terms.",
    },
    Entry {
        id: "llama3.2",
        name: "Llama 3.2 Community License",
        url: "https://github.com/meta-llama/llama-models/blob/main/models/llama3_2/LICENSE",
        commercial: Commercial::Conditional,
        osi: false,
        accept: true,
        summary: "Commercial use allowed unless your products had more than 700 million monthly \
                  active users on the release date. Use must follow the Llama 3.2 Acceptable Use \
                  Policy, which grants no rights to the multimodal models to individuals or \
                  companies domiciled in the EU. Redistributions must include the license and \
                  show \"Built with Llama\".",
    },
    Entry {
        id: "gemma",
        name: "Gemma Terms of Use",
        url: "https://ai.google.dev/gemma/terms",
        commercial: Commercial::Conditional,
        osi: false,
        accept: true,
        summary: "Commercial use allowed. Use must follow the Gemma Prohibited Use Policy, which \
                  Google may update; you must pass the same use restrictions on to anyone you \
                  distribute Gemma or derivatives to, and give them a copy of the terms. Google \
                  may restrict use it believes violates the terms.",
    },
    Entry {
        id: "mnpl",
        name: "Mistral AI Non-Production License",
        url: "https://mistral.ai/licenses/MNPL-0.1.md",
        commercial: Commercial::NotAllowed,
        osi: false,
        accept: true,
        summary: "Research, testing and evaluation only: no production use and no commercial \
                  activity, including internal business use, without a separate commercial \
                  license from Mistral AI.",
    },
    Entry {
        id: "mrl",
        name: "Mistral AI Research License",
        url: "https://mistral.ai/licenses/MRL-0.1.md",
        commercial: Commercial::NotAllowed,
        osi: false,
        accept: true,
        summary: "Research and personal, non-commercial use only; commercial use needs a \
                  separate license from Mistral AI.",
    },
    Entry {
        id: "qwen-research",
        name: "Qwen Research License",
        url: "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE",
        commercial: Commercial::NotAllowed,
        osi: false,
        accept: true,
        summary: "Non-commercial research and evaluation only; commercial use needs a license \
                  from Alibaba Cloud. Redistributions must carry the license; derived products \
                  must say \"Built with Qwen\" or \"Improved using Qwen\".",
    },
    Entry {
        id: "qwen",
        name: "Tongyi Qianwen License",
        url: "https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE",
        commercial: Commercial::Conditional,
        osi: false,
        accept: true,
        summary: "Commercial use allowed unless your product or service has more than 100 million \
                  monthly active users (then you need a license from Alibaba Cloud). \
                  Redistributions must carry the license and state \"Built with Qwen\".",
    },
];

/// Look a license up by id (case-insensitive). Unknown ids give an "unknown" license that allows
/// nothing and asks to be read.
pub fn lookup(id: &str) -> License {
    let norm = normalize_id(id);
    match CATALOGUE.iter().find(|e| e.id == norm) {
        Some(e) => License {
            id: e.id.to_string(),
            name: e.name.to_string(),
            url: e.url.to_string(),
            commercial: e.commercial,
            osi_approved: e.osi,
            needs_acceptance: e.accept,
            summary: e.summary.to_string(),
        },
        None => License {
            id: if norm.is_empty() {
                "unknown".into()
            } else {
                norm.clone()
            },
            name: if norm.is_empty() || norm == "unknown" {
                "Unknown license".into()
            } else {
                format!("Unrecognised license \"{norm}\"")
            },
            url: String::new(),
            commercial: Commercial::Unknown,
            osi_approved: false,
            needs_acceptance: true,
            summary: "owrun does not know this license. Read the model card and license files \
                      before using the model; owrun treats it as allowing no commercial use."
                .into(),
        },
    }
}

/// The most restrictive commercial-use verdict among licenses that all apply to one model.
pub fn strictest(licenses: &[License]) -> Commercial {
    let rank = |c: Commercial| match c {
        Commercial::Allowed => 0,
        Commercial::Conditional => 1,
        Commercial::Unknown => 2,
        Commercial::NotAllowed => 3,
    };
    licenses
        .iter()
        .map(|l| l.commercial)
        .max_by_key(|c| rank(*c))
        .unwrap_or(Commercial::Unknown)
}

/// True when `id` is in the catalogue.
pub fn is_known(id: &str) -> bool {
    let norm = normalize_id(id);
    CATALOGUE.iter().any(|e| e.id == norm)
}

pub fn known_ids() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().map(|e| e.id)
}

fn normalize_id(id: &str) -> String {
    id.trim().to_ascii_lowercase()
}

/// The license id a model card declares: `license:` unless it is `other`, in which case the Hub
/// convention puts the real id in `license_name:`.
pub fn card_license_id(license: Option<&str>, license_name: Option<&str>) -> Option<String> {
    match license.map(normalize_id) {
        Some(l) if l == "other" => license_name.map(normalize_id).or(Some(l)),
        other => other,
    }
}

/// Read the license id from a model card's YAML front matter (README.md). Only the two scalar
/// keys matter here, so a line scan is enough and avoids a YAML dependency.
pub fn license_from_model_card(text: &str) -> Option<String> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "---" {
        return None;
    }
    let (mut license, mut name) = (None, None);
    for line in lines {
        if line.trim() == "---" {
            break;
        }
        let scalar = |rest: &str| {
            rest.trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string()
        };
        if let Some(rest) = line.strip_prefix("license:") {
            license = Some(scalar(rest)).filter(|s| !s.is_empty());
        } else if let Some(rest) = line.strip_prefix("license_name:") {
            name = Some(scalar(rest)).filter(|s| !s.is_empty());
        }
    }
    card_license_id(license.as_deref(), name.as_deref())
}

/// One recorded acceptance: this license, for this model, on this day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Acceptance {
    pub license: String,
    pub model: String,
    pub date: String,
}

pub struct Acceptances {
    path: PathBuf,
    items: Vec<Acceptance>,
}

impl Acceptances {
    pub fn load(settings: &Settings) -> Result<Self> {
        let path = settings.accepted_licenses_file();
        let items = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Fatal::Usage(format!(
                    "{} is not a valid acceptance record ({e}); fix or delete it",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { path, items })
    }

    pub fn find(&self, license: &str, model: &str) -> Option<&Acceptance> {
        self.items
            .iter()
            .find(|a| a.license == license && a.model == model)
    }

    pub fn record(&mut self, license: &str, model: &str) -> Result<()> {
        if self.find(license, model).is_some() {
            return Ok(());
        }
        self.items.push(Acceptance {
            license: license.to_string(),
            model: model.to_string(),
            date: crate::settings::today_utc(),
        });
        let json = serde_json::to_string_pretty(&self.items)?;
        write_atomic(&self.path, json.as_bytes())
    }

    pub fn all(&self) -> &[Acceptance] {
        &self.items
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What the gate is asked about: one model and the license terms that apply to it.
pub struct GateRequest<'a> {
    /// The name the user typed, for messages (`llama3.2-1b`, `hf:owner/name`).
    pub display_name: &'a str,
    /// The key acceptances are recorded under (the Hub repo id, or a local path).
    pub model_key: &'a str,
    pub licenses: Vec<License>,
    /// Licenses that must be accepted even if the catalogue would not ask (a Hub/registry mismatch).
    pub force_acceptance: Vec<String>,
    /// `--accept-license` was given.
    pub accept_flag: bool,
    /// Ask on the terminal when there is one (the server never asks: it answers 403).
    pub may_ask: bool,
    /// It is a LoRA adapter (messages say so), whose terms apply beside its base's.
    pub adapter: bool,
}

impl GateRequest<'_> {
    /// What the messages call it: the name, or "the LoRA adapter NAME".
    fn subject(&self) -> String {
        subject(self.display_name, self.adapter)
    }
}

fn subject(display_name: &str, adapter: bool) -> String {
    if adapter {
        format!("the LoRA adapter {display_name}")
    } else {
        display_name.to_string()
    }
}

/// Refuse a model whose license does not allow the declared use, then make sure every license
/// that needs acceptance has been accepted (asking on a terminal, refusing without one).
pub fn gate(settings: &Settings, req: &GateRequest) -> Result<()> {
    check_declared_use(settings, req.display_name, &req.licenses, req.adapter)?;
    let mut acceptances = Acceptances::load(settings)?;
    for lic in &req.licenses {
        let must = lic.needs_acceptance || req.force_acceptance.contains(&lic.id);
        if !must || acceptances.find(&lic.id, req.model_key).is_some() {
            continue;
        }
        if req.accept_flag {
            acceptances.record(&lic.id, req.model_key)?;
            eprintln!(
                "owrun: accepted the {} for {} (recorded in {})",
                lic.name,
                req.display_name,
                acceptances.path().display()
            );
            continue;
        }
        let interactive =
            req.may_ask && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !interactive {
            return Err(Fatal::LicenseNotAccepted(format!(
                "{} is under the {} ({}), which must be accepted before first use.\n{}\n\
                 Read it{}, then accept with `owrun license accept {}` or pass --accept-license.",
                req.subject(),
                lic.name,
                lic.id,
                wrap(&lic.summary, 78, "  "),
                if lic.url.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", lic.url)
                },
                req.display_name,
            ))
            .into());
        }
        if ask_on_terminal(&req.subject(), lic)? {
            acceptances.record(&lic.id, req.model_key)?;
        } else {
            return Err(Fatal::LicenseNotAccepted(format!(
                "license {} not accepted: {} was not downloaded or run",
                lic.id,
                req.subject()
            ))
            .into());
        }
    }
    Ok(())
}

/// With a declared commercial use, refuse any model (or LoRA adapter) whose terms do not allow
/// it, and say which conditions apply to the ones that allow it with conditions.
pub fn check_declared_use(
    settings: &Settings,
    display_name: &str,
    licenses: &[License],
    adapter: bool,
) -> Result<()> {
    if settings.declared_use != Some(DeclaredUse::Commercial) {
        return Ok(());
    }
    for lic in licenses {
        match lic.commercial {
            Commercial::Allowed => {}
            Commercial::Conditional => eprintln!(
                "owrun: note: the {} allows commercial use with conditions:\n{}",
                lic.name,
                wrap(&lic.summary, 78, "  ")
            ),
            Commercial::NotAllowed | Commercial::Unknown => {
                return Err(Fatal::LicenseForbidsUse(format!(
                    "{} is under the {} ({}), which {} commercial use, and you declared \
                     commercial use (OWRUN_USE or `use` in config.toml).\n{}",
                    subject(display_name, adapter),
                    lic.name,
                    lic.id,
                    if lic.commercial == Commercial::Unknown {
                        "owrun cannot confirm allows"
                    } else {
                        "does not allow"
                    },
                    if adapter {
                        "The model was not run with it: run it without the adapter, or with one \
                         whose license allows commercial use."
                    } else {
                        "Nothing was downloaded. Pick a model from `owrun list --license commercial`."
                    }
                ))
                .into())
            }
        }
    }
    Ok(())
}

fn ask_on_terminal(subject: &str, lic: &License) -> Result<bool> {
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "\n{subject} is under the {} ({}).\n{}",
        lic.name,
        lic.id,
        wrap(&lic.summary, 78, "  ")
    )?;
    if !lic.url.is_empty() {
        writeln!(err, "Full terms: {}", lic.url)?;
    }
    write!(err, "Do you accept these terms? [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Greedy word wrap with an indent, for license summaries on a terminal.
pub fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_are_never_commercial() {
        let l = lookup("some-custom-license");
        assert_eq!(l.commercial, Commercial::Unknown);
        assert!(!l.commercial.allows_commercial());
        assert!(l.needs_acceptance);
        assert_eq!(lookup("").id, "unknown");
    }

    #[test]
    fn catalogue_ids_are_unique_and_normalised() {
        let mut ids: Vec<_> = known_ids().collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        assert!(ids.iter().all(|id| *id == id.to_ascii_lowercase()));
        assert_eq!(lookup("Apache-2.0").commercial, Commercial::Allowed);
    }

    #[test]
    fn model_card_front_matter() {
        let card =
            "---\nlicense: other\nlicense_name: llama3.2\nlanguage: en\n---\n# Hi\nlicense: mit\n";
        assert_eq!(license_from_model_card(card).as_deref(), Some("llama3.2"));
        let card = "---\nlanguage: en\nlicense: \"apache-2.0\"\n---\n";
        assert_eq!(license_from_model_card(card).as_deref(), Some("apache-2.0"));
        assert_eq!(
            license_from_model_card("# no front matter\nlicense: mit"),
            None
        );
        assert_eq!(
            card_license_id(Some("other"), None).as_deref(),
            Some("other")
        );
    }

    #[test]
    fn wrap_keeps_words_and_width() {
        let w = wrap("aaa bbb ccc ddd", 9, "  ");
        assert_eq!(w, "  aaa bbb\n  ccc ddd");
    }
}
