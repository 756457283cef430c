//! Constrained decoding for JSON: a character-level recognizer of JSON (any JSON object, or a
//! value of a JSON schema), and the token mask it gives. Before each sample, every token whose
//! text cannot continue a valid document is masked out; end-of-sequence is allowed only once
//! the document is complete. So `response_format` is enforced, not just asked for.
//!
//! Written here because the crates that do this (llguidance, outlines-core) bring their own
//! tokenizer layers and large grammar engines; the subset of JSON Schema clients send for
//! structured output (objects with properties and required keys, arrays, strings, numbers,
//! integers, booleans, null, enum and const) fits in one small pushdown recognizer.
//!
//! The mask runs on the model's thread before every token, so its cost is bounded by the
//! vocabulary, not the schema: the schema is compiled once into a grammar that every copy of
//! the recognizer shares, a state is a short stack of plain values (copied per character
//! tried), and the vocabulary is walked in text order, so a prefix many tokens share is fed
//! once and a prefix that fails rules out at once every token that starts with it.

use std::sync::Arc;

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
                let (min_items, max_items) = (count("minItems")?.unwrap_or(0), count("maxItems")?);
                // No array satisfies it: generation would write one and be stuck in it.
                if max_items.is_some_and(|max| max < min_items) {
                    return Err(format!(
                        "minItems ({min_items}) is more than maxItems ({})",
                        max_items.unwrap_or_default()
                    ));
                }
                Schema::Array {
                    items: Box::new(items),
                    min_items,
                    max_items,
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
}

/// A schema compiled once per constraint and shared by every state of it (an `Arc`): states
/// are small stacks of plain values that point into it, so the mask can copy them per
/// character without copying the schema.
#[derive(Debug)]
struct Grammar {
    nodes: Vec<Node>,
    /// Sets of exact texts (enums, `true`/`false`, a tool call's wrapper), each sorted and
    /// without repeats, so the ones that continue what was typed are one range of it.
    lits: Vec<Vec<String>>,
}

type NodeId = u32;
type LitId = u32;

/// Nodes every grammar has, at these places: what `Any` becomes once its first character is
/// known.
const ANY: NodeId = 0;
const ANY_OBJECT: NodeId = 1;
const ANY_ARRAY: NodeId = 2;
const BOOLEAN: NodeId = 3;
const NULL: NodeId = 4;

#[derive(Debug)]
struct Node {
    kind: Kind,
    /// The characters a value may start with, sorted.
    first: Vec<char>,
}

#[derive(Debug)]
enum Kind {
    Any,
    Object(Object),
    Array {
        items: NodeId,
        min: usize,
        max: Option<usize>,
    },
    String,
    Number {
        integer: bool,
    },
    /// One of these exact texts (`Schema::OneOf`, booleans, null).
    Literal(LitId),
    Types(Vec<NodeId>),
    /// Sorted by name, without repeats (the first of a name is the one found).
    ByName(Vec<(String, NodeId)>),
}

#[derive(Debug)]
struct Object {
    /// With `properties` (closed): only these keys, `names` are the properties. Without: any
    /// key, and `names` are the required ones (the only keys worth telling apart).
    closed: bool,
    ordered: bool,
    /// In the schema's order, without repeats; a key is known by its index here. As JSON
    /// writes them between the quotes (`a\"b` for `a"b`): keys are matched as written.
    names: Vec<String>,
    /// Each property's value (closed objects).
    values: Vec<NodeId>,
    required: Vec<bool>,
    required_count: u32,
    /// A required name that is no property: the object can never close.
    unsatisfiable: bool,
    /// Indices of `names` sorted by text, so the names a typed key may become are one range.
    sorted: Vec<u32>,
    /// For ordered objects: the first required index at or after each index (`names.len()`
    /// if none), which bounds the keys that may come next.
    next_required: Vec<u32>,
}

impl Object {
    fn name(&self, sorted_index: u32) -> &str {
        &self.names[self.sorted[sorted_index as usize] as usize]
    }
}

impl Grammar {
    fn new(schema: &Schema) -> (Grammar, NodeId) {
        let mut g = Grammar {
            nodes: Vec::new(),
            lits: Vec::new(),
        };
        let boolean = g.lit(vec!["true".into(), "false".into()]);
        let null = g.lit(vec!["null".into()]);
        let fixed = [
            g.push(Kind::Any),
            g.add(&Schema::any_object()),
            g.push(Kind::Array {
                items: ANY,
                min: 0,
                max: None,
            }),
            g.push(Kind::Literal(boolean)),
            g.push(Kind::Literal(null)),
        ];
        debug_assert_eq!(fixed, [ANY, ANY_OBJECT, ANY_ARRAY, BOOLEAN, NULL]);
        let root = g.add(schema);
        (g, root)
    }

    fn add(&mut self, schema: &Schema) -> NodeId {
        let kind = match schema {
            Schema::Any => Kind::Any,
            Schema::Object {
                properties,
                required,
                ordered,
            } => Kind::Object(self.object(properties.as_deref(), required, *ordered)),
            Schema::Array {
                items,
                min_items,
                max_items,
            } => Kind::Array {
                items: self.add(items),
                min: *min_items,
                max: *max_items,
            },
            Schema::String => Kind::String,
            Schema::Number => Kind::Number { integer: false },
            Schema::Integer => Kind::Number { integer: true },
            Schema::Boolean => return BOOLEAN,
            Schema::Null => return NULL,
            Schema::OneOf(options) => Kind::Literal(self.lit(options.clone())),
            Schema::Types(types) => Kind::Types(types.iter().map(|t| self.add(t)).collect()),
            Schema::ByName(variants) => {
                let mut variants: Vec<(String, NodeId)> = variants
                    .iter()
                    .map(|(name, s)| (name.clone(), self.add(s)))
                    .collect();
                // Stable: of variants with one name, the first stays.
                variants.sort_by(|a, b| a.0.cmp(&b.0));
                variants.dedup_by(|later, first| later.0 == first.0);
                Kind::ByName(variants)
            }
        };
        self.push(kind)
    }

