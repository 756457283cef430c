//! A conversation that keeps its KV cache between turns: each new turn feeds only the tokens
//! the model has not seen, so the time to first token does not grow with the conversation.
//!
//! The cache is described by the text it stands for (the rendered prompt plus what the model
//! generated). A new turn renders the whole conversation again; when that text extends the
//! cached text, only the difference is tokenized and fed. When it does not (the system prompt
//! changed, a template rewrote an earlier turn), the cache is dropped and the conversation is
//! fed from the start.

use anyhow::Result;

use super::template::Message;
use super::Engine;

#[derive(Default)]
pub struct Session {
    cached_text: String,
    cached_tokens: usize,
}

/// What to feed the model for one turn.
pub struct Turn {
    pub tokens: Vec<u32>,
    /// Position of the first of them (= tokens already in the cache, reused).
    pub start: usize,
    /// The full rendered prompt.
    pub text: String,
    /// The template has no system role and the system prompt went into the first user turn.
    pub folded_system: bool,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// Forget the cache (a new conversation, or a conversation loaded from a file).
    pub fn reset(&mut self, engine: &mut Engine) -> Result<()> {
        engine.model.reset()?;
        self.cached_text.clear();
        self.cached_tokens = 0;
        Ok(())
    }

    pub fn cached_tokens(&self) -> usize {
        self.cached_tokens
    }

    /// Render `messages` (ending with the user's new message) and work out what to feed.
    pub fn prepare(&mut self, engine: &mut Engine, messages: &[Message]) -> Result<Turn> {
        let (text, folded_system, add_special) = render(engine, messages)?;
        if self.cached_tokens > 0 && text.starts_with(&self.cached_text) {
            let delta = &text[self.cached_text.len()..];
            let tokens = engine.encode(delta, false)?;
            return Ok(Turn {
                tokens,
                start: self.cached_tokens,
                text,
                folded_system,
            });
        }
        self.reset(engine)?;
        let tokens = engine.encode(&text, add_special)?;
        Ok(Turn {
            tokens,
            start: 0,
            text,
            folded_system,
        })
    }

    /// After generating: the cache now holds the turn's tokens and `generated` more, which
    /// stream-decoded to `generated_text`.
    pub fn record(&mut self, turn: &Turn, generated: usize, generated_text: &str) {
        self.cached_text = format!("{}{generated_text}", turn.text);
        self.cached_tokens = turn.start + turn.tokens.len() + generated;
    }
}

/// The conversation as the model sees it: its chat template, or (for models without one) the
/// messages' text one after another. Returns the text, whether a system prompt was folded, and
/// whether the tokenizer should add its special tokens (BOS) itself.
pub fn render(engine: &Engine, messages: &[Message]) -> Result<(String, bool, bool)> {
    match &engine.template {
        Some(t) => {
            let (text, folded) = t.render_chat(messages)?;
            Ok((text, folded, false))
        }
        // A model without a template continues the text: each user message starts a new
        // paragraph, each answer follows its prompt directly (as it was generated).
        None => {
            let mut text = String::new();
            for m in messages {
                if m.role != "assistant" && !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&m.content);
            }
            Ok((text, false, true))
        }
    }
}
