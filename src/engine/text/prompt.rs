//! Prompts from conversations: the model's chat template, or the messages' plain text.

use anyhow::Result;

use super::reasoning::Splitter;
use super::template::Message;
use super::Text;

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