    fn object(
        &mut self,
        properties: Option<&[(String, Schema)]>,
        required: &[String],
        ordered: bool,
    ) -> Object {
        let mut names: Vec<String> = Vec::new();
        let mut values = Vec::new();
        let written = |name: &str| {
            let quoted = Value::from(name).to_string();
            quoted[1..quoted.len() - 1].to_string()
        };
        let mut index = std::collections::HashMap::new();
        let mut unsatisfiable = false;
        match properties {
            Some(p) => {
                for (name, schema) in p {
                    // A repeated property is the first one (as a lookup by name finds it).
                    if !index.contains_key(name.as_str()) {
                        index.insert(name.as_str(), names.len());
                        names.push(written(name));
                        values.push(self.add(schema));
                    }
                }
            }
            None => {
                for name in required {
                    if !index.contains_key(name.as_str()) {
                        index.insert(name.as_str(), names.len());
                        names.push(written(name));
                    }
                }
            }
        }
        let mut flags = vec![false; names.len()];
        for r in required {
            match index.get(r.as_str()) {
                Some(&i) => flags[i] = true,
                None => unsatisfiable = true,
            }
        }
        let mut sorted: Vec<u32> = (0..names.len() as u32).collect();
        sorted.sort_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
        let mut next_required = vec![names.len() as u32; names.len() + 1];
        for i in (0..names.len()).rev() {
            next_required[i] = if flags[i] {
                i as u32
            } else {
                next_required[i + 1]
            };
        }
        Object {
            closed: properties.is_some(),
            ordered,
            required_count: flags.iter().filter(|&&r| r).count() as u32,
            names,
            values,
            required: flags,
            unsatisfiable,
            sorted,
            next_required,
        }
    }

    fn lit(&mut self, mut options: Vec<String>) -> LitId {
        options.sort();
        options.dedup();
        self.lits.push(options);
        (self.lits.len() - 1) as LitId
    }

    fn push(&mut self, kind: Kind) -> NodeId {
        let mut first: Vec<char> = match &kind {
            Kind::Any => "{[\"-0123456789tfn".chars().collect(),
            Kind::Object(_) => vec!['{'],
            Kind::Array { .. } => vec!['['],
            Kind::String => vec!['"'],
            Kind::Number { .. } => "-0123456789".chars().collect(),
            Kind::Literal(lit) => self.lits[*lit as usize]
                .iter()
                .filter_map(|o| o.chars().next())
                .collect(),
            Kind::Types(types) => types
                .iter()
                .flat_map(|&t| self.nodes[t as usize].first.iter().copied())
                .collect(),
            Kind::ByName(variants) => variants
                .iter()
                .flat_map(|(_, t)| self.nodes[*t as usize].first.iter().copied())
                .collect(),
        };
        first.sort_unstable();
        first.dedup();
        self.nodes.push(Node { kind, first });
        (self.nodes.len() - 1) as NodeId
    }

    fn kind(&self, node: NodeId) -> &Kind {
        &self.nodes[node as usize].kind
    }

    /// Whether a value of `node` may start with `c`.
    fn starts_with(&self, node: NodeId, c: char) -> bool {
        self.nodes[node as usize].first.binary_search(&c).is_ok()
    }

    fn object_of(&self, node: NodeId) -> &Object {
        match self.kind(node) {
            Kind::Object(o) => o,
            _ => unreachable!("an object frame's node is an object"),
        }
    }

    fn option(&self, lit: LitId, i: u32) -> &str {
        &self.lits[lit as usize][i as usize]
    }
}

/// What was typed of one of a sorted list of texts (a literal's options, an object's names):
/// the first `len` bytes of each text in `lo..hi`, which are all the texts that start so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Typed {
    lo: u32,
    hi: u32,
    len: u32,
}

impl Typed {
    /// Nothing typed yet, of `n` texts.
    fn start(n: usize) -> Typed {
        Typed {
            lo: 0,
            hi: n as u32,
            len: 0,
        }
    }

    fn is_empty(self) -> bool {
        self.lo == self.hi
    }

    /// After `c` too: the texts that go on with it (`text(i)`: the i-th text in sorted order).
    fn then<'t>(self, c: char, text: impl Fn(u32) -> &'t str) -> Typed {
        let mut buf = [0; 4];
        let next = c.encode_utf8(&mut buf).as_bytes();
        let len = self.len as usize;
        // Every text in the range starts with the same `len` bytes, and they are sorted: the
        // ones whose next bytes are `next` come together, after those that sort before it.
        let rest = |i: u32| &text(i).as_bytes()[len..];
        let lo = partition(self.lo, self.hi, |i| rest(i) < next);
        let hi = partition(lo, self.hi, |i| rest(i).starts_with(next));
        Typed {
            lo,
            hi,
            len: (len + next.len()) as u32,
        }
    }

    /// The text typed exactly (the first of the range: it sorts before its continuations).
    fn exact<'t>(self, text: impl Fn(u32) -> &'t str) -> Option<u32> {
        (!self.is_empty() && text(self.lo).len() == self.len as usize).then_some(self.lo)
    }

    /// Typed exactly, and no longer text continues it.
    fn ended<'t>(self, text: impl Fn(u32) -> &'t str) -> bool {
        self.hi - self.lo == 1 && self.exact(text).is_some()
    }
}

