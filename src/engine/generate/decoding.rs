//! One sequence's decoding ([`Decoding`]: sampler, stop strings, limit, streaming detokenizer,
//! an optional JSON constraint), and the generation loop that run and chat drive it with
//! ([`generate`]): prefill, then one token at a time until an end-of-sequence token, a stop
//! string, the token limit or the end of the context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::constrain::JsonConstraint;
use super::sampler::Sampler;
use super::stops::StopMatcher;
use crate::engine::model::{Model, SeqId};
use crate::engine::text::detok::Detokenizer;
use crate::engine::text::token_texts::TokenTexts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// The token limit or the end of the context window.
    Length,
    /// The user interrupted it (Ctrl-C in a chat).
    Cancelled,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub load_s: f64,
    pub time_to_first_token_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// How many of `tokens` the model has been fed (is in its KV cache): the last one sampled
    /// is not fed when generation ends on the token limit or a stop string.
    pub fed: usize,
    pub finish: Finish,
    pub timings: Timings,
}

pub struct GenerateParams<'a> {
    /// Upper bound on new tokens (the context window bounds it too).
    pub max_tokens: Option<usize>,
    pub stop: &'a [String],
    pub eos: &'a [u32],
    /// Set from elsewhere (a Ctrl-C handler) to stop after the current token.
    pub cancel: Option<&'a AtomicBool>,
}

/// One sequence's generation state after its prompt: the sampler, end-of-sequence ids, stop
/// strings, the token limit and the streaming detokenizer. `generate` drives it for run and chat;
/// the server drives one per client, its forwards batched with the others'.
pub struct Decoding<'a> {
    sampler: Sampler,
    eos: &'a [u32],
    stops: StopMatcher,
    detok: Detokenizer<'a>,
    /// Prompt and generated tokens (the penalties look at them).
    history: Vec<u32>,
    pub tokens: Vec<u32>,
    limit: usize,
    /// Output held to a JSON document (response_format).
    constraint: Option<(JsonConstraint, &'a TokenTexts)>,
}

/// What one sampled token did.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token sampled (None when it was an end-of-sequence token).
    pub token: Option<u32>,
    /// Text that is final now (stop strings cut, what could start one held back).
    pub text: String,
    /// Generation ended with this token; else feed `token` and call `next` again.
    pub finish: Option<Finish>,
}

impl<'a> Decoding<'a> {
    /// `limit`: most tokens to generate (the caller bounds it by the room left in the context).
    pub fn new(
        tokenizer: &'a Tokenizer,
        sampler: Sampler,
        prompt: &[u32],
        stop: &[String],
        eos: &'a [u32],
        limit: usize,
    ) -> Self {
        Decoding {
            sampler,
            eos,
            stops: StopMatcher::new(stop.to_vec()),
            detok: Detokenizer::new(tokenizer, prompt),
            history: prompt.to_vec(),
            tokens: Vec::new(),
            limit,
            constraint: None,
        }
    }

    /// Hold the output to a JSON document: tokens that would break it are never sampled, and
    /// end-of-sequence comes only once it is whole.
    pub fn constrain(&mut self, constraint: JsonConstraint, texts: &'a TokenTexts) {
        self.constraint = Some((constraint, texts));
    }

    /// The limit allows no token at all.
    pub fn is_exhausted(&self) -> bool {
        self.tokens.len() >= self.limit
    }

    /// Sample the next token from `logits` (changed in place by the penalties).
    pub fn next(&mut self, logits: &mut [f32]) -> Result<Sampled> {
        if let Some((c, texts)) = &self.constraint {
            if !c.mask(texts, self.eos, logits) {
                // Nothing may follow (the vocabulary cannot continue the document).
                return Ok(Sampled {
                    token: None,
                    text: self.flush()?,
                    finish: Some(Finish::Stop),
                });
            }
        }
        let next = self.sampler.sample(logits, &self.history);
        if let Some((c, texts)) = &mut self.constraint {
            if !self.eos.contains(&next) {
                c.feed(texts.text(next).unwrap_or_default());
            }
        }
        if self.eos.contains(&next) {
            return Ok(Sampled {
                token: None,
                text: self.flush()?,
                finish: Some(Finish::Stop),
            });
        }
        self.tokens.push(next);
        self.history.push(next);
        let piece = self.detok.push(next)?;
        let (mut text, stopped) = self.stops.feed(&piece);
        let finish = if stopped {
            Some(Finish::Stop)
        } else if self.tokens.len() >= self.limit {
            text.push_str(&self.flush()?);
            Some(Finish::Length)
        } else {
            None
        };
        Ok(Sampled {
            token: Some(next),
            text,
            finish,
        })
    }

    /// Text still held back (an unfinished character, a possible stop string's start), for a
    /// generation that ends without a stop string.
    pub fn flush(&mut self) -> Result<String> {
        if self.stops.stopped {
            return Ok(String::new());
        }
        let rest = self.detok.finish()?;
        let (ready, _) = self.stops.feed(&rest);
        Ok(format!("{ready}{}", self.stops.flush()))
    }
}

/// Append `prompt` to the sequence `seq` and generate after it, calling `emit` with text as
/// soon as it is final. Returns everything generated.
pub fn generate(
    model: &mut Model,
    seq: SeqId,
    tokenizer: &Tokenizer,
    sampler: Sampler,
    prompt: &[u32],
    params: &GenerateParams,
    emit: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let room = model
        .context()
        .saturating_sub(model.len(seq) + prompt.len());
    let limit = params.max_tokens.map_or(room, |m| m.min(room));
    let mut decoding = Decoding::new(tokenizer, sampler, prompt, params.stop, params.eos, limit);

    let mut logits = model.forward(seq, prompt)?;
    let prefill_s = started.elapsed().as_secs_f64();
    timings.prefill_tokens_per_s = prompt.len() as f64 / prefill_s.max(1e-9);
    let decode_started = Instant::now();
    let mut finish = Finish::Length;
    let mut fed = 0;
    while !decoding.is_exhausted() {
        if params.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            finish = Finish::Cancelled;
            break;
        }
        let step = decoding.next(&mut logits)?;
        if decoding.tokens.len() <= 1 {
            timings.time_to_first_token_s = started.elapsed().as_secs_f64();
        }
        if !step.text.is_empty() {
            emit(&step.text)?;
        }
        if let Some(f) = step.finish {
            finish = f;
            break;
        }
        logits = model.forward(seq, &[step.token.expect("a token when not finished")])?;
        fed += 1;
    }
    if finish != Finish::Stop {
        let tail = decoding.flush()?;
        if !tail.is_empty() {
            emit(&tail)?;
        }
    }
    let tokens = decoding.tokens;
    // Decode speed counts the tokens produced after the first (the first came from prefill).
    let decoded = tokens.len().saturating_sub(1);
    let decode_s = decode_started.elapsed().as_secs_f64();
    timings.decode_tokens_per_s = if decoded > 0 {
        decoded as f64 / decode_s.max(1e-9)
    } else {
        0.0
    };
    Ok(Generation {
        tokens,
        fed,
        finish,
        timings,
    })
}
