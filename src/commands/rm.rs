//! `owrun rm NAME`: delete a pulled model from the store.

use anyhow::{bail, Result};

use crate::cli::RmArgs;
use crate::error::usage;
use crate::open::Opener;
use crate::registry::ModelRef;
use crate::store::format_bytes;

pub fn run(opener: &Opener, args: &RmArgs) -> Result<()> {
    let model = opener.resolve(&args.model)?;
    let repo = match &model {
        ModelRef::Local { path } => {
            return Err(usage(format!(
                "{} is a directory of yours: owrun only removes models it pulled into {}",
                path.display(),
                opener.settings.hub_cache.display()
            )))
        }
        ModelRef::Registry { entry, .. } if entry.builtin.is_some() => {
            return Err(usage(format!(
                "{} is built into owrun: there is nothing to remove",
                model.display_name()
            )))
        }
        _ => model
            .hub_repo()
            .map(|(r, _)| r.to_string())
            .unwrap_or_default(),
    };
    let repo_store = opener.store().repo(&repo);
    if !repo_store.exists() {
        bail!(
            "{} is not pulled (nothing in {})",
            model.display_name(),
            repo_store.dir().display()
        );
    }
    let freed = repo_store.remove()?;
    eprintln!(
        "owrun: removed {} ({repo}): freed {}",
        model.display_name(),
        format_bytes(freed)
    );
    if let Ok(base) = opener.base_of(&model) {
        eprintln!(
            "owrun: that was its LoRA adapter; its base {0} stays (`owrun rm {0}` removes it)",
            base.display_name()
        );
    }
    Ok(())
}
