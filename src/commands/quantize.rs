//! `owrun quantize MODEL --quant Q [--lora A] -o FILE`: a model (with LoRA adapters merged in)
//! as a GGUF file llama.cpp loads.

use std::time::Instant;

use anyhow::Result;

use crate::cli::{lora_specs, QuantizeArgs};
use crate::engine::format::gguf::is_gguf_file;
use crate::engine::model::lora::Unfit;
use crate::engine::{export, LoadError};
use crate::error::usage;
use crate::open::Opener;
use crate::store::{format_bytes, weight_files};

pub fn run(opener: &Opener, args: &QuantizeArgs) -> Result<()> {
    if args.output.exists() && !args.force {
        return Err(usage(format!(
            "{} exists; add --force to replace it",
            args.output.display()
        )));
    }
    let model = opener.resolve(&args.model)?;
    let dir = opener.ready(&model, args.accept_license)?;
    if is_gguf_file(&dir) {
        return Err(usage(format!(
            "{} is a GGUF file already; owrun quantize reads safetensors models",
            dir.display()
        )));
    }
    let started = Instant::now();
    let snapshot = opener.local_snapshot(&model);
    let licenses: Vec<String> = opener
        .licenses(&model, snapshot.as_ref())
        .into_iter()
        .map(|l| l.id)
        .filter(|id| id != "unknown")
        .collect();
    let license = (!licenses.is_empty()).then(|| licenses.join("+"));
    let adapters = lora_specs(&args.lora)?;
    let written = export::write(
        &dir,
        &weight_files(&dir),
        args.quant,
        license.as_deref(),
        &adapters,
        &args.output,
    )
    .map_err(|e| {
        // An adapter that does not fit this model, a model GGUF cannot hold: the user's to
        // change.
        if e.downcast_ref::<Unfit>().is_some() || e.downcast_ref::<LoadError>().is_some() {
            usage(e.to_string())
        } else {
            e
        }
    })?;
    for note in &written.notes {
        eprintln!("owrun: {note}");
    }
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
