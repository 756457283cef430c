//! What the commands that run models show on the terminal: generated text (reasoning apart from
//! the answer) as it streams, and the notes of a load.

use std::io::Write;

use anyhow::Result;

use crate::engine::generate::decoding::{generate, GenerateParams, Generation};
use crate::engine::generate::sampler::Sampler;
use crate::engine::model::SeqId;
use crate::engine::text::reasoning::{Piece, Splitter};
use crate::engine::Engine;

/// What happened while loading that the user may want to know, on stderr.
pub fn show_notes(engine: &Engine) {
    for note in &engine.notes {
        eprintln!("owrun: {note}");
    }
}

/// Said once when a template without a system role got the system prompt in the first user
/// message.
pub fn note_folded_system() {
    eprintln!(
        "owrun: note: this model's chat template has no system role; the system prompt was put \
         at the start of the first user message"
    );
}

/// Generate after `prompt` (appended to `seq`) and show the text as it comes: through the
/// reasoning splitter into `shown`. `on_text` sees every piece of raw text first.
#[allow(clippy::too_many_arguments)]
pub fn generate_shown(
    engine: &mut Engine,
    seq: SeqId,
    sampler: Sampler,
    prompt: &[u32],
    params: &GenerateParams,
    shown: &mut Shown,
    out: &mut impl Write,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut emit = |text: &str| -> Result<()> {
        on_text(text);
        shown.feed(out, text)
    };
    let gen = generate(
        &mut engine.model,
        seq,
        &engine.text.tokenizer,
        sampler,
        prompt,
        params,
        &mut emit,
    )?;
    shown.finish(out)?;
    Ok(gen)
}

/// Prints reasoning and answer as they stream, and keeps both for the JSON document.
/// Reasoning is dimmed on a colour terminal and wrapped in `<think>…</think>` elsewhere, so a
/// pipe gets the model's text as it wrote it.
pub struct Shown {
    stream: bool,
    hide_thinking: bool,
    colour: bool,
    pub reasoning: String,
    pub reasoning_seen: bool,
    pub answer: String,
    in_reasoning: bool,
    splitter: Splitter,
}

impl Shown {
    /// `thinking_prefilled`: the prompt left the model inside an opened `<think>`.
    pub fn new(stream: bool, hide_thinking: bool, colour: bool, thinking_prefilled: bool) -> Self {
        Shown {
            splitter: Splitter::new(thinking_prefilled),
            stream,
            hide_thinking,
            colour,
            reasoning: String::new(),
            reasoning_seen: false,
            answer: String::new(),
            in_reasoning: false,
        }
    }

    /// Generated text, split into reasoning and answer and shown.
    pub fn feed(&mut self, out: &mut impl Write, text: &str) -> Result<()> {
        for piece in self.splitter.feed(text) {
            self.show(out, piece)?;
        }
        Ok(())
    }

    /// Generation is over: show what the splitter held back, and end any colour.
    pub fn finish(&mut self, out: &mut impl Write) -> Result<()> {
        for piece in self.splitter.finish() {
            self.show(out, piece)?;
        }
        self.end(out)
    }

    fn show(&mut self, out: &mut impl Write, piece: Piece) -> Result<()> {
        let print_reasoning = self.stream && !self.hide_thinking;
        match piece {
            Piece::Reasoning(text) => {
                self.reasoning_seen = true;
                self.reasoning.push_str(&text);
                if print_reasoning {
                    if !self.in_reasoning {
                        out.write_all(if self.colour { b"\x1b[2m" } else { b"<think>" })?;
                    }
                    out.write_all(text.as_bytes())?;
                }
                self.in_reasoning = true;
            }
            Piece::Answer(text) => {
                self.close_reasoning(out)?;
                self.answer.push_str(&text);
                if self.stream {
                    out.write_all(text.as_bytes())?;
                }
            }
        }
        if self.stream {
            out.flush()?;
        }
        Ok(())
    }

    fn close_reasoning(&mut self, out: &mut impl Write) -> Result<()> {
        if self.in_reasoning && self.stream && !self.hide_thinking {
            out.write_all(if self.colour { b"\x1b[0m" } else { b"</think>" })?;
        }
        self.in_reasoning = false;
        Ok(())
    }

    fn end(&mut self, out: &mut impl Write) -> Result<()> {
        // A colour left on would bleed into the shell prompt.
        if self.colour && self.in_reasoning && self.stream && !self.hide_thinking {
            out.write_all(b"\x1b[0m")?;
        }
        self.in_reasoning = false;
        Ok(())
    }
}
