//! Tool calling: the tools a request offers, how the model's family writes a call, the
//! constraint that makes it write one (`tool_choice: required` or a named function), and the
//! calls parsed back out of its text.

use serde_json::{json, Value};

use super::error::ApiError;
use crate::engine::generate::constrain::{JsonConstraint, Schema};
use crate::engine::text::template::Message;

/// How a model family writes tool calls (read from its chat template).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Syntax {
    /// Qwen2.5, Qwen3, Hermes, SmolLM: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.
    Hermes,
    /// Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}]`.
    Mistral,
    /// Llama 3.1 / 3.2: a bare `{"name": …, "parameters": {…}}`.
    Llama,
}

impl Syntax {
    /// The family's syntax from its template source; Hermes when the template says nothing of
    /// tools (owrun then describes the tools in a system message in that syntax).
    pub fn of_template(source: Option<&str>) -> Syntax {
        match source {
            Some(s) if s.contains("[TOOL_CALLS]") => Syntax::Mistral,
            Some(s) if s.contains("<tool_call>") => Syntax::Hermes,
            Some(s) if s.contains("<|python_tag|>") || s.contains("\"parameters\"") => {
                Syntax::Llama
            }
            _ => Syntax::Hermes,
        }
    }

    /// Text a call starts with (while the output could still start so, it is held back).
    pub fn marker(self) -> &'static str {
        match self {
            Syntax::Hermes => "<tool_call>",
            Syntax::Mistral => "[TOOL_CALLS]",
            Syntax::Llama => "{",
        }
    }

    fn arguments_key(self) -> &'static str {
        match self {
            Syntax::Llama => "parameters",
            _ => "arguments",
        }
    }
}

/// A function the client offers.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    /// Its parameters' JSON schema, as given.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model may call tools or answer.
    Auto,
    /// Tools are not offered.
    None,
    /// The model must call one of the tools.
    Required,
    /// The model must call this one.
    Function(String),
}

/// A request's tools: the list as sent (for the template) and what owrun reads of it.
#[derive(Debug, Clone)]
pub struct Tools {
    pub raw: Value,
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
}

/// `tools` and `tool_choice` from a request (None: no tools, or `tool_choice: none`).
pub fn parse(tools: Option<&Value>, choice: Option<&Value>) -> Result<Option<Tools>, ApiError> {
    let Some(raw) = tools else {
        if choice.is_some_and(|c| c != "none" && c != "auto") {
            return Err(ApiError::invalid("tool_choice", "tool_choice needs tools"));
        }
        return Ok(None);
    };
    let list = raw
        .as_array()
        .ok_or_else(|| ApiError::invalid("tools", "tools must be a list"))?;
    super::openai::check_schema_size("tools", raw)?;
    let mut parsed = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                &param,
                format!("{param}: only {{\"type\": \"function\", \"function\": {{…}}}} tools are supported"),
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::invalid(&param, format!("{param}.function must be an object"))
            })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(&param, format!("{param}.function.name is required"))
            })?;
        let parameters = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        Schema::from_json(&parameters)
            .map_err(|e| ApiError::invalid(&param, format!("{param}.function.parameters: {e}")))?;
        parsed.push(Tool {
            name: name.to_string(),
            parameters,
        });
    }
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice {other:?}: use auto, none, required or a function"),
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice",
                        "tool_choice must be a string or {\"type\": \"function\", \"function\": {\"name\": …}}",
                    )
                })?;
            if !parsed.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not among the tools"),
                ));
            }
            ToolChoice::Function(name.to_string())
        }
    };
    if parsed.is_empty() || choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(Tools {
        raw: raw.clone(),
        tools: parsed,
        choice,
    }))
}

impl Tools {
    /// For a template that knows nothing of tools: a system message that lists them and says
    /// how to call one (Hermes' format), joined to the conversation's own system message.
    pub fn describe_in_system(&self, messages: &mut Vec<Message>) {
        let list: Vec<String> = self
            .raw
            .as_array()
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        let text = format!(
            "You can call these tools:\n{}\nTo call one, answer with\n<tool_call>\n{{\"name\": \
             \"NAME\", \"arguments\": {{…}}}}\n</tool_call>",
            list.join("\n")
        );
        match messages.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{}\n\n{text}", m.content),
            _ => messages.insert(0, Message::new("system", text)),
        }
    }

    /// The constraint for `required` or a named function: one call, in the family's syntax,
    /// its arguments held to the function's schema when the function is known. None for auto.
    pub fn constraint(&self, syntax: Syntax) -> Option<JsonConstraint> {
        let names: Vec<&Tool> = match &self.choice {
            ToolChoice::Auto | ToolChoice::None => return None,
            ToolChoice::Required => self.tools.iter().collect(),
            ToolChoice::Function(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
        };
        // Each function's arguments held to its own schema, chosen by the name written first.
        let arguments = Schema::ByName(
            names
                .iter()
                .map(|t| {
                    let schema = Schema::from_json(&t.parameters).unwrap_or(Schema::any_object());
                    (json!(t.name).to_string(), schema)
                })
                .collect(),
        );
        let call = Schema::Object {
            properties: Some(vec![
                (
                    "name".to_string(),
                    Schema::OneOf(names.iter().map(|t| json!(t.name).to_string()).collect()),
                ),
                (syntax.arguments_key().to_string(), arguments),
            ]),
            required: vec!["name".into(), syntax.arguments_key().into()],
            // The name first, as every family writes it.
            ordered: true,
        };
        Some(match syntax {
            Syntax::Hermes => JsonConstraint::wrapped("<tool_call>\n", call, "\n</tool_call>"),
            Syntax::Mistral => JsonConstraint::wrapped("[TOOL_CALLS][", call, "]"),
            Syntax::Llama => JsonConstraint::wrapped("", call, ""),
        })
    }
}

