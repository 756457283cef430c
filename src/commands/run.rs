//! `owrun run MODEL [PROMPT]`: one prompt in, generated text streamed to stdout.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::display::{generate_shown, note_folded_system, Shown};
use super::{acceptance_key, licenses_of, pull, Ctx};
use crate::cli::DTypeArg;
use crate::cli::{LoadArgs, RunArgs, SamplingArgs};
use crate::engine::generate::GenerateParams;
use crate::engine::quant::Scheme;
use crate::engine::sampler::{Overrides, Sampler, SamplingParams};
use crate::engine::template::Message;
use crate::engine::DeviceChoice;
use crate::engine::{Engine, LoadError, LoadOptions};
use crate::error::usage;
use crate::license::{self, GateRequest};
use crate::registry::ModelRef;
use crate::store::format_bytes;
use sha2::Digest;

pub fn run(ctx: &Ctx, args: &RunArgs) -> Result<()> {
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

    let model = ctx.resolve(&args.model)?;
    let dir = ready_model(ctx, &model, args.accept_license)?;
    let mut engine = load_engine(ctx, &dir, &args.load)?;

    let prompt = engine.text.prompt(&messages, args.raw)?;
    if prompt.folded_system {
        note_folded_system();
    }
    let tokens = prompt.tokens;
    let context = engine.config.context;
    if tokens.len() >= context {
        return Err(usage(format!(
            "the prompt is {} tokens, but {} has a context window of {context} tokens: shorten \
             it by at least {} tokens",
            tokens.len(),
            model.display_name(),
            tokens.len() + 1 - context
        )));
    }

    let sampling = sampling_params(engine.text.sampling.clone(), &args.sampling);
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

/// The folder to run from: a local directory, or the store's snapshot (pulled first, through
/// the license gate, when it is not complete). A pulled model still passes the gate.
pub fn ready_model(ctx: &Ctx, model: &ModelRef, accept_license: bool) -> Result<PathBuf> {
    if let Some(snapshot) = ctx.local_snapshot(model) {
        let missing = if is_gguf(&snapshot.dir) || model.gguf().is_some() {
            Vec::new()
        } else {
            crate::store::missing_files(&snapshot.dir)
        };
        if !missing.is_empty() {
            return Err(usage(format!(
                "{} cannot run: it lacks {}",
                snapshot.dir.display(),
                missing.join(", ")
            )));
        }
        gate_pulled(ctx, model, &snapshot, accept_license, true)?;
        return gguf_or_folder(model, snapshot.dir);
    }
    eprintln!(
        "owrun: {} is not pulled yet; pulling it",
        model.display_name()
    );
    let dir = pull::pull(ctx, model, accept_license)?;
    gguf_or_folder(model, dir)
}

/// The license gate for a model on disk. Files the user already has (a local directory) are
/// checked only against a declared commercial use. `may_ask`: on a terminal, ask for acceptance.
pub fn gate_pulled(
    ctx: &Ctx,
    model: &ModelRef,
    snapshot: &crate::store::Snapshot,
    accept_license: bool,
    may_ask: bool,
) -> Result<()> {
    let licenses = licenses_of(model, Some(snapshot));
    match model {
        ModelRef::Local { .. } => {
            license::check_declared_use(&ctx.settings, &model.display_name(), &licenses)
        }
        _ => license::gate(
            &ctx.settings,
            &GateRequest {
                display_name: &model.display_name(),
                model_key: &acceptance_key(model),
                licenses,
                force_acceptance: Vec::new(),
                accept_flag: accept_license,
                may_ask,
            },
        ),
    }
}

/// For `NAME:QUANT` and `hf:repo:QUANT`, the (first) GGUF file of that quantization in the
/// snapshot; else the snapshot folder.
pub fn gguf_or_folder(model: &ModelRef, dir: PathBuf) -> Result<PathBuf> {
    let Some(tag) = model.gguf() else {
        return Ok(dir);
    };
    crate::store::gguf_files_in(&dir, tag)
        .into_iter()
        .next()
        .with_context(|| format!("{} has no {tag} GGUF file", dir.display()))
}

pub fn load_engine(ctx: &Ctx, dir: &std::path::Path, load: &LoadArgs) -> Result<Engine> {
    configure_threads(load)?;
    let engine = open_engine(ctx, dir, load)?;
    for note in &engine.notes {
        eprintln!("owrun: {note}");
    }
    Ok(engine)
}

/// The thread count of every CPU pool, from --threads (default: every core). Set once, before
/// any pool starts (the server calls it before its threads exist).
pub fn configure_threads(load: &LoadArgs) -> Result<()> {
    if let Some(n) = load.threads {
        if n == 0 {
            return Err(usage("--threads must be at least 1"));
        }
        // candle's CPU kernels size their thread pools from this variable, and rayon's global
        // pool (owrun's own kernels) is built from it on first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    } else if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // candle's quantized matmuls otherwise use one thread per physical core, which is one
        // on a 2-vCPU machine; use every core, as the rest of owrun does.
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
    Ok(())
}

/// Load the model in `dir` (a folder or a GGUF file) as `load` says; its notes are left for
/// the caller to show.
pub fn open_engine(ctx: &Ctx, dir: &std::path::Path, load: &LoadArgs) -> Result<Engine> {
    let quant = load.quant.or_else(|| auto_quant(dir, load));
    let options = LoadOptions {
        device: load.device,
        dtype: load.dtype.into(),
        quant,
        quant_cache: quant.map(|q| quant_cache_path(ctx, dir, q)),
        memory_available: crate::memory::available_bytes(),
    };
    let loaded = if is_gguf(dir) {
        Engine::load_gguf(dir, &options)
    } else {
        Engine::load(dir, &crate::store::weight_files(dir), &options)
    };
    let engine = loaded.map_err(|e| {
        // A device that is not there is the user's choice to revisit, not the model's fault.
        if let Some(LoadError::DeviceUnavailable(..)) = e.downcast_ref::<LoadError>() {
            usage(format!("--device: {e}"))
        } else {
            e.context(format!("cannot load the model in {}", dir.display()))
        }
    })?;
    crate::memory::keep_freed_memory();
    Ok(engine)
}

/// On the CPU, a model that does not fit in the memory available in its own dtype runs quantized:
/// Q8_0 when that fits, else Q4_K_M, said once on stderr. Only when the user chose neither a
/// dtype nor a quantization.
fn auto_quant(dir: &std::path::Path, load: &LoadArgs) -> Option<Scheme> {
    let gpu = candle_core::utils::cuda_is_available() || candle_core::utils::metal_is_available();
    let cpu = load.device == DeviceChoice::Cpu || (load.device == DeviceChoice::Auto && !gpu);
    if !cpu || load.dtype != DTypeArg::Auto || is_gguf(dir) {
        return None;
    }
    let weights: u64 = crate::store::weight_files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let available = crate::memory::available_bytes()?;
    // Room for the KV cache, activations and the program: a tenth on top of the weights.
    let fits = |bytes: f64| bytes * 1.1 <= available as f64;
    if weights == 0 || fits(weights as f64) {
        return None;
    }
    // Bits per weight of the checkpoint (f32 or 16-bit) and of the quantized forms.
    let stored_bits = if crate::engine::stores_32_bit(dir) {
        32.0
    } else {
        16.0
    };
    let q8 = weights as f64 * 8.5 / stored_bits;
    let scheme = if fits(q8) { Scheme::Q8_0 } else { Scheme::Q4KM };
    eprintln!(
        "owrun: the weights ({}) do not fit in the {} of memory available: running them \
         quantized to {} (--quant or --dtype chooses otherwise)",
        format_bytes(weights),
        format_bytes(available),
        scheme.name()
    );
    Some(scheme)
}

/// A GGUF file (rather than a model folder).
pub fn is_gguf(path: &std::path::Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Where a model's weights quantized under `scheme` are kept: beside the model in the store
/// (`models--owner--name/owrun/<commit>.<scheme>.gguf`, so `owrun rm` removes them too), or
/// for a local directory under owrun's data directory, named after the directory's path.
fn quant_cache_path(ctx: &Ctx, dir: &std::path::Path, scheme: Scheme) -> PathBuf {
    let file = |stem: &str| format!("{stem}.{}.gguf", scheme.name().to_ascii_lowercase());
    let snapshots = dir.parent();
    if let (Some(commit), Some(repo)) = (
        dir.file_name().and_then(|c| c.to_str()),
        snapshots
            .filter(|s| s.file_name().is_some_and(|n| n == "snapshots"))
            .and_then(|s| s.parent()),
    ) {
        return repo.join("owrun").join(file(commit));
    }
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let digest = crate::hub::hex(&sha2::Sha256::digest(
        canonical.to_string_lossy().as_bytes(),
    ));
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    ctx.settings
        .data_dir
        .join("quantized")
        .join(file(&format!("{name}-{}", &digest[..16])))
}

/// The model's defaults, overridden by the flags the user gave.
pub fn sampling_params(p: SamplingParams, a: &SamplingArgs) -> SamplingParams {
    Overrides {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
        ..Overrides::default()
    }
    .apply(p)
}

/// Stdin (when it is not a terminal), then the argument words.
fn read_prompt(words: &[String]) -> Result<String> {
    let mut parts = Vec::new();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the prompt from stdin")?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if !text.is_empty() {
            parts.push(text.to_string());
        }
    }
    if !words.is_empty() {
        parts.push(words.join(" "));
    }
    Ok(parts.join("\n\n"))
}

pub fn read_messages(path: &std::path::Path) -> Result<Vec<Message>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let messages: Vec<Message> = serde_json::from_str(&text).map_err(|e| {
        usage(format!(
            "{}: expected a JSON array of {{\"role\", \"content\"}} objects: {e}",
            path.display()
        ))
    })?;
    for m in &messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(usage(format!(
                "{}: unknown role {:?} (expected system, user, assistant or tool)",
                path.display(),
                m.role
            )));
        }
    }
    Ok(messages)
}
