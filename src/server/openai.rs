//! OpenAI's request and response shapes: the fields owrun reads from a request (each checked
//! for its type and range, named in the error when wrong), and the completion objects and
//! stream chunks it answers with, built from the scheduler's events.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::scheduler::{Event, TokenLogprobs};
use super::tools::{parse_calls, Call, Syntax, Tools};
use crate::engine::generate::constrain::Schema;
use crate::engine::generate::decoding::Finish;
use crate::engine::generate::sampler::{Overrides, SamplingParams};
use crate::engine::text::reasoning::{Piece, Splitter};
use crate::engine::text::template::Message;

/// Most choices one request may ask for.
pub const MAX_N: usize = 16;

/// Most bytes of JSON schema a request may hold (a `json_schema` response format, or all its
/// tools together): compiling a schema into a constraint, and each step of it, takes time in
/// proportion to its size.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// 400 naming `param` when `schema` is over [`MAX_SCHEMA_BYTES`] as compact JSON.
pub fn check_schema_size(param: &str, schema: &Value) -> Result<(), ApiError> {
    /// Counts what is written, and stops past the limit.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > MAX_SCHEMA_BYTES {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    if serde_json::to_writer(Counter(0), schema).is_err() {
        return Err(ApiError::invalid(
            param,
            format!(
                "{param} holds more than {MAX_SCHEMA_BYTES} bytes of JSON schema (the limit of \
                 one request)"
            ),
        ));
    }
    Ok(())
}

/// A request's fields, with `null` read as absent (clients send both).
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn number(&self, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        self.ranged(key, Value::as_f64, "a number", lo, hi)
    }

    fn integer(&self, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        self.ranged(key, Value::as_i64, "an integer", lo, hi)
    }

    /// A field read by `read` (named `what` in the error) and checked to lie in `lo..=hi`.
    fn ranged<T: PartialOrd + std::fmt::Display>(
        &self,
        key: &str,
        read: fn(&Value) -> Option<T>,
        what: &str,
        lo: T,
        hi: T,
    ) -> Result<Option<T>, ApiError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let x = read(v)
            .ok_or_else(|| ApiError::invalid(key, format!("{key} must be {what}, not {v}")))?;
        if x < lo || x > hi {
            return Err(ApiError::invalid(
                key,
                format!("{key} is {x}: it must be between {lo} and {hi}"),
            ));
        }
        Ok(Some(x))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_bool().ok_or_else(|| {
                    ApiError::invalid(key, format!("{key} must be true or false, not {v}"))
                })
            })
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    ApiError::invalid(key, format!("{key} must be a string, not {v}"))
                })
            })
            .transpose()
    }
}

/// What every generation request carries, besides its prompt.
#[derive(Debug, Clone)]
pub struct Common {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    /// What the request set of temperature, top_p, … and seed.
    pub sampling: Overrides,
    pub stop: Vec<String>,
    pub n: usize,
    /// Log-probabilities asked for, with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// The output is held to this (response_format json_object / json_schema).
    pub schema: Option<Schema>,
    /// LoRA adapters asked for (`lora`, as llama-server's): which, and how strongly.
    pub lora: Vec<(AdapterRef, f32)>,
}

/// An adapter as a request names it: by its position among the server's `--lora` adapters (as
/// llama-server numbers them) or by its name.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterRef {
    Id(usize),
    Name(String),
}

/// Most adapters one request may name.
const MAX_ADAPTERS: usize = 16;

/// `lora`: `[{"id": 0, "scale": 0.5}, {"id": "my-tune"}]` (scale 1 when left out).
fn lora_field(f: &Fields) -> Result<Vec<(AdapterRef, f32)>, ApiError> {
    let Some(v) = f.get("lora") else {
        return Ok(Vec::new());
    };
    let bad = |why: &str| ApiError::invalid("lora", format!("lora {why}"));
    let items = v
        .as_array()
        .filter(|a| a.len() <= MAX_ADAPTERS)
        .ok_or_else(|| {
            bad(&format!(
                "must be a list of up to {MAX_ADAPTERS} {{\"id\", \"scale\"}} objects"
            ))
        })?;
    items
        .iter()
        .map(|item| {
            let o = item
                .as_object()
                .map(Fields)
                .ok_or_else(|| bad("items must be objects"))?;
            let id = match o.get("id") {
                Some(Value::String(name)) => AdapterRef::Name(name.clone()),
                Some(v) => AdapterRef::Id(
                    v.as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .ok_or_else(|| bad("ids must be adapter numbers or names"))?,
                ),
                None => return Err(bad("items need an id")),
            };
            let scale = o.number("scale", -100.0, 100.0)?.unwrap_or(1.0) as f32;
            Ok((id, scale))
        })
        .collect()
}

