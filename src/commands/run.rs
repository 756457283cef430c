//! `owrun run MODEL [PROMPT]`: one prompt in, generated text streamed to stdout.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use serde_json::json;

use super::display::{generate_shown, note_folded_system, show_notes, Shown};
use super::input::{read_messages, read_prompt};
use crate::cli::RunArgs;
use crate::engine::generate::decoding::GenerateParams;
use crate::engine::generate::sampler::Sampler;
use crate::engine::text::template::Message;
use crate::error::usage;
use crate::open::Opener;

pub fn run(opener: &Opener, args: &RunArgs) -> Result<()> {
    if args.raw && (args.system.is_some() || args.messages.is_some()) {
        return Err(usage(
            "--raw sends the prompt as it is: it cannot be combined with --system or --messages",
        ));
    }
    let prompt = read_prompt(&args.prompt)?;
    let mut messages = match &args.messages {
        Some(path) => read_messages(path)?,
        None => Vec::new(),
    };
    if let Some(system) = &args.system {
        messages.retain(|m| m.role != "system");
        messages.insert(0, Message::new("system", system.clone()));
    }
    if !prompt.is_empty() {
        messages.push(Message::new("user", prompt.clone()));
    }
    if !messages.iter().any(|m| m.role == "user") {
        return Err(usage(
            "no prompt: give it as an argument, on stdin, or in --messages",
        ));
    }

    let mut choices = args.load.choices()?;
    args.adapters.choose(&mut choices);
    let adapters = args.adapters.specs()?;
    let model = opener.resolve(&args.model)?;
    let (path, adapters) = opener.ready_with_adapters(&model, &adapters, args.accept_license)?;
    choices.adapters = adapters;
    let mut engine = opener.load(&path, &choices)?;
    show_notes(&engine);

    let prompt = engine.text.prompt(&messages, args.raw)?;
    if prompt.folded_system {
        note_folded_system();
    }
    let tokens = prompt.tokens;
    let context = engine.model.context();
    if tokens.len() >= context {
        return Err(usage(format!(
            "the prompt is {} tokens, but {} has a context window of {context} tokens: shorten \
             it by at least {} tokens",
            tokens.len(),
            model.display_name(),
            tokens.len() + 1 - context
        )));
    }

    let sampling = args.sampling.overrides().apply(engine.sampling.clone());
    let sampler = Sampler::new(sampling);
    let eos = engine.text.eos.clone();
    let params = GenerateParams {
        max_tokens: args.sampling.max_tokens,
        stop: &args.sampling.stop,
        eos: &eos,
        cancel: None,
    };
    let mut out = std::io::stdout().lock();
    let mut shown = Shown::new(
        !args.json,
        args.hide_thinking,
        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        prompt.opens_thinking,
    );
    let seq = engine.model.new_sequence();
    let gen = generate_shown(
        &mut engine,
        seq,
        sampler,
        &tokens,
        &params,
        &mut shown,
        &mut out,
        &mut |_| {},
    )?;
    let mut timings = gen.timings.clone();
    timings.load_s = engine.load_s;
    if args.json {
        let doc = json!({
            "model": model.display_name(),
            "text": shown.answer,
            "reasoning": shown.reasoning_seen.then(|| shown.reasoning.trim().to_string()),
            "tokens": gen.tokens,
            "prompt_tokens": tokens,
            "finish_reason": gen.finish,
            "usage": {"prompt_tokens": tokens.len(), "completion_tokens": gen.tokens.len()},
            "timings": timings,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else if std::io::stdout().is_terminal() && !shown.answer.ends_with('\n') {
        writeln!(out)?;
    }
    out.flush()?;
    if args.verbose {
        eprintln!(
            "owrun: {:?} {:?}: {} prompt tokens, {} generated ({:?}); load {:.2}s, time to first \
             token {:.3}s, prefill {:.1} tok/s, decode {:.1} tok/s",
            engine.device.location(),
            engine.dtype,
            tokens.len(),
            gen.tokens.len(),
            gen.finish,
            timings.load_s,
            timings.time_to_first_token_s,
            timings.prefill_tokens_per_s,
            timings.decode_tokens_per_s
        );
    }
    Ok(())
}