/// A call parsed from the model's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// The calls in `text` and the text around them; no calls when `text` holds none that parse.
pub fn parse_calls(syntax: Syntax, text: &str) -> (String, Vec<Call>) {
    let call = |v: &Value| -> Option<Call> {
        let name = v.get("name")?.as_str()?.to_string();
        let args = v
            .get("arguments")
            .or_else(|| v.get("parameters"))
            .cloned()
            .unwrap_or(json!({}));
        let arguments = match args {
            Value::String(s) => s,
            other => other.to_string(),
        };
        Some(Call {
            id: format!("call_{:016x}", rand::random::<u64>()),
            name,
            arguments,
        })
    };
    match syntax {
        Syntax::Hermes => {
            let mut calls = Vec::new();
            let mut rest = String::new();
            let mut tail = text;
            while let Some(start) = tail.find("<tool_call>") {
                rest.push_str(&tail[..start]);
                let after = &tail[start + "<tool_call>".len()..];
                let (inside, next) = match after.find("</tool_call>") {
                    Some(end) => (&after[..end], &after[end + "</tool_call>".len()..]),
                    None => (after, ""),
                };
                match serde_json::from_str::<Value>(inside.trim())
                    .ok()
                    .as_ref()
                    .and_then(call)
                {
                    Some(c) => calls.push(c),
                    None => return (text.to_string(), Vec::new()),
                }
                tail = next;
            }
            rest.push_str(tail);
            (rest.trim().to_string(), calls)
        }
        Syntax::Mistral => {
            let Some(at) = text.find("[TOOL_CALLS]") else {
                return (text.to_string(), Vec::new());
            };
            let list = text[at + "[TOOL_CALLS]".len()..].trim();
            match serde_json::from_str::<Value>(list) {
                Ok(Value::Array(a)) => {
                    let calls: Option<Vec<Call>> = a.iter().map(call).collect();
                    match calls {
                        Some(c) => (text[..at].trim().to_string(), c),
                        None => (text.to_string(), Vec::new()),
                    }
                }
                _ => (text.to_string(), Vec::new()),
            }
        }
        Syntax::Llama => {
            let body = text.trim().trim_start_matches("<|python_tag|>").trim();
            match serde_json::from_str::<Value>(body)
                .ok()
                .as_ref()
                .and_then(call)
            {
                Some(c) => (String::new(), vec![c]),
                None => (text.to_string(), Vec::new()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_parsed_in_each_family_s_syntax() {
        let (rest, calls) = parse_calls(
            Syntax::Hermes,
            "Let me look.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
        );
        assert_eq!(rest, "Let me look.");
        assert_eq!(calls[0].name, "weather");
        assert_eq!(calls[0].arguments, "{\"city\":\"Oslo\"}");
        let (_, calls) = parse_calls(
            Syntax::Mistral,
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]",
        );
        assert_eq!(calls.len(), 2);
        let (rest, calls) = parse_calls(
            Syntax::Llama,
            "{\"name\": \"weather\", \"parameters\": {\"city\": \"Oslo\"}}",
        );
        assert_eq!((rest.as_str(), calls[0].name.as_str()), ("", "weather"));
        // Text that is not a call stays text.
        let (rest, calls) = parse_calls(Syntax::Hermes, "<tool_call>\nnot json\n</tool_call>");
        assert!(calls.is_empty() && rest.contains("not json"));
    }

    #[test]
    fn tool_choice_is_checked_against_the_tools() {
        let tools = json!([{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]);
        let t = parse(Some(&tools), Some(&json!("required")))
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, ToolChoice::Required);
        assert!(parse(Some(&tools), Some(&json!("none"))).unwrap().is_none());
        let e = parse(
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "g"}})),
        );
        assert_eq!(e.unwrap_err().param.as_deref(), Some("tool_choice"));
        let bad =
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}]);
        assert!(parse(Some(&bad), None).is_err());
        let c = t.constraint(Syntax::Hermes).unwrap();
        assert!(
            c.accepts("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>")
        );
        assert!(!c.accepts("<tool_call>\n{\"name\": \"g\""));
        // With several tools, the arguments follow the schema of the function named.
        let two = json!([
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                "properties": {"a": {"type": "integer"}}, "required": ["a"]}}},
            {"type": "function", "function": {"name": "g", "parameters": {"type": "object",
                "properties": {"b": {"type": "boolean"}}, "required": ["b"]}}}]);
        let t = parse(Some(&two), Some(&json!("required")))
            .unwrap()
            .unwrap();
        let c = t.constraint(Syntax::Hermes).unwrap();
        assert!(c.accepts("<tool_call>\n{\"name\": \"g\", \"arguments\": {\"b\": true}}"));
        assert!(!c.accepts("<tool_call>\n{\"name\": \"g\", \"arguments\": {\"a\""));
        assert!(
            !c.accepts("<tool_call>\n{\"arguments\""),
            "the name comes first"
        );
    }
}