impl Common {
    fn parse(f: &Fields, logprobs: Option<usize>) -> Result<Common, ApiError> {
        let model = f
            .string("model")?
            .ok_or_else(|| ApiError::invalid("model", "model is required"))?
            .to_string();
        let stop = match f.get("stop") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if a.len() <= 4 => a
                .iter()
                .map(|s| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::invalid("stop", "stop must be a string or a list of strings")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stop",
                    "stop must be a string or a list of up to 4 strings",
                ))
            }
        };
        let include_usage = match f.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => Fields(o).boolean("include_usage")?.unwrap_or(false),
            Some(v) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    format!("stream_options must be an object, not {v}"),
                ))
            }
        };
        let max_tokens = match f.integer("max_completion_tokens", 1, i64::MAX)? {
            Some(n) => Some(n),
            None => f.integer("max_tokens", 1, i64::MAX)?,
        };
        let seed = match f.get("seed") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_i64().map(|i| i as u64))
                    .ok_or_else(|| ApiError::invalid("seed", "seed must be an integer"))?,
            ),
        };
        let f32_of = |x: Option<f64>| x.map(|x| x as f32);
        Ok(Common {
            model,
            stream: f.boolean("stream")?.unwrap_or(false),
            include_usage,
            max_tokens: max_tokens.map(|n| n as usize),
            sampling: Overrides {
                temperature: f32_of(f.number("temperature", 0.0, 2.0)?),
                top_p: f32_of(f.number("top_p", 0.0, 1.0)?),
                top_k: f.integer("top_k", 0, 1 << 20)?.map(|k| k as usize),
                min_p: f32_of(f.number("min_p", 0.0, 1.0)?),
                repeat_penalty: f32_of(f.number("repeat_penalty", 0.01, 10.0)?),
                repeat_last_n: None,
                presence_penalty: f32_of(f.number("presence_penalty", -2.0, 2.0)?),
                frequency_penalty: f32_of(f.number("frequency_penalty", -2.0, 2.0)?),
                seed,
            },
            stop,
            n: f.integer("n", 1, MAX_N as i64)?.unwrap_or(1) as usize,
            logprobs,
            schema: response_format(f)?,
            lora: lora_field(f)?,
        })
    }

    /// The model's defaults with what the request set; choice `index` draws from `seed + index`
    /// (so the choices differ, and the same seed repeats them).
    pub fn sampling(&self, defaults: &SamplingParams, index: usize) -> SamplingParams {
        let mut p = self.sampling.apply(defaults.clone());
        p.seed = self
            .sampling
            .seed
            .unwrap_or_else(rand::random)
            .wrapping_add(index as u64);
        p
    }
}

fn object(body: &Value) -> Result<Fields<'_>, ApiError> {
    body.as_object()
        .map(Fields)
        .ok_or_else(|| ApiError::invalid("", "the request body must be a JSON object"))
}

/// Parse a request body as JSON (400 naming where it breaks).
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("", format!("the request body is not valid JSON: {e}")))
}

/// Fields owrun does not implement: refused by name rather than ignored.
/// Tools belong to chat: the completions API has none.
fn refuse_tools(f: &Fields) -> Result<(), ApiError> {
    if f.get("tools").is_some() {
        return Err(ApiError::invalid(
            "tools",
            "tools are offered through /v1/chat/completions",
        ));
    }
    Ok(())
}

/// `response_format`: None for text; the schema the output is held to otherwise.
fn response_format(f: &Fields) -> Result<Option<Schema>, ApiError> {
    let Some(rf) = f.get("response_format") else {
        return Ok(None);
    };
    let bad = |m: String| ApiError::invalid("response_format", m);
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Schema::any_object())),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    bad(
                        "json_schema needs {\"json_schema\": {\"name\": …, \"schema\": {…}}}"
                            .into(),
                    )
                })?;
            check_schema_size("response_format", schema)?;
            Schema::from_json(schema)
                .map(Some)
                .map_err(|e| bad(format!("invalid JSON schema: {e}")))
        }
        _ => Err(bad(format!(
            "response_format type must be text, json_object or json_schema, not {}",
            rf.get("type").unwrap_or(&Value::Null)
        ))),
    }
}