/// The first index of `lo..hi` where `pred` is false (true before it, false after).
fn partition(lo: u32, hi: u32, pred: impl Fn(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ObjectAt {
    /// After `{`: a key or `}`.
    Open,
    /// In a key: what was typed of it (of the names, sorted), and whether a `\` came last.
    Key(Typed, bool),
    /// After a key: `:`. The key's index in the object's names, if it is one.
    Colon(Option<u32>),
    /// After a value: `,` or `}`.
    Next,
    /// After `,`: a key.
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// A string's `\` whose escape character has not come yet.
const BACKSLASH: u8 = u8::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Frame {
    /// A value of this node is expected next.
    Value(NodeId),
    Object {
        node: NodeId,
        at: ObjectAt,
        /// Where the object's names seen start in `State::seen`.
        seen: u32,
        /// The last name written (ordered objects go on after it).
        last: Option<u32>,
        required_seen: u32,
        /// The last exact literal among its values (for `Schema::ByName`): an option index.
        literal: Option<(LitId, u32)>,
    },
    Array {
        node: NodeId,
        count: usize,
        /// After a value (`,` or `]` next), else after `[` or `,`.
        after_value: bool,
    },
    /// Inside a string: `escape` counts the characters of an escape still to come (a `u`
    /// escape's hex digits count down from 4; `\` alone is `BACKSLASH`).
    String {
        escape: u8,
    },
    Number {
        integer: bool,
        at: Number,
    },
    /// One of these exact texts.
    Literal {
        lit: LitId,
        typed: Typed,
    },
}

impl Frame {
    /// The frame may end here (its value is whole).
    fn complete(&self, g: &Grammar) -> bool {
        match *self {
            Frame::Number { at, .. } => {
                matches!(
                    at,
                    Number::Zero | Number::Int(_) | Number::Frac(_) | Number::Exp(_)
                )
            }
            Frame::Literal { lit, typed } => typed.exact(|i| g.option(lit, i)).is_some(),
            _ => false,
        }
    }
}

/// Where a JSON document stands, character by character: the compiled schema, shared, and a
/// small state that is cheap to copy.
#[derive(Debug, Clone)]
pub struct JsonConstraint {
    grammar: Arc<Grammar>,
    state: State,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct State {
    stack: Vec<Frame>,
    /// The names seen by the objects on the stack (indices into their names, each object's
    /// sorted), one object after the other in stack order: only the top frame takes
    /// characters, so the object that takes a key owns the end of it. A few numbers per open
    /// object, however many properties the schema has.
    seen: Vec<u32>,
    gap: Gap,
}

impl Clone for State {
    fn clone(&self) -> Self {
        State {
            stack: self.stack.clone(),
            seen: self.seen.clone(),
            gap: self.gap,
        }
    }

    /// Into the buffers already there: the mask copies a state per character it tries.
    fn clone_from(&mut self, source: &Self) {
        self.stack.clone_from(&source.stack);
        self.seen.clone_from(&source.seen);
        self.gap = source.gap;
    }
}

/// The whitespace since the last JSON token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    Push(Frame),
}

impl JsonConstraint {
    pub fn new(schema: Schema) -> Self {
        let (grammar, root) = Grammar::new(&schema);
        JsonConstraint {
            grammar: Arc::new(grammar),
            state: State {
                stack: vec![Frame::Value(root)],
                seen: Vec::new(),
                gap: Gap::None,
            },
        }
    }

    /// A JSON value of `schema` between two exact texts (a tool call's `<tool_call>` and
    /// `</tool_call>`).
    pub fn wrapped(prefix: &str, schema: Schema, suffix: &str) -> Self {
        let (mut grammar, root) = Grammar::new(&schema);
        let mut literal = |t: &str| Frame::Literal {
            lit: grammar.lit(vec![t.to_string()]),
            typed: Typed::start(1),
        };
        let mut stack = Vec::new();
        if !suffix.is_empty() {
            stack.push(literal(suffix));
        }
        stack.push(Frame::Value(root));
        if !prefix.is_empty() {
            stack.push(literal(prefix));
        }
        JsonConstraint {
            grammar: Arc::new(grammar),
            state: State {
                stack,
                seen: Vec::new(),
                gap: Gap::None,
            },
        }
    }

    /// The document is whole (nothing but end-of-sequence may follow).
    pub fn is_complete(&self) -> bool {
        match self.state.stack.as_slice() {
            [] => true,
            [only] => only.complete(&self.grammar),
            _ => false,
        }
    }

    /// Whether `text` may follow what was fed (without changing anything).
    #[cfg(test)]
    pub fn accepts(&self, text: &str) -> bool {
        !text.is_empty() && self.clone().feed(text)
    }

    /// Take `text`; false (and a state to throw away) if it breaks the document.
    pub fn feed(&mut self, text: &str) -> bool {
        let g = &*self.grammar;
        text.chars().all(|c| self.state.feed_char(g, c))
    }

    /// Set to -inf the logits of tokens that cannot follow; end-of-sequence ids only when the
    /// document is whole. Returns false when nothing at all may follow (the caller ends).
    pub fn mask(&self, texts: &TokenTexts, eos: &[u32], logits: &mut [f32]) -> bool {
        let mut allowed = vec![false; logits.len()];
        self.allowed(texts, &mut allowed);
        let complete = self.is_complete();
        let mut any = false;
        for (id, (l, ok)) in logits.iter_mut().zip(allowed).enumerate() {
            let ok = if eos.contains(&(id as u32)) {
                complete
            } else {
                ok
            };
            if ok {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        any
    }

    /// Mark the tokens whose whole text may follow. The tokens come in text order, each
    /// state after a prefix kept, so a prefix that many tokens share is fed once, and every
    /// token after it that shares a prefix found wrong is passed over unfed: the work is one
    /// character per distinct prefix tried, not per token and character. A character that
    /// leaves the state as it was (text inside a string, where almost every token may follow)
    /// is not even fed. Returns the characters fed and those passed over that way.
    fn allowed(&self, texts: &TokenTexts, allowed: &mut [bool]) -> Work {
        let g = &*self.grammar;
        // states[at[k]]: the state after the first k characters of the token at hand. A state
        // is either at its own depth (at[k] == k) or the same one as its parent's.
        let mut states = vec![self.state.clone()];
        let mut at = vec![0];
        // The last token's first `good` characters may follow (their states are in `at`);
        // its first `bad` ones may not.
        let mut good = 0;
        let mut bad: Option<usize> = None;
        let mut work = Work::default();
        for &(id, shared) in texts.by_text() {
            let shared = shared as usize;
            if bad.is_some_and(|b| shared >= b) {
                continue;
            }
            bad = None;
            good = good.min(shared);
            at.truncate(good + 1);
            let text = texts.text(id).unwrap_or_default();
            for c in text.chars().skip(good) {
                let from = at[good];
                if states[from].passes(c) {
                    work.passed += 1;
                    at.push(from);
                    good += 1;
                    continue;
                }
                let to = good + 1;
                if states.len() <= to {
                    states.resize(to + 1, self.state.clone());
                }
                let (done, next) = states.split_at_mut(to);
                next[0].clone_from(&done[from]);
                work.fed += 1;
                if !next[0].feed_char(g, c) {
                    bad = Some(good + 1);
                    break;
                }
                at.push(to);
                good += 1;
            }
            if bad.is_none() {
                if let Some(a) = allowed.get_mut(id as usize) {
                    *a = true;
                }
            }
        }
        work
    }
}

/// What one mask took: characters fed to a copy of a state, and characters that left a
/// state as it was (passed over without a copy).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Work {
    fed: usize,
    passed: usize,
}

impl State {
    /// `c` would leave the state as it is: a plain character inside a string (the string
    /// goes on, and a string's characters leave no whitespace behind).
    fn passes(&self, c: char) -> bool {
        matches!(self.stack.last(), Some(Frame::String { escape: 0 }))
            && self.gap == Gap::None
            && c != '"'
            && c != '\\'
            && c as u32 >= 0x20
    }

    fn feed_char(&mut self, g: &Grammar, c: char) -> bool {
        let in_string = matches!(self.stack.last(), Some(Frame::String { .. }));
        // Whitespace inside a wrapper's exact text is that text's, and no more follows it.
        if is_ws(c) {
            if let Some(&Frame::Literal { lit, typed }) = self.stack.last() {
                if !typed.then(c, |i| g.option(lit, i)).is_empty() {
                    let ok = self.take(g, c);
                    self.gap = Gap::Full;
                    return ok;
                }
            }
        }
        if is_ws(c) && !in_string {
            let gap = match (self.gap, c) {
                (Gap::None, ' ') => Gap::Space,
                (Gap::None, '\n') => Gap::Indent(0),
                (Gap::Indent(n), ' ' | '\t') if n < MAX_INDENT => Gap::Indent(n + 1),
                _ => return false,
            };
            if !self.take(g, c) {
                return false;
            }
            self.gap = gap;
            return true;
        }
        let ok = self.take(g, c);
        if ok {
            self.gap = Gap::None;
        }
        ok
    }

    fn take(&mut self, g: &Grammar, c: char) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return false;
            };
            let complete = top.complete(g);
            match step(g, top, &mut self.seen, c) {
                CharStep::Push(frame) => {
                    self.stack.push(frame);
                    return true;
                }
                CharStep::Took => return true,
                CharStep::Ended => {
                    self.end();
                    return true;
                }
                CharStep::No if complete => self.end(),
                CharStep::No => return false,
            }
        }
    }

    /// The top value ended: its parent moves past it.
    fn end(&mut self) {
        let child = self.stack.pop();
        if let Some(Frame::Object { seen, .. }) = child {
            self.seen.truncate(seen as usize);
        }
        match self.stack.last_mut() {
            Some(Frame::Object { at, literal, .. }) => {
                *at = ObjectAt::Next;
                if let Some(Frame::Literal { lit, typed }) = child {
                    // It ended whole: the option typed is the first of its range.
                    *literal = Some((lit, typed.lo));
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
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// One character for the top frame (`seen`: the names seen by the objects on the stack).
fn step(g: &Grammar, frame: &mut Frame, seen: &mut Vec<u32>, c: char) -> CharStep {
    match frame {
        Frame::Value(node) => {
            if is_ws(c) {
                return CharStep::Took;
            }
            if !g.starts_with(*node, c) {
                return CharStep::No;
            }
            *frame = start_value(g, *node, c, seen.len() as u32);
            match *frame {
                // A one-character literal (an enum of digits) may be whole already.
                Frame::Literal { lit, typed } if typed.ended(|i| g.option(lit, i)) => {
                    CharStep::Ended
                }
                _ => CharStep::Took,
            }
        }
        Frame::Object {
            node,
            at,
            seen: mine,
            last,
            required_seen,
            literal,
        } => {
            let o = g.object_of(*node);
            // This object is the top frame: its names seen are the end of `seen`.
            let mine = *mine as usize;
            // In order, the names after the last one written, up to the first required one.
            let start = last.map_or(0, |l| l + 1);
            // Whether the name at this index (schema order) may be the next key.
            let allowed = |i: u32| {
                if !o.closed {
                    true
                } else if o.ordered {
                    start <= i && i <= o.next_required[start as usize]
                } else {
                    seen[mine..].binary_search(&i).is_err()
                }
            };
            let closes = !o.unsatisfiable && *required_seen == o.required_count;
            // Some key may come next. Names seen are distinct, so fewer of them than the names
            // leaves one unseen.
            let more = if !o.closed {
                true
            } else if o.ordered {
                (start as usize) < o.names.len()
            } else {
                seen.len() - mine < o.names.len()
            };
            match at {
                ObjectAt::Open | ObjectAt::Comma if is_ws(c) => CharStep::Took,
                ObjectAt::Open if c == '}' => {
                    if closes {
                        CharStep::Ended
                    } else {
                        CharStep::No
                    }
                }
                // Not when no key may come (`"properties": {}`): `{"` would be a dead end.
                ObjectAt::Open | ObjectAt::Comma if c == '"' && more => {
                    *at = ObjectAt::Key(Typed::start(o.names.len()), false);
                    CharStep::Took
                }
                ObjectAt::Key(typed, escaped) => {
                    let name = |i: u32| o.name(i);
                    // A closed object's key must stay the start of a name allowed.
                    let fits =
                        |t: Typed| !o.closed || (t.lo..t.hi).any(|i| allowed(o.sorted[i as usize]));
                    if *escaped {
                        // Any object's keys take the short escapes; a closed one's, its names'.
                        let next = typed.then(c, name);
                        if (!o.closed && !"\"\\/bfnrt".contains(c)) || !fits(next) {
                            return CharStep::No;
                        }
                        *typed = next;
                        *escaped = false;
                        return CharStep::Took;
                    }
                    match c {
                        '"' => {
                            let key = typed.exact(name).map(|i| o.sorted[i as usize]);
                            if !o.closed || key.is_some_and(allowed) {
                                *at = ObjectAt::Colon(key);
                                CharStep::Took
                            } else {
                                CharStep::No
                            }
                        }
                        c if (c as u32) < 0x20 => CharStep::No,
                        c => {
                            let next = typed.then(c, name);
                            if !fits(next) {
                                return CharStep::No;
                            }
                            *typed = next;
                            *escaped = c == '\\';
                            CharStep::Took
                        }
                    }
                }
                ObjectAt::Colon(_) if is_ws(c) => CharStep::Took,
                ObjectAt::Colon(key) if c == ':' => {
                    let key = *key;
                    let mut value = match key {
                        Some(i) if o.closed => o.values[i as usize],
                        _ => ANY,
                    };
                    if let Kind::ByName(variants) = g.kind(value) {
                        let written = literal.map(|(lit, i)| g.option(lit, i));
                        value = written
                            .and_then(|w| {
                                variants.binary_search_by(|(n, _)| n.as_str().cmp(w)).ok()
                            })
                            .map_or(ANY_OBJECT, |v| variants[v].1);
                    }
                    if let Some(i) = key {
                        // Any object's keys may repeat; a name counts once.
                        if let Err(at) = seen[mine..].binary_search(&i) {
                            seen.insert(mine + at, i);
                            if o.required[i as usize] {
                                *required_seen += 1;
                            }
                        }
                        *last = Some(i);
                    }
                    *at = ObjectAt::Next;
                    CharStep::Push(Frame::Value(value))
                }
                ObjectAt::Next if is_ws(c) => CharStep::Took,
                ObjectAt::Next if c == ',' => {
                    if more {
                        *at = ObjectAt::Comma;
                        CharStep::Took
                    } else {
                        CharStep::No
                    }
                }
                ObjectAt::Next if c == '}' => {
                    if closes {
                        CharStep::Ended
                    } else {
                        CharStep::No
                    }
                }
                _ => CharStep::No,
            }
        }
        Frame::Array {
            node,
            count,
            after_value,
        } => {
            let Kind::Array { items, min, max } = *g.kind(*node) else {
                unreachable!("an array frame's node is an array");
            };
            if is_ws(c) {
                return CharStep::Took;
            }
            if c == ']' && (*after_value || *count == 0) && *count >= min {
                return CharStep::Ended;
            }
            if *after_value {
                if c == ',' && max.is_none_or(|m| *count < m) {
                    *after_value = false;
                    return CharStep::Took;
                }
                return CharStep::No;
            }
            if (*count > 0 || max.is_none_or(|m| m > 0)) && g.starts_with(items, c) {
                let mut value = Frame::Value(items);
                // The new value takes this very character.
                return match step(g, &mut value, seen, c) {
                    CharStep::Took => CharStep::Push(value),
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
            if *escape == BACKSLASH {
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
                    *escape = BACKSLASH;
                    CharStep::Took
                }
                c if (c as u32) < 0x20 => CharStep::No,
                _ => CharStep::Took,
            }
        }
        Frame::Number { integer, at } => {
            let next = match (*at, c) {
                (Number::Sign, '0') => Number::Zero,
                (Number::Sign, '1'..='9') => Number::Int(1),
                (Number::Int(n), '0'..='9') if n < MAX_DIGITS => Number::Int(n + 1),
                (Number::Zero | Number::Int(_), '.') if !*integer => Number::Dot,
                (Number::Dot, '0'..='9') => Number::Frac(1),
                (Number::Frac(n), '0'..='9') if n < MAX_DIGITS => Number::Frac(n + 1),
                (Number::Zero | Number::Int(_) | Number::Frac(_), 'e' | 'E') if !*integer => {
                    Number::E
                }
                (Number::E, '+' | '-') => Number::ESign,
                (Number::E | Number::ESign, '0'..='9') => Number::Exp(1),
                (Number::Exp(n), '0'..='9') if n < 3 => Number::Exp(n + 1),
                _ => return CharStep::No,
            };
            *at = next;
            CharStep::Took
        }
        Frame::Literal { lit, typed } => {
            let option = |i: u32| g.option(*lit, i);
            let next = typed.then(c, option);
            if next.is_empty() {
                return CharStep::No;
            }
            *typed = next;
            if next.ended(option) {
                CharStep::Ended
            } else {
                CharStep::Took
            }
        }
    }
}

/// The frame for a value of `node` that starts with `c` (which `g.starts_with(node, c)`); an
/// object's names seen will start at `seen_at`, the end of `State::seen` (it is about to be
/// the top frame).
fn start_value(g: &Grammar, node: NodeId, c: char, seen_at: u32) -> Frame {
    match g.kind(node) {
        Kind::Types(types) => {
            let first = types
                .iter()
                .copied()
                .find(|&t| g.starts_with(t, c))
                .expect("checked");
            start_value(g, first, c, seen_at)
        }
        Kind::Any => match c {
            '{' => start_value(g, ANY_OBJECT, c, seen_at),
            '[' => start_value(g, ANY_ARRAY, c, seen_at),
            '"' => Frame::String { escape: 0 },
            't' | 'f' => start_value(g, BOOLEAN, c, seen_at),
            'n' => start_value(g, NULL, c, seen_at),
            _ => Frame::Number {
                integer: false,
                at: number_start(c),
            },
        },
        Kind::Object(_) => Frame::Object {
            node,
            at: ObjectAt::Open,
            seen: seen_at,
            last: None,
            required_seen: 0,
            literal: None,
        },
        Kind::Array { .. } => Frame::Array {
            node,
            count: 0,
            after_value: false,
        },
        Kind::String => Frame::String { escape: 0 },
        &Kind::Number { integer } => Frame::Number {
            integer,
            at: number_start(c),
        },
        &Kind::Literal(lit) => Frame::Literal {
            lit,
            typed: Typed::start(g.lits[lit as usize].len()).then(c, |i| g.option(lit, i)),
        },
        // Only meaningful inside an object (resolved there); alone, any object.
        Kind::ByName(_) => start_value(g, ANY_OBJECT, c, seen_at),
    }
}

fn number_start(c: char) -> Number {
    match c {
        '-' => Number::Sign,
        '0' => Number::Zero,
        _ => Number::Int(1),
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
            (
                json!({"type": "array", "minItems": 3, "maxItems": 2}),
                "minItems (3) is more than maxItems (2)",
            ),
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

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    /// Which tokens may follow, the slow and obvious way: each token's text fed character by
    /// character into a fresh copy of the recognizer; end-of-sequence only when whole.
    fn reference_mask(c: &JsonConstraint, texts: &[Option<String>], eos: &[u32]) -> Vec<bool> {
        (0..texts.len())
            .map(|id| {
                if eos.contains(&(id as u32)) {
                    return c.is_complete();
                }
                texts[id].as_ref().is_some_and(|t| {
                    let mut copy = c.clone();
                    t.chars().all(|ch| copy.feed(ch.encode_utf8(&mut [0; 4])))
                })
            })
            .collect()
    }

    fn fast_mask(c: &JsonConstraint, texts: &TokenTexts, n: usize, eos: &[u32]) -> Vec<bool> {
        let mut logits = vec![0.0; n];
        c.mask(texts, eos, &mut logits);
        logits.iter().map(|l| l.is_finite()).collect()
    }

    /// The prefixes the walk of `allowed` must try: the distinct prefixes of the tokens' texts
    /// whose own prefix one character shorter may follow (is empty or accepted).
    fn live_prefixes<'t>(c: &JsonConstraint, texts: &'t [Option<String>]) -> Vec<&'t str> {
        let mut prefixes = HashSet::new();
        for t in texts.iter().flatten() {
            for (i, ch) in t.char_indices() {
                prefixes.insert(&t[..i + ch.len_utf8()]);
            }
        }
        prefixes
            .into_iter()
            .filter(|p| {
                let parent = &p[..p.len() - p.chars().last().unwrap().len_utf8()];
                parent.is_empty() || c.accepts(parent)
            })
            .collect()
    }

    /// A random vocabulary: every printable ASCII character alone (so no document is stuck
    /// for want of a token), and tokens made of JSON pieces and `words`, some of them repeated
    /// and some without text.
    fn vocabulary(rng: &mut StdRng, words: &[String], n: usize) -> Vec<Option<String>> {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            " ",
            "\n",
            "  ",
            "\t",
            "-",
            ".",
            "e",
            "E",
            "+",
            "0",
            "1",
            "7",
            "true",
            "false",
            "null",
            "u00e9",
            "é",
            "東",
            "a",
            "Z",
            "\": ",
            "\", \"",
            "{\"",
            "\"}",
            "]}",
            "}}",
            "\n</",
            "tool_call>",
            "<",
            ">",
            "/",
        ];
        let mut texts: Vec<Option<String>> = (0x20u8..0x7f)
            .map(|b| Some((b as char).to_string()))
            .chain(["\n", "\t"].map(|s| Some(s.to_string())))
            .collect();
        while texts.len() < n {
            if rng.random_ratio(1, 50) {
                texts.push(None);
                continue;
            }
            let mut t = String::new();
            for _ in 0..rng.random_range(1..=4) {
                if !words.is_empty() && rng.random_ratio(1, 3) {
                    t.push_str(&words[rng.random_range(0..words.len())]);
                } else {
                    t.push_str(pieces[rng.random_range(0..pieces.len())]);
                }
            }
            texts.push(Some(t));
        }
        texts
    }

    /// The strings in a schema (its property names, enum values) and their quoted forms.
    fn words_of(schema: &Value) -> Vec<String> {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                Value::Object(o) => {
                    for (k, x) in o {
                        out.push(k.clone());
                        walk(x, out);
                    }
                }
                _ => {}
            }
        }
        let mut plain = Vec::new();
        walk(schema, &mut plain);
        plain
            .into_iter()
            .flat_map(|w| {
                let quoted = json!(w).to_string();
                [w, format!("{quoted}:"), quoted]
            })
            .collect()
    }

    /// The constraint for a required call of one tool, as the server builds it.
    fn tool_call(arguments: Schema) -> JsonConstraint {
        let call = Schema::Object {
            properties: Some(vec![
                (
                    "name".into(),
                    Schema::OneOf(vec!["\"get_weather\"".into(), "\"f\"".into()]),
                ),
                (
                    "arguments".into(),
                    Schema::ByName(vec![
                        ("\"get_weather\"".into(), arguments),
                        ("\"f\"".into(), Schema::any_object()),
                    ]),
                ),
            ]),
            required: vec!["name".into(), "arguments".into()],
            ordered: true,
        };
        JsonConstraint::wrapped("<tool_call>\n", call, "\n</tool_call>")
    }

    fn corpus_schemas() -> Vec<Value> {
        crate::fuzz::seeds("schema")
            .iter()
            .map(|b| serde_json::from_slice(b).expect("a seed schema is JSON"))
            .collect()
    }

    /// Walk `c` through a random document, choosing each token among those the reference
    /// allows, and call `check` at every state.
    fn random_walk(
        c: &mut JsonConstraint,
        texts: &[Option<String>],
        steps: usize,
        rng: &mut StdRng,
        mut check: impl FnMut(&JsonConstraint),
    ) {
        for _ in 0..steps {
            check(c);
            let ok: Vec<usize> = reference_mask(c, texts, &[])
                .iter()
                .enumerate()
                .filter(|(_, &a)| a)
                .map(|(i, _)| i)
                .collect();
            if ok.is_empty() {
                return;
            }
            let t = texts[ok[rng.random_range(0..ok.len())]].as_ref().unwrap();
            assert!(c.feed(t), "an allowed token is taken");
        }
    }

    #[test]
    fn the_mask_is_what_each_token_fed_alone_allows() {
        let mut rng = StdRng::seed_from_u64(17);
        let mut states = 0;
        for (k, v) in corpus_schemas().iter().enumerate() {
            let schema = Schema::from_json(v).unwrap();
            let words = words_of(v);
            for wrapped in [false, true] {
                let texts = vocabulary(&mut rng, &words, 600);
                let eos = [texts.len() as u32 - 1, 3];
                let index = TokenTexts::from_texts(texts.clone());
                let mut c = if wrapped {
                    tool_call(schema.clone())
                } else {
                    JsonConstraint::new(schema.clone())
                };
                random_walk(&mut c, &texts, 40, &mut rng, |c| {
                    states += 1;
                    assert_eq!(
                        fast_mask(c, &index, texts.len(), &eos),
                        reference_mask(c, &texts, &eos),
                        "schema {k} ({v}), wrapped: {wrapped}, state {:?}",
                        c.state
                    );
                });
            }
        }
        assert!(states > 500, "only {states} states compared");
    }

    #[test]
    fn the_mask_feeds_one_character_per_live_prefix() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut strings = 0;
        for v in corpus_schemas().iter().take(6) {
            let texts = vocabulary(&mut rng, &words_of(v), 800);
            let index = TokenTexts::from_texts(texts.clone());
            let mut c = JsonConstraint::new(Schema::from_json(v).unwrap());
            random_walk(&mut c, &texts, 20, &mut rng, |c| {
                let mut allowed = vec![false; texts.len()];
                let work = c.allowed(&index, &mut allowed);
                let live = live_prefixes(c, &texts);
                assert_eq!(work.fed + work.passed, live.len(), "{v} at {:?}", c.state);
                // Inside a string, only a prefix with a quote, a backslash or a control
                // character can change the state: the others are passed over, not fed.
                if c.state.stack.last() == Some(&Frame::String { escape: 0 }) {
                    let special = |p: &str| p.contains(['"', '\\']) || p.contains(char::is_control);
                    let changing = live.iter().filter(|p| special(p)).count();
                    assert!(work.fed <= changing, "{work:?}, {changing}");
                    strings += 1;
                }
            });
        }
        assert!(strings > 5, "only {strings} states inside a string");
    }

    /// Schemas of about 5 MB: an object of 20,000 properties, an enum of 200,000 values, and
    /// a call of one of 5,000 tools.
    fn huge_schemas() -> Vec<(&'static str, JsonConstraint, &'static str)> {
        let properties: serde_json::Map<String, Value> = (0..20_000)
            .map(|i| {
                let p = json!({"type": "object", "properties": {
                    "unit": {"enum": ["celsius", "fahrenheit", "kelvin"]},
                    "value": {"type": "number"},
                    "note": {"type": "string", "description": "a note, as long as needed"}},
                    "required": ["unit"]});
                (format!("property_{i}"), p)
            })
            .collect();
        let object = Schema::from_json(&json!({"type": "object", "properties": properties,
            "required": ["property_19999"]}))
        .unwrap();
        let values: Vec<Value> = (0..200_000).map(|i| json!(format!("v{i:07}"))).collect();
        let values =
            Schema::from_json(&json!({"type": "array", "items": {"enum": values}})).unwrap();
        let tools = (0..5_000)
            .map(|i| {
                let p = json!({"type": "object", "properties": {
                    "city": {"type": "string"}, "days": {"type": "integer"},
                    "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]});
                (
                    json!(format!("tool_{i}")).to_string(),
                    Schema::from_json(&p).unwrap(),
                )
            })
            .collect::<Vec<_>>();
        let names = Schema::OneOf(tools.iter().map(|(n, _)| n.clone()).collect());
        let call = Schema::Object {
            properties: Some(vec![
                ("name".into(), names),
                ("arguments".into(), Schema::ByName(tools)),
            ]),
            required: vec!["name".into(), "arguments".into()],
            ordered: true,
        };
        vec![
            (
                "20,000 properties",
                JsonConstraint::new(object),
                "{\"property_1234\": {\"note\": \"",
            ),
            (
                "200,000 values",
                JsonConstraint::new(values),
                "[\"v0001234\", \"v00",
            ),
            (
                "5,000 tools",
                JsonConstraint::new(call),
                "{\"name\": \"tool_4321\", \"arguments\": {\"",
            ),
        ]
    }

    #[test]
    fn a_huge_schema_costs_no_more_per_character() {
        let mut rng = StdRng::seed_from_u64(50);
        let words: Vec<String> = ["property_1", "v00", "tool_4", "city", "note", "unit"]
            .map(String::from)
            .to_vec();
        let texts = vocabulary(&mut rng, &words, 50_000);
        let index = TokenTexts::from_texts(texts.clone());
        for (what, mut c, prefix) in huge_schemas() {
            for (i, ch) in prefix.char_indices() {
                // At each place along the prefix: the work is one character per live prefix
                // of the vocabulary, and what is copied per character a handful of numbers.
                let mut allowed = vec![false; texts.len()];
                let work = c.allowed(&index, &mut allowed);
                assert_eq!(
                    work.fed + work.passed,
                    live_prefixes(&c, &texts).len(),
                    "{what} after {:?}",
                    &prefix[..i]
                );
                let size = c.state.stack.len() + c.state.seen.len();
                assert!(size <= 6, "{what}: {size} values copied per character");
                assert!(c.feed(ch.encode_utf8(&mut [0; 4])), "{what}: {prefix}");
            }
            // And the mask still tells right from wrong there.
            let mut allowed = vec![false; texts.len()];
            c.allowed(&index, &mut allowed);
            assert_eq!(allowed, reference_mask(&c, &texts, &[]), "{what}");
        }
    }

    #[test]
    fn huge_schemas_hold_their_documents() {
        let [(_, object, _), (_, values, _), (_, call, _)] = huge_schemas().try_into().unwrap();
        let fed = |c: &JsonConstraint, text: &str| {
            let mut c = c.clone();
            c.feed(text) && c.is_complete()
        };
        assert!(fed(&object, "{\"property_19999\": {\"unit\": \"kelvin\"}}"));
        assert!(
            !fed(&object, "{\"property_1\": {\"unit\": \"kelvin\"}}"),
            "required"
        );
        assert!(
            !fed(&object, "{\"property_20000\": {}}"),
            "no such property"
        );
        assert!(fed(&values, "[\"v0199999\", \"v0000000\"]"));
        assert!(!fed(&values, "[\"v0200000\"]"));
        assert!(fed(
            &call,
            "{\"name\": \"tool_7\", \"arguments\": {\"city\": \"Oslo\"}}"
        ));
        assert!(!fed(
            &call,
            "{\"name\": \"tool_7\", \"arguments\": {\"days\": 2}}"
        ));
        assert!(!fed(&call, "{\"name\": \"tool_5000\", \"arguments\": {}}"));
    }

    /// Where a schema sits in a JSON value (keys and list indices from the root).
    fn schema_paths(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        match v {
            Value::Object(o) => {
                out.push(path.clone());
                for (k, x) in o {
                    path.push(json!(k));
                    schema_paths(x, path, out);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(json!(i));
                    schema_paths(x, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn at<'v>(v: &'v mut Value, path: &[Value]) -> &'v mut Value {
        path.iter().fold(v, |v, p| match p {
            Value::String(k) => &mut v[k.as_str()],
            _ => &mut v[p.as_u64().unwrap() as usize],
        })
    }

    fn depth(v: &Value) -> usize {
        match v {
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// One random edit of a schema: a type, a bound, `required`, an enum or const, a key
    /// removed, or one of its objects copied in as items or a property.
    fn edit(root: &mut Value, rng: &mut StdRng) {
        let mut paths = Vec::new();
        schema_paths(root, &mut Vec::new(), &mut paths);
        if paths.is_empty() {
            return;
        }
        let donor = at(root, &paths[rng.random_range(0..paths.len())].clone()).clone();
        let target = at(root, &paths[rng.random_range(0..paths.len())]);
        let Value::Object(o) = target else {
            return;
        };
        let values = [
            json!(1),
            json!(12),
            json!(-1),
            json!(2.5),
            json!("a"),
            json!("a b"),
            json!("ab"),
            json!("é\"\\"),
            json!(null),
            json!(true),
            json!([]),
            json!({"x": [1]}),
        ];
        let pick = |rng: &mut StdRng| values[rng.random_range(0..values.len())].clone();
        let names: Vec<String> = o
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        match rng.random_range(0..9) {
            0 => {
                let types = [
                    "object", "array", "string", "number", "integer", "boolean", "null",
                ];
                // From `rng`, as every choice here, so that an input replays.
                let t = |rng: &mut StdRng| json!(types[rng.random_range(0..types.len())]);
                o.insert(
                    "type".into(),
                    if rng.random() {
                        t(rng)
                    } else {
                        json!([t(rng), t(rng)])
                    },
                );
            }
            1 if !o.is_empty() => {
                let k = o.keys().nth(rng.random_range(0..o.len())).unwrap().clone();
                o.remove(&k);
            }
            2 => {
                let k = if rng.random() { "minItems" } else { "maxItems" };
                o.insert(k.into(), json!(rng.random_range(0..4)));
            }
            3 => {
                let required: Vec<&String> = names.iter().filter(|_| rng.random()).collect();
                o.insert("required".into(), json!(required));
            }
            4 => {
                let n = rng.random_range(1..5);
                o.insert("enum".into(), (0..n).map(|_| pick(rng)).collect());
            }
            5 => {
                o.insert("const".into(), pick(rng));
            }
            6 => {
                o.insert("items".into(), donor);
            }
            7 => {
                let name = ["a", "ab", "b", "名", ""][rng.random_range(0..5)];
                let p = o.entry("properties").or_insert(json!({}));
                if let Value::Object(p) = p {
                    p.insert(name.into(), donor);
                }
            }
            _ => {
                o.insert("type".into(), json!("object"));
            }
        }
    }

    /// The fuzzer's bytes as a case: the JSON value they start with (what follows only adds
    /// entropy), changed by up to four random edits, and the generator that drives the walk,
    /// both drawn from a hash of all the bytes so that an input replays.
    fn fuzz_case(bytes: &[u8]) -> Option<(Value, StdRng)> {
        use std::hash::{Hash, Hasher};
        let mut v = serde_json::Deserializer::from_slice(bytes)
            .into_iter::<Value>()
            .next()?
            .ok()?;
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hash);
        let mut rng = StdRng::seed_from_u64(hash.finish());
        for _ in 0..rng.random_range(0..=4) {
            edit(&mut v, &mut rng);
        }
        // Requests are parsed by serde_json, which refuses nesting deeper than 128.
        (depth(&v) <= 128).then_some((v, rng))
    }

    /// Whether a whole document is JSON. serde_json is stricter than JSON's grammar in two
    /// ways the recognizer is not: it refuses unpaired surrogate escapes (`\ud800`), here made
    /// into `\u0041` first, and numbers beyond f64 (`1e999`).
    fn is_json(doc: &str) -> bool {
        let mut paired = String::new();
        let mut rest = doc;
        while let Some(i) = rest.find('\\') {
            paired.push_str(&rest[..i]);
            let surrogate = rest.get(i..i + 6).is_some_and(|e| {
                e.starts_with("\\u")
                    && u32::from_str_radix(&e[2..], 16).is_ok_and(|n| (0xd800..0xe000).contains(&n))
            });
            // The backslash and the character it escapes, or the whole surrogate escape.
            let n = match surrogate {
                true => 6,
                false => 1 + rest[i + 1..].chars().next().map_or(0, char::len_utf8),
            };
            paired.push_str(if surrogate {
                "\\u0041"
            } else {
                &rest[i..i + n]
            });
            rest = &rest[i + n..];
        }
        paired.push_str(rest);
        match serde_json::from_str::<Value>(&paired) {
            Ok(_) => true,
            Err(e) => e.to_string().contains("number out of range"),
        }
    }

    /// The recognizer on one fuzz case: a random walk through a document of a mutated schema
    /// (alone or as a tool call's arguments), checking at every step that the mask is what
    /// each token fed alone allows, that a document not whole can always go on (the
    /// vocabulary has every character of the schema's texts), that a whole one is JSON, and
    /// that random text never panics.
    fn schema_target(bytes: &[u8]) -> bool {
        let Some((v, mut rng)) = fuzz_case(bytes) else {
            return false;
        };
        let Ok(schema) = Schema::from_json(&v) else {
            return false;
        };
        let mut texts = vocabulary(&mut rng, &words_of(&v), 200);
        let mut chars: Vec<char> = v.to_string().chars().collect();
        chars.sort_unstable();
        chars.dedup();
        texts.extend(chars.iter().map(|c| Some(c.to_string())));
        texts.push(Some("</s>".into()));
        let eos = [texts.len() as u32 - 1];
        let index = TokenTexts::from_texts(texts.clone());
        let wrapped = rng.random_ratio(1, 3);
        let mut c = if wrapped {
            tool_call(schema)
        } else {
            JsonConstraint::new(schema)
        };
        let mut doc = String::new();
        for _ in 0..100 {
            let fast = fast_mask(&c, &index, texts.len(), &eos);
            assert_eq!(
                fast,
                reference_mask(&c, &texts, &eos),
                "after {doc:?}, schema {v}"
            );
            let next: Vec<usize> = (0..texts.len() - 1).filter(|&i| fast[i]).collect();
            if c.is_complete() {
                let inner = match wrapped {
                    true => doc
                        .strip_prefix("<tool_call>\n")
                        .and_then(|d| d.strip_suffix("\n</tool_call>"))
                        .expect("the wrapper"),
                    false => &doc,
                };
                assert!(is_json(inner), "whole but not JSON: {doc:?}, schema {v}");
                if next.is_empty() || rng.random_ratio(1, 4) {
                    break;
                }
            } else {
                assert!(!next.is_empty(), "stuck after {doc:?}, schema {v}");
            }
            if rng.random_ratio(1, 10) {
                let junk: String = (0..rng.random_range(1..6))
                    .map(|_| char::from_u32(rng.random_range(0..0x3000)).unwrap_or('x'))
                    .collect();
                let mut copy = c.clone();
                copy.feed(&junk);
                copy.is_complete();
            }
            let t = texts[next[rng.random_range(0..next.len())]]
                .as_deref()
                .unwrap();
            assert!(c.feed(t), "an allowed token is taken");
            doc.push_str(t);
        }
        true
    }

    #[test]
    fn fuzz_the_schema_recognizer() {
        crate::fuzz::run_for("schema", &crate::fuzz::seeds("schema"), schema_target);
    }

    #[test]
    fn property_names_that_need_escapes_are_written_escaped() {
        let s = Schema::from_json(&json!({"type": "object",
            "properties": {"a\"b": {"type": "integer"}, "c\\d\ne": {"type": "integer"}},
            "required": ["a\"b", "c\\d\ne"]}))
        .unwrap();
        assert!(valid(&s, r#"{"a\"b": 1, "c\\d\ne": 2}"#));
        assert!(!prefix_ok(&s, r#"{"a""#), "the quote is escaped");
        assert!(!prefix_ok(&s, r#"{"a\u0022b"#), "as JSON writes it");
        // Without properties, a required name is matched the same way.
        let s = Schema::from_json(&json!({"type": "object", "required": ["a\"b"]})).unwrap();
        assert!(valid(&s, r#"{"x": 1, "a\"b": 2}"#));
        assert!(!valid(&s, r#"{"a\\\"b": 2}"#));
    }

    /// Found by the fuzzer: `{"` was taken though no key could follow it.
    #[test]
    fn an_object_without_properties_opens_no_key() {
        let s = Schema::from_json(&json!({"type": "object", "properties": {}})).unwrap();
        assert!(valid(&s, "{ }"));
        assert!(!prefix_ok(&s, "{\""));
        // Nor a comma once every key was written.
        let s = Schema::from_json(&json!({"type": "object", "properties": {"a": {}}})).unwrap();
        assert!(!prefix_ok(&s, "{\"a\": 1, "));
    }

    /// Found by the fuzzer: with fewer items allowed than required, generation started an
    /// array it could never finish.
    #[test]
    fn an_array_that_cannot_be_is_refused() {
        let s = json!({"type": "array", "minItems": 2, "maxItems": 1});
        let e = Schema::from_json(&json!({"type": "object", "properties": {"a": s}})).unwrap_err();
        assert_eq!(e, "minItems (2) is more than maxItems (1)");
        let s = Schema::from_json(&json!({"type": "array", "minItems": 1, "maxItems": 1}));
        assert!(valid(&s.unwrap(), "[1]"));
    }
}
