//! `owrun quantize MODEL --quant Q -o FILE`: a model as a GGUF file llama.cpp loads.

use std::time::Instant;

use anyhow::Result;

use super::run::{is_gguf, ready_model};
use super::{licenses_of, Ctx};
use crate::cli::QuantizeArgs;
use crate::engine::gguf_write;
use crate::error::usage;
use crate::store::{format_bytes, weight_files};

pub fn run(ctx: &Ctx, args: &QuantizeArgs) -> Result<()> {
    if args.output.exists() && !args.force {
        return Err(usage(format!(
            "{} exists; add --force to replace it",
            args.output.display()
        )));
    }
    let model = ctx.resolve(&args.model)?;
    let dir = ready_model(ctx, &model, args.accept_license)?;
    if is_gguf(&dir) {
        return Err(usage(format!(
            "{} is a GGUF file already; owrun quantize reads safetensors models",
            dir.display()
        )));
    }
    let started = Instant::now();
    let snapshot = ctx.local_snapshot(&model);
    let licenses: Vec<String> = licenses_of(&model, snapshot.as_ref())
        .into_iter()
        .map(|l| l.id)
        .filter(|id| id != "unknown")
        .collect();
    let license = (!licenses.is_empty()).then(|| licenses.join("+"));
    let written = gguf_write::write(
        &dir,
        &weight_files(&dir),
        args.quant,
        license.as_deref(),
        &args.output,
    )?;
    let types: Vec<String> = written
        .types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    eprintln!(
        "owrun: wrote {} ({}, {} tensors: {}) in {:.1}s",
        args.output.display(),
        format_bytes(written.bytes),
        written.tensors,
        types.join(", "),
        started.elapsed().as_secs_f64()
    );
    // The file's path on stdout, for scripts.
    println!("{}", args.output.display());
    Ok(())
}
