//! Decoding policy, on top of the model and the text side: the sampler and its parameters,
//! stop strings, constrained decoding (JSON documents and schemas, tool-call syntax), the
//! per-sequence decoding state that run, chat and the server all step ([`decoding`]), and
//! sequences that keep their cache between prompts ([`session`]).
//!
//! Imports `model` (forwards over sequences) and `text` (detokenizer, prompts, token texts);
//! nothing of HTTP or the terminal.

pub mod constrain;
pub mod decoding;
pub mod sampler;
pub mod session;
pub mod stops;
