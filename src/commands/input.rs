//! What the commands that run models read from the user besides flags: the prompt (stdin, then
//! the argument words) and conversation files (`--messages`, chat's `/load`).

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result};

use crate::engine::text::template::Message;
use crate::error::usage;

/// Stdin (when it is not a terminal), then the argument words.
pub fn read_prompt(words: &[String]) -> Result<String> {
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
