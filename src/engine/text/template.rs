//! Chat templates: the model's own Jinja, rendered with minijinja the way transformers'
//! `apply_chat_template` does (trim_blocks, lstrip_blocks, `raise_exception`, `strftime_now`,
//! Python string methods).

use std::path::Path;

use anyhow::{Context, Result};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant turn's tool calls, as OpenAI writes them (`[{"id", "type": "function",
    /// "function": {"name", "arguments"}}]`): templates render them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// A tool turn's answer names the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// The work a chat template may do in one render, in minijinja's fuel (about one unit per
/// instruction; 64 bytes of values built): real templates use under 10^5 for a long conversation
/// with tools; a template that loops without end stops here within a second or two.
const TEMPLATE_FUEL: u64 = 50_000_000;

/// Bytes a chat template may write beyond four times the text it is given: a prompt is the
/// messages plus some markup, never gigabytes.
const TEMPLATE_OUTPUT: usize = 16 << 20;

/// The rendered text, refusing to grow past its limit (a template that prints without end fails
/// here rather than exhausting memory).
struct CappedOutput {
    text: Vec<u8>,
    limit: usize,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.limit {
            return Err(std::io::Error::other(format!(
                "the chat template wrote more than {} bytes",
                self.limit
            )));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
pub fn special_token(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

fn token_text(v: Option<&Value>) -> String {
    special_token(v).unwrap_or_default()
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String) -> Self {
        ChatTemplate {
            source,
            bos_token,
            eos_token,
        }
    }

    /// The template of a model folder: chat_template.jinja, else tokenizer_config.json's
    /// `chat_template` (a string, or a list of named templates of which "default" is used).
    /// `tc` is the folder's tokenizer_config.json (Null when it has none).
    pub fn from_config(dir: &Path, tc: &Value) -> Result<Option<Self>> {
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("cannot read {}", jinja.display()))?,
            )
        } else {
            match tc.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            }
        };
        Ok(source.map(|source| ChatTemplate {
            source,
            bos_token: token_text(tc.get("bos_token")),
            eos_token: token_text(tc.get("eos_token")),
        }))
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    #[cfg(test)]
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Render with `tools` (OpenAI's list of `{"type": "function", "function": {…}}`) in the
    /// template's context, as transformers' apply_chat_template passes them.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> Result<String, Error> {
            Ok(jiff::Zoned::now().strftime(&fmt).to_string())
        });
        env.add_template("chat", &self.source)
            .context("the model's chat template does not parse")?;
        let tmpl = env.get_template("chat")?;
        let given: usize = messages.iter().map(|m| m.content.len()).sum::<usize>()
            + tools.map_or(0, |t| t.to_string().len());
        let mut out = CappedOutput {
            text: Vec::new(),
            limit: TEMPLATE_OUTPUT + 4 * given,
        };
        tmpl.render_captured_to(
            minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                tools => tools.map_or(minijinja::Value::UNDEFINED, |t| minijinja::Value::from(minijinja::value::Serde(t))),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            },
            &mut out,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => anyhow::anyhow!(
                "the chat template ran past its budget of {TEMPLATE_FUEL} steps: it loops \
                 without end (fix or replace the template)"
            ),
            _ => e.into(),
        })?;
        String::from_utf8(out.text).context("the chat template wrote text that is not UTF-8")
    }

    /// Render, folding a system message into the first user turn when the template rejects the
    /// system role (Gemma). Returns the text and whether the system prompt was folded.
    pub fn render_chat(
        &self,
        messages: &[Message],
        tools: Option<&Value>,
    ) -> Result<(String, bool)> {
        match self.render_with_tools(messages, tools, true) {
            Ok(text) => Ok((text, false)),
            Err(e) if messages.first().is_some_and(|m| m.role == "system") => {
                let folded = fold_system(messages);
                let text = self
                    .render_with_tools(&folded, tools, true)
                    .map_err(|_| e)
                    .context("cannot render the chat template")?;
                Ok((text, true))
            }
            Err(e) => Err(e).context("cannot render the chat template"),
        }
    }
}

fn fold_system(messages: &[Message]) -> Vec<Message> {
    let system = &messages[0].content;
    let mut rest: Vec<Message> = messages[1..].to_vec();
    match rest.iter_mut().find(|m| m.role == "user") {
        Some(first_user) => first_user.content = format!("{system}\n\n{}", first_user.content),
        None => rest.insert(0, Message::new("user", system.clone())),
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpl(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    fn msg(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    #[test]
    fn renders_like_transformers_with_trim_and_python_methods() {
        let t = tmpl(
            "{{ bos_token }}{% for m in messages %}\n<|{{ m.role }}|>{{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}<|assistant|>{% endif %}",
        );
        let out = t.render(&[msg("user", " hi ")], true).unwrap();
        assert_eq!(out, "<s><|user|>hi\n<|assistant|>");
    }

    #[test]
    fn templates_load_from_a_named_list_or_a_jinja_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D{{ bos_token }}"}]}"#,
        )
        .unwrap();
        let load = || {
            let tc = std::fs::read_to_string(d.path().join("tokenizer_config.json")).unwrap();
            ChatTemplate::from_config(d.path(), &serde_json::from_str(&tc).unwrap()).unwrap()
        };
        let t = load().unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "D<s>");
        std::fs::write(d.path().join("chat_template.jinja"), "J{{ eos_token }}").unwrap();
        let t = load().unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "J</s>");
        std::fs::write(d.path().join("tokenizer_config.json"), "{}").unwrap();
        std::fs::remove_file(d.path().join("chat_template.jinja")).unwrap();
        assert!(load().is_none());
    }

    #[test]
    fn a_template_that_rejects_system_gets_it_folded() {
        let t = tmpl(
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}",
        );
        let (out, folded) = t
            .render_chat(&[msg("system", "Be brief."), msg("user", "Hi")], None)
            .unwrap();
        assert!(folded);
        assert_eq!(out, "[user]Be brief.\n\nHi");
    }
}
