//! Sequences that keep their KV cache between prompts. A new prompt reuses the part of the cache
//! it shares with what the cache holds, and only the rest is fed: a chat turn renders the whole
//! conversation again, and its time to first token does not grow with the conversation (a
//! template that rewrites an earlier answer, trimming it or dropping reasoning, costs only the
//! tokens from that point on); a server slot serves a client re-sending its conversation the
//! same way.

use anyhow::Result;

use super::decoding::Generation;
use crate::engine::model::{Model, SeqId};
use crate::engine::text::prompt::Prompt;
use crate::engine::text::template::Message;
use crate::engine::text::Text;

/// A sequence of the model and the tokens its KV cache holds.
pub struct CachedSequence {
    seq: SeqId,
    tokens: Vec<u32>,
}

impl CachedSequence {
    pub fn new(model: &mut Model) -> Self {
        CachedSequence {
            seq: model.new_sequence(),
            tokens: Vec::new(),
        }
    }

    pub fn seq(&self) -> SeqId {
        self.seq
    }

    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// What the cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How many tokens from the start `prompt` shares with the cache.
    pub fn shared_prefix(&self, prompt: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Cut the cache back to what `prompt` shares with it, keeping at least one prompt token to
    /// feed (the logits of the next token come from feeding one). Returns how many of the
    /// prompt's tokens are in the cache: feed `prompt[reused..]`.
    pub fn reuse_for(&mut self, model: &mut Model, prompt: &[u32]) -> Result<usize> {
        let reused = self
            .shared_prefix(prompt)
            .min(prompt.len().saturating_sub(1));
        // A sliding-window layer may have moved past what position `reused` needs: then the
        // model keeps less (nothing), and the prompt is fed from there.
        let reused = model.truncate(self.seq, reused)?;
        self.tokens.truncate(reused);
        Ok(reused)
    }

    /// `tokens` were fed to the sequence after what it held.
    pub fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Empty the cache (a new conversation, or a failed forward that left it unknown).
    pub fn clear(&mut self, model: &mut Model) -> Result<()> {
        self.tokens.clear();
        model.truncate(self.seq, 0).map(drop)
    }
}

/// A conversation: one sequence whose cache follows the turns.
pub struct Session {
    cache: CachedSequence,
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
    pub fn new(model: &mut Model) -> Self {
        Session {
            cache: CachedSequence::new(model),
        }
    }

    pub fn seq(&self) -> SeqId {
        self.cache.seq()
    }

    /// Forget the cache (a new conversation, or one loaded from a file).
    pub fn reset(&mut self, model: &mut Model) -> Result<()> {
        self.cache.clear(model)
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Render `messages` (ending with the user's new message) and cut the cache back to what
    /// the new prompt shares with it.
    pub fn prepare(
        &mut self,
        model: &mut Model,
        text: &Text,
        messages: &[Message],
    ) -> Result<Turn> {
        let prompt = text.prompt(messages, false)?;
        let start = self.cache.reuse_for(model, &prompt.tokens)?;
        Ok(Turn { prompt, start })
    }

    /// After generating: the cache holds the turn's prompt and the generated tokens fed.
    pub fn record(&mut self, turn: &Turn, gen: &Generation) {
        self.cache.extend(turn.new_tokens());
        self.cache.extend(&gen.tokens[..gen.fed]);
    }
}