pub struct ChatRequest {
    pub common: Common,
    pub messages: Vec<Message>,
    pub tools: Option<Tools>,
}

pub fn parse_chat(body: &Value) -> Result<ChatRequest, ApiError> {
    let f = object(body)?;
    let tools = super::tools::parse(f.get("tools"), f.get("tool_choice"))?;
    let logprobs = if f.boolean("logprobs")?.unwrap_or(false) {
        Some(f.integer("top_logprobs", 0, 20)?.unwrap_or(0) as usize)
    } else {
        if f.get("top_logprobs").is_some() {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        None
    };
    let common = Common::parse(&f, logprobs)?;
    let raw = f
        .get("messages")
        .ok_or_else(|| ApiError::invalid("messages", "messages is required"))?;
    let list = raw
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::invalid("messages", "messages must be a non-empty list"))?;
    let mut messages = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let m = m
            .as_object()
            .ok_or_else(|| ApiError::invalid(&param, format!("{param} must be an object")))?;
        let role = match m.get("role").and_then(Value::as_str) {
            Some("developer") | Some("system") => "system",
            Some(r @ ("user" | "assistant" | "tool")) => r,
            Some(other) => {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!(
                        "{param}.role is {other:?}: use system, developer, user, assistant or tool"
                    ),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!("{param}.role is required"),
                ))
            }
        };
        let content = content_text(m.get("content"), &format!("{param}.content"))?;
        let mut message = Message::new(role, content);
        if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
            if !calls.is_array() {
                return Err(ApiError::invalid(
                    &format!("{param}.tool_calls"),
                    format!("{param}.tool_calls must be a list"),
                ));
            }
            // Templates read the arguments as an object (`tool_call.arguments | tojson`).
            let mut calls = calls.clone();
            for c in calls.as_array_mut().into_iter().flatten() {
                if let Some(args) = c.pointer_mut("/function/arguments") {
                    if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str(s).ok()) {
                        *args = parsed;
                    }
                }
            }
            message.tool_calls = Some(calls);
        }
        message.tool_call_id = m
            .get("tool_call_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        message.name = m.get("name").and_then(Value::as_str).map(str::to_string);
        messages.push(message);
    }
    Ok(ChatRequest {
        common,
        messages,
        tools,
    })
}

/// A message's text: a string, or a list of text parts.
fn content_text(v: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some(kind), _) if kind != "text" => {
                        return Err(ApiError::invalid(
                            param,
                            format!("{param}: only text parts are supported, not {kind:?}"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            param,
                            format!("{param}: a part must be {{\"type\": \"text\", \"text\": …}}"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(other) => Err(ApiError::invalid(
            param,
            format!("{param} must be a string or a list of text parts, not {other}"),
        )),
    }
}

pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

pub struct CompletionRequest {
    pub common: Common,
    pub prompt: PromptInput,
}

pub fn parse_completion(body: &Value) -> Result<CompletionRequest, ApiError> {
    let f = object(body)?;
    refuse_tools(&f)?;
    let logprobs = f.integer("logprobs", 0, 5)?.map(|k| k as usize);
    let common = Common::parse(&f, logprobs)?;
    if f.boolean("echo")? == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    if f.integer("best_of", 1, 1)?.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "best_of must be 1"));
    }
    let token_list = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    };
    let prompt = match f.get("prompt") {
        Some(Value::String(s)) => PromptInput::Text(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            PromptInput::Text(a[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_array() => {
            PromptInput::Tokens(a[0].as_array().and_then(|a| token_list(a)).ok_or_else(|| {
                ApiError::invalid("prompt", "prompt tokens must be non-negative integers")
            })?)
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => {
            PromptInput::Tokens(token_list(a).ok_or_else(|| {
                ApiError::invalid("prompt", "prompt tokens must be non-negative integers")
            })?)
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "prompt",
                "give one prompt (a string or a list of token ids) per request",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt must be a string, not {other}"),
            ))
        }
        None => return Err(ApiError::invalid("prompt", "prompt is required")),
    };
    Ok(CompletionRequest { common, prompt })
}

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Endpoint {
    Chat,
    Completion,
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        Finish::Stop | Finish::Cancelled => "stop",
    }
}

