//! `owrun license …`: the catalogue, one license's terms, accepting, and what was accepted.

use std::io::Write;

use anyhow::Result;

use super::print_table;
use crate::cli::LicenseCommand;
use crate::license::{self, wrap, Acceptances, License};
use crate::open::{acceptance_key, Opener};
use crate::registry::ModelRef;

pub fn run(opener: &Opener, cmd: LicenseCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        LicenseCommand::List { json } => {
            let all: Vec<License> = license::known_ids().map(license::lookup).collect();
            if json {
                serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "licenses": all }))?;
                writeln!(out)?;
                return Ok(());
            }
            let mut rows = vec![["ID", "NAME", "COMMERCIAL", "OSI", "ACCEPTANCE"]
                .map(String::from)
                .to_vec()];
            for l in &all {
                rows.push(vec![
                    l.id.clone(),
                    l.name.clone(),
                    l.commercial.label().into(),
                    if l.osi_approved { "yes" } else { "no" }.into(),
                    if l.needs_acceptance { "required" } else { "-" }.into(),
                ]);
            }
            print_table(&mut out, &rows)?;
        }
        LicenseCommand::Show { name } => {
            let licenses = if license::is_known(&name) {
                vec![license::lookup(&name)]
            } else {
                let model = opener.resolve(&name)?;
                terms(opener, &model)?
                    .into_iter()
                    .flat_map(|(_, _, licenses)| licenses)
                    .collect()
            };
            for l in licenses {
                writeln!(out, "{} ({})", l.name, l.id)?;
                writeln!(out, "  commercial use: {}", l.commercial.label())?;
                if !l.url.is_empty() {
                    writeln!(out, "  terms: {}", l.url)?;
                }
                writeln!(out, "{}", wrap(&l.summary, 96, "  "))?;
            }
        }
        LicenseCommand::Accept { model } => {
            let model_ref = opener.resolve(&model)?;
            let mut acceptances = Acceptances::load(&opener.settings)?;
            for (name, key, licenses) in terms(opener, &model_ref)? {
                for l in licenses {
                    eprintln!("{} ({}):\n{}", l.name, l.id, wrap(&l.summary, 78, "  "));
                    if !l.url.is_empty() {
                        eprintln!("  Full terms: {}", l.url);
                    }
                    acceptances.record(&l.id, &key)?;
                    eprintln!("owrun: accepted the {} for {name}", l.name);
                }
            }
        }
        LicenseCommand::Accepted { json } => {
            let acceptances = Acceptances::load(&opener.settings)?;
            if json {
                serde_json::to_writer_pretty(
                    &mut out,
                    &serde_json::json!({ "accepted": acceptances.all() }),
                )?;
                writeln!(out)?;
                return Ok(());
            }
            let mut rows = vec![["LICENSE", "MODEL", "DATE"].map(String::from).to_vec()];
            for a in acceptances.all() {
                rows.push(vec![a.license.clone(), a.model.clone(), a.date.clone()]);
            }
            print_table(&mut out, &rows)?;
        }
    }
    Ok(())
}

/// The terms that apply to running `model`, as (name, acceptance key, licenses): its own, and
/// for an adapter entry its base's too. A LoRA adapter (a folder, a file, a pulled `hf:` repo)
/// is judged by its own files; an `hf:` repo with nothing on disk by its model card on the Hub.
fn terms(opener: &Opener, model: &ModelRef) -> Result<Vec<(String, String, Vec<License>)>> {
    let adapter = opener.adapter_on_disk_named(model);
    let own = match (adapter, model) {
        (Some(a), _) => opener.adapter_licenses(&a, opener.adapter_on_disk(&a).as_deref()),
        (None, ModelRef::Hub { repo, revision, .. })
            if opener.store().repo(repo).snapshot(revision).is_none() =>
        {
            vec![opener.hub_card_license(repo, revision)?]
        }
        (None, _) => opener.licenses(model, opener.local_snapshot(model).as_ref()),
    };
    let mut all = vec![(model.display_name(), acceptance_key(model), own)];
    if let Ok(base) = opener.base_of(model) {
        let licenses = opener.licenses(&base, opener.local_snapshot(&base).as_ref());
        all.push((base.display_name(), acceptance_key(&base), licenses));
    }
    Ok(all)
}
