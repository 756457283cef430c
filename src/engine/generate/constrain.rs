//! Constrained decoding for JSON: a character-level recognizer of JSON (any JSON object, or a
//! value of a JSON schema), and the token mask it gives. Before each sample, every token whose
//! text cannot continue a valid document is masked out; end-of-sequence is allowed only once
//! the document is complete. So `response_format` is enforced, not just asked for.
//!
//! Written here because the crates that do this (llguidance, outlines-core) bring their own
//! tokenizer layers and large grammar engines; the subset of JSON Schema clients send for
//! structured output (objects with properties and required keys, arrays, strings, numbers,
//! integers, booleans, null, enum and const) fits in one small pushdown recognizer.

use serde_json::Value;

use crate::engine::text::token_texts::TokenTexts;

/// Whitespace between JSON tokens is nothing, one space, or a newline and up to this many spaces
/// or tabs (llama.cpp's JSON grammar allows the same): indented output, but no rambling in
/// blank lines forever.
const MAX_INDENT: usize = 20;
/// Digits in one number's integer, fraction or exponent part.
const MAX_DIGITS: usize = 18;

/// What a value may be.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    /// Any JSON value.
    Any,
    /// An object: with `properties`, only those keys (each at most once) and every `required`
    /// one; without, any keys (values `Any`).
    Object {
        properties: Option<Vec<(String, Schema)>>,
        required: Vec<String>,
        /// Keys come in the order of `properties` (optional ones may be left out).
        ordered: bool,
    },
    Array {
        items: Box<Schema>,
        min_items: usize,
        max_items: Option<usize>,
    },
    String,
    Number,
    Integer,
    Boolean,
    Null,
    /// One of these values, written compactly.
    OneOf(Vec<String>),
    /// Any of several types (`"type": ["string", "null"]`).
    Types(Vec<Schema>),
    /// In an object: the schema named by the value written earlier in it as an exact literal
    /// (a tool call's arguments, by the function's `"name"`); any object if none matches.
    ByName(Vec<(String, Schema)>),
}

impl Schema {
    /// `response_format: json_object`: any object.
    pub fn any_object() -> Schema {
        Schema::Object {
            properties: None,
            required: Vec::new(),
            ordered: false,
        }
    }

