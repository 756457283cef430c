//! `owrun license …`: the catalogue, one license's terms, accepting, and what was accepted.

use std::io::Write;

use anyhow::Result;

use super::print_table;
use crate::cli::LicenseCommand;
use crate::license::{self, wrap, Acceptances, License};
use crate::open::{acceptance_key, Opener};

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
                let snapshot = opener.local_snapshot(&model);
                opener.licenses(&model, snapshot.as_ref())
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
            let snapshot = opener.local_snapshot(&model_ref);
            let key = acceptance_key(&model_ref);
            let mut acceptances = Acceptances::load(&opener.settings)?;
            for l in opener.licenses(&model_ref, snapshot.as_ref()) {
                eprintln!("{} ({}):\n{}", l.name, l.id, wrap(&l.summary, 78, "  "));
                if !l.url.is_empty() {
                    eprintln!("  Full terms: {}", l.url);
                }
                acceptances.record(&l.id, &key)?;
                eprintln!(
                    "owrun: accepted the {} for {}",
                    l.name,
                    model_ref.display_name()
                );
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
