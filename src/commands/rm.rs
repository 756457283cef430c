//! `owrun rm NAME`: delete a pulled model from the store.

use anyhow::{bail, Result};

use super::Ctx;
use crate::cli::RmArgs;
use crate::error::usage;
use crate::registry::ModelRef;
use crate::store::format_bytes;

pub fn run(ctx: &Ctx, args: &RmArgs) -> Result<()> {
    let model = ctx.resolve(&args.model)?;
    let repo = match &model {
        ModelRef::Local { path } => {
            return Err(usage(format!(
                "{} is a directory of yours: owrun only removes models it pulled into {}",
                path.display(),
                ctx.settings.hub_cache.display()
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
    let repo_store = ctx.store().repo(&repo);
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
    Ok(())
}
