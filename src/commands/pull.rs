//! `owrun pull NAME`: license gate, then the model's files into the store.

use anyhow::Result;

use crate::cli::PullArgs;
use crate::open::pull::pull;
use crate::open::Opener;

pub fn run(ctx: &Opener, args: &PullArgs) -> Result<()> {
    let model = ctx.resolve(&args.model)?;
    pull(ctx, &model, args.accept_license).map(|_| ())
}
