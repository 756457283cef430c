//! `owrun kld MODEL --dtype D`: how far a model in a cheaper format drifts from its f32 self
//! over a text (KL divergence, top-1 agreement, perplexity of both), as llama-perplexity's
//! KL-divergence mode reports it.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::json;

use super::display::show_notes;
use super::print_table;
use crate::cli::KldArgs;
use crate::engine::quality::{compare, log_probs};
use crate::engine::{DTypeChoice, KvType};
use crate::error::usage;
use crate::open::{LoadChoices, Opener};

/// A text when none is given: plain English prose, about 300 tokens for most tokenizers, with
/// the vocabulary of the small story models as well as of larger ones.
pub const DEFAULT_TEXT: &str = include_str!("../../assets/kld_text.txt");

pub fn run(opener: &Opener, args: &KldArgs) -> Result<()> {
    if args.chunk < 2 {
        return Err(usage("--chunk must be at least 2 tokens"));
    }
    let text = match &args.text {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => DEFAULT_TEXT.to_string(),
    };
    let mut choices = args.load.choices()?;
    args.adapters.choose(&mut choices);
    let adapters = args.adapters.specs()?;
    let model = opener.resolve(&args.model)?;
    let (path, adapters) = opener.ready_with_adapters(&model, &adapters, args.accept_license)?;
    choices.adapters = adapters;

    // The reference: the same weights in f32, on the same device, run first and dropped; its
    // adapters run beside the weights, so what --lora-merge changes is measured too.
    let reference_choices = LoadChoices {
        dtype: DTypeChoice::F32,
        quant: None,
        kv_type: KvType::F32,
        merge_adapters: false,
        ..choices.clone()
    };
    let mut reference = opener.load(&path, &reference_choices)?;
    show_notes(&reference);
    let tokens = reference.text.encode(&text, true)?;
    if tokens.len() < 2 {
        return Err(usage("the text is too short: it needs at least 2 tokens"));
    }
    let chunk = args.chunk.min(reference.model.context());
    let want = log_probs(&mut reference.model, &tokens, chunk)?;
    drop(reference);

    let mut test = opener.load(&path, &choices)?;
    show_notes(&test);
    let got = log_probs(&mut test.model, &tokens, chunk)?;
    let c = compare(&want, &got, &tokens, chunk);
    let format = match test.quant {
        Some(q) => q.name().to_string(),
        None => format!("{:?}", test.dtype).to_lowercase(),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json!({
            "model": model.display_name(),
            "format": format,
            "kv_type": choices.kv_type.name(),
            "reference": "f32 (f32 KV cache)",
            "tokens": tokens.len(),
            "chunk": chunk,
            "comparison": c,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    let rows = vec![
        [
            "model",
            "format",
            "KV cache",
            "positions",
            "mean KLD",
            "p99 KLD",
            "max KLD",
            "same top-1",
            "PPL f32",
            "PPL",
        ]
        .map(String::from)
        .to_vec(),
        vec![
            model.display_name(),
            format,
            choices.kv_type.name().to_string(),
            c.positions.to_string(),
            format!("{:.6} ± {:.6}", c.mean_kld, c.mean_kld_error),
            format!("{:.6}", c.p99_kld),
            format!("{:.6}", c.max_kld),
            format!("{:.2}%", 100.0 * c.top1_agreement),
            format!("{:.4}", c.reference_perplexity),
            format!("{:.4}", c.test_perplexity),
        ],
    ];
    print_table(&mut out, &rows)?;
    Ok(())
}