    /// Read a JSON schema; an error says what is wrong or not supported.
    pub fn from_json(v: &Value) -> Result<Schema, String> {
        let Some(o) = v.as_object() else {
            return match v {
                Value::Bool(true) => Ok(Schema::Any),
                _ => Err(format!("a schema must be an object, not {v}")),
            };
        };
        for k in [
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "if",
            "pattern",
            "patternProperties",
        ] {
            if o.contains_key(k) {
                return Err(format!("the schema keyword {k:?} is not supported"));
            }
        }
        if let Some(c) = o.get("const") {
            return Ok(Schema::OneOf(vec![c.to_string()]));
        }
        if let Some(e) = o.get("enum") {
            let values = e
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or("enum must be a non-empty list")?;
            return Ok(Schema::OneOf(values.iter().map(Value::to_string).collect()));
        }
        match o.get("type") {
            None => {
                if o.contains_key("properties") {
                    Self::typed("object", o)
                } else {
                    Ok(Schema::Any)
                }
            }
            Some(Value::String(t)) => Self::typed(t, o),
            Some(Value::Array(types)) => {
                let all = types
                    .iter()
                    .map(|t| {
                        t.as_str()
                            .ok_or_else(|| format!("type must name types, not {t}"))
                            .and_then(|t| Self::typed(t, o))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if all.is_empty() {
                    return Err("type is an empty list".into());
                }
                Ok(Schema::Types(all))
            }
            Some(t) => Err(format!("type must be a string or a list, not {t}")),
        }
    }

    fn typed(t: &str, o: &serde_json::Map<String, Value>) -> Result<Schema, String> {
        Ok(match t {
            "object" => {
                let properties = match o.get("properties") {
                    None => None,
                    Some(Value::Object(p)) => Some(
                        p.iter()
                            .map(|(k, v)| Ok((k.clone(), Schema::from_json(v)?)))
                            .collect::<Result<Vec<_>, String>>()?,
                    ),
                    Some(p) => return Err(format!("properties must be an object, not {p}")),
                };
                let required: Vec<String> = match o.get("required") {
                    None => Vec::new(),
                    Some(Value::Array(r)) => r
                        .iter()
                        .map(|k| {
                            k.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| format!("required must list names, not {k}"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(r) => return Err(format!("required must be a list, not {r}")),
                };
                if let Some(p) = &properties {
                    if let Some(k) = required.iter().find(|k| !p.iter().any(|(n, _)| n == *k)) {
                        return Err(format!("required names {k:?}, which is not a property"));
                    }
                }
                Schema::Object {
                    properties,
                    required,
                    ordered: false,
                }
            }
            "array" => {
                let items = match o.get("items") {
                    None => Schema::Any,
                    Some(i) => Schema::from_json(i)?,
                };
                let count = |k: &str| -> Result<Option<usize>, String> {
                    o.get(k)
                        .map(|v| {
                            v.as_u64()
                                .map(|n| n as usize)
                                .ok_or_else(|| format!("{k} must be a non-negative integer"))
                        })
                        .transpose()
                };
                Schema::Array {
                    items: Box::new(items),
                    min_items: count("minItems")?.unwrap_or(0),
                    max_items: count("maxItems")?,
                }
            }
            "string" => Schema::String,
            "number" => Schema::Number,
            "integer" => Schema::Integer,
            "boolean" => Schema::Boolean,
            "null" => Schema::Null,
            other => return Err(format!("unknown type {other:?}")),
        })
    }

    /// Whether a value of this schema may start with `c`.
    fn starts_with(&self, c: char) -> bool {
        match self {
            Schema::Any => matches!(c, '{' | '[' | '"' | '-' | '0'..='9' | 't' | 'f' | 'n'),
            Schema::Object { .. } => c == '{',
            Schema::Array { .. } => c == '[',
            Schema::String => c == '"',
            Schema::Number | Schema::Integer => c == '-' || c.is_ascii_digit(),
            Schema::Boolean => c == 't' || c == 'f',
            Schema::Null => c == 'n',
            Schema::OneOf(v) => v.iter().any(|s| s.starts_with(c)),
            Schema::Types(t) => t.iter().any(|s| s.starts_with(c)),
            Schema::ByName(v) => v.iter().any(|(_, s)| s.starts_with(c)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum ObjectAt {
    /// After `{`: a key or `}`.
    Open,
    /// In a key: its text so far.
    Key(String, bool),
    /// After a key: `:`.
    Colon(String),
    /// After a value: `,` or `}`.
    Next,
    /// After `,`: a key.
    Comma,
}

#[derive(Debug, Clone, PartialEq)]
enum Number {
    Sign,
    Zero,
    Int(usize),
    Dot,
    Frac(usize),
    E,
    ESign,
    Exp(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    /// A value of this schema is expected next.
    Value(Schema),
    Object {
        properties: Option<Vec<(String, Schema)>>,
        required: Vec<String>,
        ordered: bool,
        seen: Vec<String>,
        at: ObjectAt,
        /// The last exact literal among its values (for `Schema::ByName`).
        literal: Option<String>,
    },
    Array {
        items: Schema,
        min: usize,
        max: Option<usize>,
        count: usize,
        /// After a value (`,` or `]` next), else after `[` or `,`.
        after_value: bool,
    },
    /// Inside a string: `escape` counts the characters of an escape still to come (a `u`
    /// escape's hex digits count down from 4; `\` alone is marked by `usize::MAX`).
    String {
        escape: usize,
    },
    Number {
        integer: bool,
        at: Number,
    },
    /// One of these exact texts; `typed` so far.
    Literal {
        options: Vec<String>,
        typed: String,
    },
}

impl Frame {
    /// The frame may end here (its value is whole).
    fn complete(&self) -> bool {
        match self {
            Frame::Number { at, .. } => {
                matches!(
                    at,
                    Number::Zero | Number::Int(_) | Number::Frac(_) | Number::Exp(_)
                )
            }
            Frame::Literal { options, typed } => options.iter().any(|o| o == typed),
            _ => false,
        }
    }
}

/// Where a JSON document stands, character by character.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonConstraint {
    stack: Vec<Frame>,
    gap: Gap,
}

/// The whitespace since the last JSON token.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gap {
    None,
    Space,
    Indent(usize),
    /// No more whitespace here.
    Full,
}

enum CharStep {
    /// Taken; the frame goes on.
    Took,
    /// Taken, and it ended the frame's value.
    Ended,
    /// Not for this frame; it ends here if it may, and the character goes to its parent.
    No,
    /// Taken, and a new frame starts above this one.
    Push(Box<Frame>),
}

impl JsonConstraint {
    pub fn new(schema: Schema) -> Self {
        JsonConstraint {
            stack: vec![Frame::Value(schema)],
            gap: Gap::None,
        }
    }

    /// A JSON value of `schema` between two exact texts (a tool call's `<tool_call>` and
    /// `</tool_call>`).
    pub fn wrapped(prefix: &str, schema: Schema, suffix: &str) -> Self {
        let literal = |t: &str| Frame::Literal {
            options: vec![t.to_string()],
            typed: String::new(),
        };
        let mut stack = Vec::new();
        if !suffix.is_empty() {
            stack.push(literal(suffix));
        }
        stack.push(Frame::Value(schema));
        if !prefix.is_empty() {
            stack.push(literal(prefix));
        }
        JsonConstraint {
            stack,
            gap: Gap::None,
        }
    }

    /// The document is whole (nothing but end-of-sequence may follow).
    pub fn is_complete(&self) -> bool {
        match self.stack.as_slice() {
            [] => true,
            [only] => only.complete(),
            _ => false,
        }
    }

    /// Whether `text` may follow what was fed (without changing anything).
    pub fn accepts(&self, text: &str) -> bool {
        let mut chars = text.chars();
        let Some(first) = chars.next() else {
            return false;
        };
        // Most tokens fail at their first character: test it before copying the stack.
        let mut probe = self.clone();
        if !probe.feed_char(first) {
            return false;
        }
        chars.all(|c| probe.feed_char(c))
    }

    /// Take `text`; false (and a state to throw away) if it breaks the document.
    pub fn feed(&mut self, text: &str) -> bool {
        text.chars().all(|c| self.feed_char(c))
    }

    fn feed_char(&mut self, c: char) -> bool {
        let in_string = matches!(self.stack.last(), Some(Frame::String { .. }));
        // Whitespace inside a wrapper's exact text is that text's, and no more follows it.
        if is_ws(c)
            && matches!(self.stack.last(), Some(Frame::Literal { typed, options })
            if options.iter().any(|o| o.starts_with(&format!("{typed}{c}"))))
        {
            let ok = self.take(c);
            self.gap = Gap::Full;
            return ok;
        }
        if is_ws(c) && !in_string {
            let gap = match (self.gap, c) {
                (Gap::None, ' ') => Gap::Space,
                (Gap::None, '\n') => Gap::Indent(0),
                (Gap::Indent(n), ' ' | '\t') if n < MAX_INDENT => Gap::Indent(n + 1),
                _ => return false,
            };
            if !self.take(c) {
                return false;
            }
            self.gap = gap;
            return true;
        }
        let ok = self.take(c);
        if ok {
            self.gap = Gap::None;
        }
        ok
    }

    fn take(&mut self, c: char) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return false;
            };
            let complete = top.complete();
            match step(top, c) {
                CharStep::Push(frame) => {
                    self.stack.push(*frame);
                    return true;
                }
                CharStep::Took => return true,
                CharStep::Ended => {
                    let ended = self.stack.pop();
                    self.child_ended(ended);
                    return true;
                }
                CharStep::No if complete => {
                    let ended = self.stack.pop();
                    self.child_ended(ended);
                }
                CharStep::No => return false,
            }
        }
    }

    /// A value ended: its parent moves past it.
    fn child_ended(&mut self, child: Option<Frame>) {
        match self.stack.last_mut() {
            Some(Frame::Object { at, literal, .. }) => {
                *at = ObjectAt::Next;
                if let Some(Frame::Literal { typed, .. }) = child {
                    *literal = Some(typed);
                }
            }
            Some(Frame::Array {
                count, after_value, ..
            }) => {
                *count += 1;
                *after_value = true;
            }
            _ => {}
        }
    }

    /// Set to -inf the logits of tokens that cannot follow; end-of-sequence ids only when the
    /// document is whole. Returns false when nothing at all may follow (the caller ends).
    pub fn mask(&self, texts: &TokenTexts, eos: &[u32], logits: &mut [f32]) -> bool {
        let complete = self.is_complete();
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            let ok = if eos.contains(&(id as u32)) {
                complete
            } else {
                texts.text(id as u32).is_some_and(|t| self.accepts(t))
            };
            if ok {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        any
    }
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// One character for the top frame.
fn step(frame: &mut Frame, c: char) -> CharStep {
    match frame {
        Frame::Value(schema) => {
            if is_ws(c) {
                return CharStep::Took;
            }
            if !schema.starts_with(c) {
                return CharStep::No;
            }
            *frame = start_value(schema.clone(), c);
            match frame {
                // A one-character literal (an enum of digits) may be whole already.
                Frame::Literal { options, typed } if literal_ended(options, typed) => {
                    CharStep::Ended
                }
                _ => CharStep::Took,
            }
        }
        Frame::Object {
            properties,
            required,
            ordered,
            seen,
            at,
            literal,
        } => {
            let properties = &*properties;
            let keys = next_keys(properties, required, seen, *ordered);
            let key_allowed = |k: &str| keys.as_ref().is_none_or(|ks| ks.contains(&k));
            let key_prefix_ok = |k: &str| {
                keys.as_ref()
                    .is_none_or(|ks| ks.iter().any(|n| n.starts_with(k)))
            };
            match at {
                ObjectAt::Open | ObjectAt::Comma if is_ws(c) => CharStep::Took,
                ObjectAt::Open if c == '}' => {
                    if required.iter().all(|r| seen.contains(r)) {
                        CharStep::Ended
                    } else {
                        CharStep::No
                    }
                }
                ObjectAt::Open | ObjectAt::Comma if c == '"' => {
                    *at = ObjectAt::Key(String::new(), false);
                    CharStep::Took
                }
                ObjectAt::Key(key, escaped) => {
                    if *escaped {
                        // Keys with escapes are taken as written (any object's keys only).
                        if properties.is_some() || !"\"\\/bfnrt".contains(c) {
                            return CharStep::No;
                        }
                        key.push('\\');
                        key.push(c);
                        *escaped = false;
                        return CharStep::Took;
                    }
                    match c {
                        '"' if key_allowed(key) => {
                            *at = ObjectAt::Colon(std::mem::take(key));
                            CharStep::Took
                        }
                        '"' => CharStep::No,
                        '\\' if properties.is_none() => {
                            *escaped = true;
                            CharStep::Took
                        }
                        c if (c as u32) < 0x20 || c == '\\' => CharStep::No,
                        c => {
                            key.push(c);
                            if key_prefix_ok(key) {
                                CharStep::Took
                            } else {
                                key.pop();
                                CharStep::No
                            }
                        }
                    }
                }
                ObjectAt::Colon(_) if is_ws(c) => CharStep::Took,
                ObjectAt::Colon(key) if c == ':' => {
                    let key = std::mem::take(key);
                    let mut schema = match properties {
                        None => Schema::Any,
                        Some(p) => p
                            .iter()
                            .find(|(n, _)| *n == key)
                            .map(|(_, s)| s.clone())
                            .unwrap_or(Schema::Any),
                    };
                    if let Schema::ByName(variants) = &schema {
                        schema = variants
                            .iter()
                            .find(|(name, _)| Some(name) == literal.as_ref())
                            .map_or(Schema::any_object(), |(_, s)| s.clone());
                    }
                    seen.push(key);
                    *at = ObjectAt::Next;
                    CharStep::Push(Box::new(Frame::Value(schema)))
                }
                ObjectAt::Next if is_ws(c) => CharStep::Took,
                ObjectAt::Next if c == ',' => {
                    let more = keys.as_ref().is_none_or(|ks| !ks.is_empty());
                    if more {
                        *at = ObjectAt::Comma;
                        CharStep::Took
                    } else {
                        CharStep::No
                    }
                }
                ObjectAt::Next if c == '}' => {
                    if required.iter().all(|r| seen.contains(r)) {
                        CharStep::Ended
                    } else {
                        CharStep::No
                    }
                }
                _ => CharStep::No,
            }
        }
        Frame::Array {
            items,
            min,
            max,
            count,
            after_value,
        } => {
            if is_ws(c) {
                return CharStep::Took;
            }
            if c == ']' && (*after_value || *count == 0) && *count >= *min {
                return CharStep::Ended;
            }
            if *after_value {
                if c == ',' && max.is_none_or(|m| *count < m) {
                    *after_value = false;
                    return CharStep::Took;
                }
                return CharStep::No;
            }
            if (*count > 0 || max.is_none_or(|m| m > 0)) && items.starts_with(c) {
                let mut value = Frame::Value(items.clone());
                // The new value takes this very character.
                return match step(&mut value, c) {
                    CharStep::Took => CharStep::Push(Box::new(value)),
                    CharStep::Ended => {
                        *count += 1;
                        *after_value = true;
                        CharStep::Took
                    }
                    _ => CharStep::No,
                };
            }
            CharStep::No
        }
        Frame::String { escape } => {
            if *escape == usize::MAX {
                return match c {
                    '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => {
                        *escape = 0;
                        CharStep::Took
                    }
                    'u' => {
                        *escape = 4;
                        CharStep::Took
                    }
                    _ => CharStep::No,
                };
            }
            if *escape > 0 {
                if c.is_ascii_hexdigit() {
                    *escape -= 1;
                    return CharStep::Took;
                }
                return CharStep::No;
            }
            match c {
                '"' => CharStep::Ended,
                '\\' => {
                    *escape = usize::MAX;
                    CharStep::Took
                }
                c if (c as u32) < 0x20 => CharStep::No,
                _ => CharStep::Took,
            }
        }
        Frame::Number { integer, at } => {
            let next = match (&*at, c) {
                (Number::Sign, '0') => Number::Zero,
                (Number::Sign, '1'..='9') => Number::Int(1),
                (Number::Int(n), '0'..='9') if *n < MAX_DIGITS => Number::Int(n + 1),
                (Number::Zero | Number::Int(_), '.') if !*integer => Number::Dot,
                (Number::Dot, '0'..='9') => Number::Frac(1),
                (Number::Frac(n), '0'..='9') if *n < MAX_DIGITS => Number::Frac(n + 1),
                (Number::Zero | Number::Int(_) | Number::Frac(_), 'e' | 'E') if !*integer => {
                    Number::E
                }
                (Number::E, '+' | '-') => Number::ESign,
                (Number::E | Number::ESign, '0'..='9') => Number::Exp(1),
                (Number::Exp(n), '0'..='9') if *n < 3 => Number::Exp(n + 1),
                _ => return CharStep::No,
            };
            *at = next;
            CharStep::Took
        }
        Frame::Literal { options, typed } => {
            typed.push(c);
            if options.iter().any(|o| o.starts_with(typed.as_str())) {
                if literal_ended(options, typed) {
                    CharStep::Ended
                } else {
                    CharStep::Took
                }
            } else {
                typed.pop();
                CharStep::No
            }
        }
    }
}

/// The keys that may come next in an object (None: any key).
fn next_keys<'p>(
    properties: &'p Option<Vec<(String, Schema)>>,
    required: &[String],
    seen: &[String],
    ordered: bool,
) -> Option<Vec<&'p str>> {
    let p = properties.as_ref()?;
    if !ordered {
        return Some(
            p.iter()
                .filter(|(n, _)| !seen.contains(n))
                .map(|(n, _)| n.as_str())
                .collect(),
        );
    }
    // In order: the keys after the last one written, up to the first required one.
    let start = seen
        .last()
        .and_then(|l| p.iter().position(|(n, _)| n == l))
        .map_or(0, |i| i + 1);
    let mut keys = Vec::new();
    for (n, _) in &p[start..] {
        keys.push(n.as_str());
        if required.contains(n) {
            break;
        }
    }
    Some(keys)
}

/// `typed` is one of the options and no longer option continues it.
fn literal_ended(options: &[String], typed: &str) -> bool {
    options.iter().any(|o| o == typed)
        && !options
            .iter()
            .any(|o| o.len() > typed.len() && o.starts_with(typed))
}

/// The frame for a value of `schema` that starts with `c` (which `schema.starts_with`).
fn start_value(schema: Schema, c: char) -> Frame {
    match schema {
        Schema::Types(types) => {
            let first = types
                .into_iter()
                .find(|t| t.starts_with(c))
                .expect("checked");
            start_value(first, c)
        }
        Schema::Any => match c {
            '{' => start_value(Schema::any_object(), c),
            '[' => start_value(
                Schema::Array {
                    items: Box::new(Schema::Any),
                    min_items: 0,
                    max_items: None,
                },
                c,
            ),
            '"' => Frame::String { escape: 0 },
            't' | 'f' => start_value(Schema::Boolean, c),
            'n' => start_value(Schema::Null, c),
            _ => start_value(Schema::Number, c),
        },
        Schema::Object {
            properties,
            required,
            ordered,
        } => Frame::Object {
            properties,
            required,
            ordered,
            seen: Vec::new(),
            at: ObjectAt::Open,
            literal: None,
        },
        Schema::Array {
            items,
            min_items,
            max_items,
        } => Frame::Array {
            items: *items,
            min: min_items,
            max: max_items,
            count: 0,
            after_value: false,
        },
        Schema::String => Frame::String { escape: 0 },
        Schema::Number | Schema::Integer => Frame::Number {
            integer: schema == Schema::Integer,
            at: if c == '-' {
                Number::Sign
            } else if c == '0' {
                Number::Zero
            } else {
                Number::Int(1)
            },
        },
        Schema::Boolean => Frame::Literal {
            options: vec!["true".into(), "false".into()],
            typed: c.to_string(),
        },
        Schema::Null => Frame::Literal {
            options: vec!["null".into()],
            typed: c.to_string(),
        },
        Schema::OneOf(options) => Frame::Literal {
            options,
            typed: c.to_string(),
        },
        // Only meaningful inside an object (resolved there); alone, any object.
        Schema::ByName(_) => start_value(Schema::any_object(), c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid(schema: &Schema, text: &str) -> bool {
        let mut c = JsonConstraint::new(schema.clone());
        c.feed(text) && c.is_complete()
    }

    fn prefix_ok(schema: &Schema, text: &str) -> bool {
        JsonConstraint::new(schema.clone()).feed(text)
    }

    #[test]
    fn any_object_takes_json_objects_and_nothing_else() {
        let s = Schema::any_object();
        for ok in [
            "{}",
            "{\"a\": 1}",
            "{ \"a\" : [1, 2.5, -3e4, true, null, \"x\\n\\u00e9\"], \"b\": {\"c\": {}} }",
            "{\"k\\\"ey\": \"é\"}",
        ] {
            assert!(valid(&s, ok), "{ok}");
            assert!(serde_json::from_str::<Value>(ok).is_ok());
        }
        for bad in [
            "[]",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": tru}",
            "{,}",
            "{\"a\":1,}",
        ] {
            assert!(!valid(&s, bad), "{bad}");
        }
        assert!(prefix_ok(&s, "{\"a\": [1, "));
        assert!(!prefix_ok(&s, "x"));
        // Whole, then nothing more.
        assert!(!prefix_ok(&s, "{} {}"));
    }

    #[test]
    fn a_wrapped_value_needs_its_prefix_and_suffix() {
        let schema = Schema::from_json(&json!({"type": "object",
            "properties": {"n": {"enum": [1, 2]}}, "required": ["n"]}))
        .unwrap();
        let ok = "<call>\n{\"n\": 2}\n</call>";
        let mut c = JsonConstraint::wrapped("<call>\n", schema.clone(), "\n</call>");
        assert!(c.feed(ok) && c.is_complete());
        let c = JsonConstraint::wrapped("<call>\n", schema, "\n</call>");
        assert!(!c.accepts("{"));
        assert!(!c.accepts("<call>\n{\"n\": 3"));
        assert!(!c.accepts("<call>\n{\"n\": 1}x"));
    }

    #[test]
    fn a_schema_fixes_keys_types_and_required_ones() {
        let s = Schema::from_json(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "ok": {"type": ["boolean", "null"]}
            },
            "required": ["name", "age"]
        }))
        .unwrap();
        assert!(valid(&s, "{\"name\": \"x\", \"age\": 3}"));
        assert!(valid(
            &s,
            "{\"age\": 3, \"name\": \"x\", \"tags\": [\"a\", \"b\"], \"ok\": null}"
        ));
        assert!(!valid(&s, "{\"name\": \"x\"}"), "age is required");
        assert!(!prefix_ok(&s, "{\"nam\": "), "not a key");
        assert!(!prefix_ok(&s, "{\"zzz"), "not a key prefix");
        assert!(!prefix_ok(&s, "{\"age\": 3.5"), "an integer");
        assert!(!prefix_ok(&s, "{\"age\": \"3\""), "not a string");
        assert!(!prefix_ok(&s, "{\"age\": 1, \"age\""), "each key once");
        assert!(!prefix_ok(&s, "{\"tags\": [\"c\""), "enum");
        assert!(!prefix_ok(&s, "{\"tags\": [\"a\", \"a\", "), "maxItems");
        assert!(prefix_ok(&s, "{\"ok\": tr"));
    }

    #[test]
    fn bad_and_unsupported_schemas_say_why() {
        for (schema, why) in [
            (json!({"type": "thing"}), "unknown type"),
            (json!({"anyOf": []}), "anyOf"),
            (
                json!({"type": "object", "required": ["x"], "properties": {}}),
                "not a property",
            ),
            (json!("string"), "must be an object"),
            (json!({"enum": []}), "enum"),
        ] {
            let e = Schema::from_json(&schema).unwrap_err();
            assert!(e.contains(why), "{schema}: {e}");
        }
    }

    #[test]
    fn the_mask_allows_continuations_and_eos_only_when_whole() {
        let c = JsonConstraint::new(Schema::any_object());
        let texts = TokenTexts::from_texts(vec![
            Some("{".into()),
            Some("}".into()),
            Some("{\"".into()),
            Some("hello".into()),
            None,
            None,
        ]);
        let mut logits = vec![0.0; 6];
        assert!(c.mask(&texts, &[5], &mut logits));
        let allowed: Vec<bool> = logits.iter().map(|l| l.is_finite()).collect();
        assert_eq!(allowed, [true, false, true, false, false, false]);
        let mut c = c;
        assert!(c.feed("{}"));
        let mut logits = vec![0.0; 6];
        c.mask(&texts, &[5], &mut logits);
        assert!(logits[5].is_finite() && !logits[0].is_finite());
    }
}