/// Where a choice's answer stands when tools are offered: its start is held back while it
/// could be a tool call.
#[derive(Default, PartialEq)]
enum Calls {
    /// No tools offered, or the answer is plain text.
    #[default]
    Plain,
    /// The answer so far could still be (or is) a call.
    Holding(String),
    /// Parsed at the end.
    Made(Vec<Call>),
}

/// One choice of a reply (of `n`), as its events arrive.
#[derive(Default)]
struct ChoiceState {
    role_sent: bool,
    splitter: Option<Splitter>,
    content: String,
    reasoning: String,
    reasoning_seen: bool,
    calls: Calls,
    logprobs: Vec<TokenLogprobs>,
    /// Bytes of text before each token (the completions API's text_offset).
    offsets: Vec<usize>,
    finish: Option<Finish>,
    completion_tokens: usize,
}

impl ChoiceState {
    fn finish_reason(&self) -> Option<&'static str> {
        match (&self.calls, self.finish) {
            (Calls::Made(_), Some(_)) => Some("tool_calls"),
            (_, f) => f.map(finish_reason),
        }
    }
}

/// One request's answer, built from its choices' events: chunks while streaming, the whole
/// object at the end otherwise.
pub struct Reply {
    kind: Endpoint,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: bool,
    /// Tools were offered: calls in this syntax are parsed out of the answers.
    tools: Option<Syntax>,
    choices: Vec<ChoiceState>,
    prompt_tokens: usize,
    cached_tokens: usize,
}

