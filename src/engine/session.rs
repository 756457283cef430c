//! Prompts from conversations, and a conversation that keeps its KV cache between turns.
//!
//! Every turn renders the whole conversation again and tokenizes it; the model's sequence is
//! cut back to the longest prefix it shares with those tokens and only the rest is fed. So the
//! time to first token does not grow with the conversation, and a template that rewrites an
//! earlier answer (trimming it, dropping reasoning) costs only the tokens from that point on.

use anyhow::Result;

use super::generate::Generation;
use super::model::SeqId;
use super::reasoning::Splitter;
use super::template::Message;
use super::{Engine, Text};

/// A conversation rendered for the model.
pub struct Prompt {
    pub tokens: Vec<u32>,
    /// The template has no system role and the system prompt went into the first user turn.
    pub folded_system: bool,
    /// The template left the model inside an opened `<think>` (DeepSeek-R1).
    pub opens_thinking: bool,
}

impl Text {
    /// The conversation as the model sees it: its chat template, or (for models without one,
    /// or `raw`) the messages' text one after another: each user message starts a new
    /// paragraph, each answer follows its prompt directly (as it was generated).
    pub fn prompt(&self, messages: &[Message], raw: bool) -> Result<Prompt> {
        self.prompt_with_tools(messages, None, raw)
    }

    /// The conversation with `tools` offered to the model through its template.
    pub fn prompt_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        raw: bool,
    ) -> Result<Prompt> {
        if let Some(t) = self.template.as_ref().filter(|_| !raw) {
            let (text, folded_system) = t.render_chat(messages, tools)?;
            // A rendered template already holds BOS, as in transformers' apply_chat_template.
            return Ok(Prompt {
                tokens: self.encode(&text, false)?,
                opens_thinking: Splitter::prompt_opens_thinking(&text),
                folded_system,
            });
        }
        let mut text = String::new();
        for m in messages {
            if m.role != "assistant" && !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&m.content);
        }
        Ok(Prompt {
            tokens: self.encode(&text, true)?,
            folded_system: false,
            opens_thinking: false,
        })
    }
}

pub struct Session {
    seq: SeqId,
    /// The tokens the sequence's cache holds.
    cached: Vec<u32>,
}

/// What to feed the model for one turn.
pub struct Turn {
    pub prompt: Prompt,
    /// Tokens of the prompt already in the cache (reused); the rest are fed.
    pub start: usize,
}

impl Turn {
    pub fn new_tokens(&self) -> &[u32] {
        &self.prompt.tokens[self.start..]
    }
}

impl Session {
    pub fn new(engine: &mut Engine) -> Self {
        Session {
            seq: engine.model.new_sequence(),
            cached: Vec::new(),
        }
    }

    pub fn seq(&self) -> SeqId {
        self.seq
    }

    /// Forget the cache (a new conversation, or one loaded from a file).
    pub fn reset(&mut self, engine: &mut Engine) -> Result<()> {
        engine.model.truncate(self.seq, 0)?;
        self.cached.clear();
        Ok(())
    }

    pub fn cached_tokens(&self) -> usize {
        self.cached.len()
    }

    /// Render `messages` (ending with the user's new message) and cut the cache back to what
    /// the new prompt shares with it.
    pub fn prepare(&mut self, engine: &mut Engine, messages: &[Message]) -> Result<Turn> {
        let prompt = engine.text.prompt(messages, false)?;
        let shared = self
            .cached
            .iter()
            .zip(&prompt.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token must be fed to get logits for the next one.
        let start = shared.min(prompt.tokens.len().saturating_sub(1));
        engine.model.truncate(self.seq, start)?;
        self.cached.truncate(start);
        Ok(Turn { prompt, start })
    }

    /// After generating: the cache holds the turn's prompt and the generated tokens fed.
    pub fn record(&mut self, turn: &Turn, gen: &Generation) {
        self.cached = turn.prompt.tokens.clone();
        self.cached.extend_from_slice(&gen.tokens[..gen.fed]);
    }
}
