//! `owrun bench`: prefill and decode speed, reported the way llama-bench does (pp N / tg N,
//! mean ± standard deviation over repetitions), so numbers compare across runners.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::display::show_notes;
use super::print_table;
use crate::cli::BenchArgs;
use crate::engine::generate::sampler::argmax;
use crate::error::usage;
use crate::memory;
use crate::open::Opener;
use crate::store::format_bytes as human_bytes;

pub fn run(opener: &Opener, args: &BenchArgs) -> Result<()> {
    if args.repetitions == 0 || args.prompt_tokens == 0 || args.gen_tokens == 0 {
        return Err(usage("-p, -n and -r must be at least 1"));
    }
    let mut choices = args.load.choices()?;
    args.adapters.choose(&mut choices);
    let adapters = args.adapters.specs()?;
    let model = opener.resolve(&args.model)?;
    let (path, adapters) = opener.ready_with_adapters(&model, &adapters, args.accept_license)?;
    choices.adapters = adapters;
    let mut engine = opener.load(&path, &choices)?;
    show_notes(&engine);
    let context = engine.model.context();
    let depth = args.depth;
    if depth + args.prompt_tokens.max(args.gen_tokens + 1) > context {
        return Err(usage(format!(
            "-d {depth} plus -p {} or -n {} exceeds the model's context of {context} tokens \
             (--ctx N sets the context)",
            args.prompt_tokens, args.gen_tokens
        )));
    }
    // A fixed, non-special token sequence spread over the vocabulary: the depth's tokens, then
    // the prompt's.
    let vocab = engine.text.tokenizer.get_vocab_size(true).max(4) as u64;
    let tokens: Vec<u32> = (0..(depth + args.prompt_tokens) as u64)
        .map(|i| (3 + (i * 7919) % (vocab - 3)) as u32)
        .collect();
    let (filler, prompt) = tokens.split_at(depth);

    let rss_after_load = memory::resident_bytes();
    let seq = engine.model.new_sequence();
    // One untimed forward first, as llama-bench warms up: one-time work (kernel tables, candle's
    // repacking of quantized matrices) is not speed.
    engine.model.forward(seq, &prompt[..prompt.len().min(32)])?;
    engine.model.truncate(seq, 0)?;
    // Back to `depth` tokens in the cache, untimed: a cut inside what the cache holds, or the
    // filler fed again where a sliding window's ring has moved past it.
    let at_depth = |model: &mut crate::engine::model::Model| -> Result<()> {
        let kept = model.truncate(seq, depth)?;
        if kept < depth {
            model.forward(seq, &filler[kept..])?;
        }
        Ok(())
    };
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..args.repetitions {
        at_depth(&mut engine.model)?;
        let t = Instant::now();
        engine.model.forward(seq, prompt)?;
        pp.push(prompt.len() as f64 / t.elapsed().as_secs_f64());

        // Decode from a one-token prompt, as llama-bench's tg test does.
        at_depth(&mut engine.model)?;
        let mut logits = engine.model.forward(seq, &prompt[..1])?;
        let t = Instant::now();
        for _ in 0..args.gen_tokens {
            let next = argmax(&logits);
            logits = engine.model.forward(seq, &[next])?;
        }
        tg.push(args.gen_tokens as f64 / t.elapsed().as_secs_f64());
    }
    let weight_bytes = engine.model.decoder.weight_bytes;
    let cache_bytes = engine.model.cache_bytes();
    let peak = memory::peak_resident_bytes();
    let (pp_mean, pp_sd) = mean_sd(&pp);
    let (tg_mean, tg_sd) = mean_sd(&tg);
    let backend = format!("{:?}", engine.device.location()).to_lowercase();
    let dtype = match engine.quant {
        Some(q) => q.name().to_string(),
        None => format!("{:?}", engine.dtype).to_lowercase(),
    };
    // llama-bench's names: "pp512", or "pp512 @ d4096" at a depth.
    let at = if depth > 0 {
        format!(" @ d{depth}")
    } else {
        String::new()
    };
    let (pp_name, tg_name) = (
        format!("pp{}{at}", args.prompt_tokens),
        format!("tg{}{at}", args.gen_tokens),
    );
    let kv_type = engine.model.decoder.kv_type.name();
    let kv_per_token = engine.model.cache_bytes_per_token();
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json!({
            "model": model.display_name(),
            "backend": backend,
            "dtype": dtype,
            "repetitions": args.repetitions,
            "weight_bytes": weight_bytes,
            "kv_type": kv_type,
            "kv_bytes_per_token": kv_per_token,
            "depth": depth,
            "kv_cache_bytes": cache_bytes,
            "rss_after_load_bytes": rss_after_load,
            "peak_rss_bytes": peak,
            "tests": [
                {"test": pp_name, "tokens_per_s": pp_mean, "sd": pp_sd, "samples": pp},
                {"test": tg_name, "tokens_per_s": tg_mean, "sd": tg_sd, "samples": tg},
            ],
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut rows = vec![["model", "size", "backend", "dtype", "test", "t/s"]
        .map(String::from)
        .to_vec()];
    for (test, mean, sd) in [(pp_name, pp_mean, pp_sd), (tg_name, tg_mean, tg_sd)] {
        rows.push(vec![
            model.display_name(),
            human_bytes(weight_bytes as u64),
            backend.clone(),
            dtype.clone(),
            test,
            format!("{mean:.2} ± {sd:.2}"),
        ]);
    }
    print_table(&mut out, &rows)?;
    // Memory goes to stderr: stdout stays the table llama-bench users know.
    let show = |b: Option<u64>| b.map_or("unknown".to_string(), human_bytes);
    eprintln!(
        "owrun: memory: weights {}, KV cache {} ({kv_type}, {} per token), resident after load \
         {}, peak resident {} ({:.2}x weights + KV cache)",
        human_bytes(weight_bytes as u64),
        human_bytes(cache_bytes as u64),
        human_bytes(kv_per_token as u64),
        show(rss_after_load),
        show(peak),
        peak.map_or(f64::NAN, |p| p as f64 / (weight_bytes + cache_bytes) as f64)
    );
    Ok(())
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}