impl Reply {
    pub fn new(
        kind: Endpoint,
        model: &str,
        opens_thinking: bool,
        common: &Common,
        tools: Option<Syntax>,
    ) -> Self {
        let prefix = match kind {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Reply {
            kind,
            id: format!("{prefix}-{:024x}", rand::random::<u128>() >> 32),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_string(),
            include_usage: common.include_usage,
            logprobs: common.logprobs.is_some(),
            tools,
            choices: (0..common.n)
                .map(|_| ChoiceState {
                    splitter: (kind == Endpoint::Chat).then(|| Splitter::new(opens_thinking)),
                    calls: if tools.is_some() {
                        Calls::Holding(String::new())
                    } else {
                        Calls::Plain
                    },
                    ..ChoiceState::default()
                })
                .collect(),
            prompt_tokens: 0,
            cached_tokens: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Take in one event; returns the chunks to stream for it.
    pub fn on_event(&mut self, index: usize, event: Event) -> Vec<Value> {
        let (kind, tools) = (self.kind, self.tools);
        let Some(choice) = self.choices.get_mut(index) else {
            return Vec::new();
        };
        let mut deltas = Vec::new();
        match event {
            Event::Started { cached_tokens } => {
                if kind == Endpoint::Chat && !choice.role_sent {
                    choice.role_sent = true;
                    deltas.push(json!({"role": "assistant", "content": ""}));
                }
                self.cached_tokens = self.cached_tokens.max(cached_tokens);
                self.wrap(index, deltas, None, None)
            }
            Event::Token { text, logprobs } => {
                let before = choice.content.len();
                if let Some(lp) = &logprobs {
                    choice.offsets.push(before);
                    choice.logprobs.push(lp.clone());
                }
                deltas.extend(text_deltas(kind, tools, choice, &text));
                let lp = logprobs.map(|l| self.logprobs_json(std::slice::from_ref(&l), &[before]));
                self.wrap(index, deltas, lp, None)
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                if let Some(s) = choice.splitter.as_mut() {
                    for piece in s.finish() {
                        deltas.extend(piece_delta(tools, choice, piece));
                    }
                }
                if let (Some(syntax), Calls::Holding(held)) = (tools, &mut choice.calls) {
                    let held = std::mem::take(held);
                    let (rest, calls) = parse_calls(syntax, &held);
                    if calls.is_empty() {
                        choice.calls = Calls::Plain;
                        deltas.extend(answer_delta(choice, held));
                    } else {
                        deltas.extend(answer_delta(choice, rest));
                        deltas.extend(calls.iter().enumerate().map(|(i, c)| {
                            json!({"tool_calls": [{
                                "index": i,
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments},
                            }]})
                        }));
                        choice.calls = Calls::Made(calls);
                    }
                }
                choice.finish = Some(finish);
                choice.completion_tokens = completion_tokens;
                let reason = choice.finish_reason();
                self.prompt_tokens = prompt_tokens;
                let mut out = self.wrap(index, deltas, None, None);
                out.extend(self.wrap(index, Vec::new(), None, reason));
                out
            }
            Event::Failed(_) => Vec::new(),
        }
    }

    fn logprobs_json(&self, lps: &[TokenLogprobs], offsets: &[usize]) -> Value {
        match self.kind {
            Endpoint::Chat => json!({"content": lps.iter().map(|l| json!({
                "token": l.chosen.token,
                "logprob": l.chosen.logprob,
                "bytes": l.chosen.token.as_bytes(),
                "top_logprobs": l.top.iter().map(|c| json!({
                    "token": c.token, "logprob": c.logprob, "bytes": c.token.as_bytes(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()}),
            Endpoint::Completion => json!({
                "tokens": lps.iter().map(|l| &l.chosen.token).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|l| l.chosen.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|l| l.top.iter()
                    .map(|c| (c.token.clone(), json!(c.logprob)))
                    .collect::<Map<String, Value>>()).collect::<Vec<_>>(),
                "text_offset": offsets,
            }),
        }
    }

    /// Stream chunks: one per delta (or one empty one carrying logprobs or the finish reason).
    fn wrap(
        &self,
        index: usize,
        deltas: Vec<Value>,
        logprobs: Option<Value>,
        finish: Option<&'static str>,
    ) -> Vec<Value> {
        let mut deltas = deltas;
        if deltas.is_empty() && (logprobs.is_some() || finish.is_some()) {
            deltas.push(match self.kind {
                Endpoint::Chat => json!({}),
                Endpoint::Completion => json!({"text": ""}),
            });
        }
        let n = deltas.len();
        deltas
            .into_iter()
            .enumerate()
            .map(|(i, delta)| {
                let lp = if i + 1 == n { logprobs.clone() } else { None };
                let choice = match self.kind {
                    Endpoint::Chat => json!({
                        "index": index,
                        "delta": delta,
                        "logprobs": lp,
                        "finish_reason": finish,
                    }),
                    Endpoint::Completion => json!({
                        "index": index,
                        "text": delta["text"],
                        "logprobs": lp,
                        "finish_reason": finish,
                    }),
                };
                self.chunk(vec![choice])
            })
            .collect()
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": match self.kind {
                Endpoint::Chat => "chat.completion.chunk",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// After the last choice's finish: the usage chunk, when asked for.
    pub fn usage_chunk(&self) -> Option<Value> {
        self.include_usage.then(|| {
            let mut c = self.chunk(Vec::new());
            c["usage"] = self.usage();
            c
        })
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.completion_tokens).sum();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    /// The whole answer (not streaming).
    pub fn response(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let lp = self
                    .logprobs
                    .then(|| self.logprobs_json(&c.logprobs, &c.offsets));
                let finish = c.finish_reason();
                match self.kind {
                    Endpoint::Chat => {
                        let mut message = json!({"role": "assistant", "content": c.content});
                        if c.reasoning_seen {
                            message["reasoning_content"] = json!(c.reasoning.trim());
                        }
                        if let Calls::Made(calls) = &c.calls {
                            if c.content.is_empty() {
                                message["content"] = Value::Null;
                            }
                            message["tool_calls"] = calls
                                .iter()
                                .map(|c| {
                                    json!({"id": c.id, "type": "function",
                                           "function": {"name": c.name, "arguments": c.arguments}})
                                })
                                .collect();
                        }
                        json!({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
                    }
                    Endpoint::Completion => {
                        json!({"index": i, "text": c.content, "logprobs": lp, "finish_reason": finish})
                    }
                }
            })
            .collect();
        json!({
            "id": self.id,
            "object": match self.kind {
                Endpoint::Chat => "chat.completion",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
            "usage": self.usage(),
        })
    }
}

/// The text of a token as deltas: through the reasoning splitter for chat.
fn text_deltas(
    kind: Endpoint,
    tools: Option<Syntax>,
    choice: &mut ChoiceState,
    text: &str,
) -> Vec<Value> {
    if text.is_empty() {
        return Vec::new();
    }
    match (kind, choice.splitter.as_mut()) {
        (Endpoint::Chat, Some(s)) => {
            let pieces = s.feed(text);
            pieces
                .into_iter()
                .flat_map(|p| piece_delta(tools, choice, p))
                .collect()
        }
        _ => {
            choice.content.push_str(text);
            vec![json!({ "text": text })]
        }
    }
}

fn piece_delta(tools: Option<Syntax>, choice: &mut ChoiceState, piece: Piece) -> Option<Value> {
    match piece {
        Piece::Answer(t) if !t.is_empty() => {
            // While the answer could be a tool call, hold it back.
            if let (Some(syntax), Calls::Holding(held)) = (tools, &mut choice.calls) {
                held.push_str(&t);
                let start = held.trim_start();
                if start.starts_with(syntax.marker()) || syntax.marker().starts_with(start) {
                    return None;
                }
                let held = std::mem::take(held);
                choice.calls = Calls::Plain;
                return answer_delta(choice, held);
            }
            answer_delta(choice, t)
        }
        Piece::Reasoning(t) if !t.is_empty() => {
            choice.reasoning_seen = true;
            choice.reasoning.push_str(&t);
            Some(json!({ "reasoning_content": t }))
        }
        _ => None,
    }
}

fn answer_delta(choice: &mut ChoiceState, text: String) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    choice.content.push_str(&text);
    Some(json!({ "content": text }))
}

fn fingerprint() -> String {
    format!("owrun-{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request bodies from strangers: refused with a status or parsed, never a panic; what parses
    /// yields sampling settings for each choice.
    #[test]
    fn fuzz_request_bodies() {
        let defaults = SamplingParams::default();
        crate::fuzz::run_for("request", &crate::fuzz::seeds("request"), |bytes| {
            let Ok(body) = parse_json(bytes) else {
                return false;
            };
            let chat = parse_chat(&body).map(|c| (c.common, c.messages.len()));
            let completion = parse_completion(&body).map(|c| c.common);
            let parsed: Vec<Common> = [chat.map(|c| c.0), completion]
                .into_iter()
                .flatten()
                .collect();
            for common in &parsed {
                for index in 0..common.n {
                    common.sampling(&defaults, index);
                }
            }
            !parsed.is_empty()
        });
    }

    fn chat(body: Value) -> Result<ChatRequest, ApiError> {
        parse_chat(&body)
    }

    #[test]
    fn fields_are_checked_for_type_and_range_and_named() {
        let ok = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert!(chat(ok.clone()).is_ok());
        for (field, value) in [
            ("temperature", json!(3)),
            ("temperature", json!("hot")),
            ("top_p", json!(1.5)),
            ("n", json!(0)),
            ("max_tokens", json!(-1)),
            ("presence_penalty", json!(9)),
            ("stop", json!(["a", "b", "c", "d", "e"])),
            ("stream", json!("yes")),
            ("top_logprobs", json!(3)),
        ] {
            let mut body = ok.clone();
            body[field] = value;
            let e = chat(body).err().expect(field);
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some(field), "{e:?}");
        }
        // null is absent.
        let mut body = ok.clone();
        body["temperature"] = Value::Null;
        assert!(chat(body).unwrap().common.sampling.temperature.is_none());
        let e = chat(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}));
        assert_eq!(e.err().unwrap().param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn content_parts_join_and_other_parts_are_refused() {
        let r = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
        )
        .unwrap();
        assert_eq!(r.messages[0].content, "ab");
        let e = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}),
        );
        assert!(e.err().unwrap().message.contains("image_url"));
    }

    #[test]
    fn schemas_over_the_limit_are_refused_before_they_are_compiled() {
        // An enum of 10,000 strings: about 100 KB of schema.
        let values: Vec<String> = (0..10_000).map(|i| format!("v{i:05}")).collect();
        let big = json!({"type": "object", "properties": {"a": {"enum": values}}});
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": big}});
        let e = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                            "response_format": format}),
        )
        .err()
        .expect("refused");
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("response_format"));
        assert!(e.message.contains("65536 bytes"), "{}", e.message);
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": big}}]);
        let e = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                            "tools": tools}),
        )
        .err()
        .expect("refused");
        assert_eq!(e.param.as_deref(), Some("tools"));
        // Under the limit, the same shape is fine.
        let small = json!({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}});
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": small}});
        assert!(chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                            "response_format": format})
        )
        .is_ok());
    }

    #[test]
    fn seeds_repeat_and_choices_differ() {
        let r =
            chat(json!({"model": "m", "seed": 5, "messages": [{"role": "user", "content": "x"}]}))
                .unwrap();
        let d = SamplingParams::default();
        assert_eq!(r.common.sampling(&d, 0).seed, 5);
        assert_eq!(r.common.sampling(&d, 1).seed, 6);
    }
}
