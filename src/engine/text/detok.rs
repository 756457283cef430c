//! Streaming detokenization: text is released as soon as it is certain, so that the streamed
//! text equals the final decoded text for any UTF-8, byte-fallback tokens and SentencePiece
//! spaces included. Nothing is held back longer than an incomplete character.
//!
//! The method (from text-generation-inference): decode a small window of recent tokens with and
//! without the newest ones; what the longer decode adds is new text, unless it ends in U+FFFD
//! (a character whose bytes have not all arrived yet).

use anyhow::Result;
use tokenizers::Tokenizer;

pub struct Detokenizer<'a> {
    tokenizer: &'a Tokenizer,
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'a> Detokenizer<'a> {
    /// `context`: the tokens before the first generated one (the prompt), so that the first
    /// generated token decodes with its leading space as it would in the full text.
    pub fn new(tokenizer: &'a Tokenizer, context: &[u32]) -> Self {
        let tail = &context[context.len().saturating_sub(6)..];
        Detokenizer {
            tokenizer,
            tokens: tail.to_vec(),
            prefix_offset: 0,
            read_offset: tail.len(),
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("cannot decode tokens: {e}"))
    }

    /// Add a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, token: u32) -> Result<String> {
        self.tokens.push(token);
        let prefix = self.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.tokens[self.prefix_offset..])?;
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match after(&prefix, &full) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.tokens.len();
                Ok(new)
            }
            _ => Ok(String::new()),
        }
    }

    /// Whatever is still held back at the end of generation.
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.tokens[self.prefix_offset..])?;
        self.prefix_offset = self.tokens.len();
        self.read_offset = self.tokens.len();
        Ok(after(&prefix, &full).unwrap_or("").to_string())
    }
}

/// What `full` (the window decoded with the newest tokens) adds to `prefix` (the window
/// without them), or None while that is not yet certain.
///
/// Usually `full` starts with `prefix`. Byte-fallback decoders decode a run of byte tokens as
/// one piece, and a run that is not UTF-8 becomes one U+FFFD per byte: a byte arriving after
/// valid ones (`[`, then a stray continuation byte) turns the text already released into U+FFFD
/// too. That text cannot be taken back; what is new is then what follows as many characters as
/// were released, so the stream reads as the bytes decoded leniently ("[�k") and nothing after
/// the stray byte is lost.
fn after<'f>(prefix: &str, full: &'f str) -> Option<&'f str> {
    if let Some(new) = full.strip_prefix(prefix) {
        return Some(new);
    }
    let released = prefix.chars().count();
    full.char_indices().nth(released).map(|(at, _)| &full[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-fallback tokens (CJK, emoji) stream out as whole characters, and the streamed text
    /// equals the final decode. Uses the stories260K tokenizer owrun carries.
    #[test]
    fn streamed_text_equals_the_final_decode_for_any_utf8() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/stories260K/tokenizer.json");
        let tok = Tokenizer::from_file(&path).unwrap();
        for text in [
            "Once upon a time",
            "日本語 café 😀 ok",
            "a\nb  c",
            "ümlaut → ∑",
        ] {
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            let (context, generated) = ids.split_at(1);
            let mut d = Detokenizer::new(&tok, context);
            let mut streamed = String::new();
            for &id in generated {
                let piece = d.push(id).unwrap();
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "{text:?}: partial character {piece:?}"
                );
                streamed.push_str(&piece);
            }
            streamed.push_str(&d.finish().unwrap());
            let whole = tok.decode(&ids, true).unwrap();
            let head = tok.decode(context, true).unwrap();
            assert_eq!(format!("{head}{streamed}"), whole, "{text:?}");
        }
    }

    /// Bytes that are not UTF-8 (a random model's output): valid ones stream as they come, a
    /// stray byte becomes U+FFFD, and the text after it is not lost. (The run of byte tokens
    /// `[`, `R`, 0xB7 decodes as three U+FFFD once 0xB7 arrives; "k" used to be dropped.)
    #[test]
    fn bytes_that_are_not_utf8_lose_no_text_after_them() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/mixtral/tokenizer.json");
        let tok = Tokenizer::from_file(&path).unwrap();
        let id = |t: &str| tok.token_to_id(t).unwrap();
        let context = [id("<s>"), id("ef")];
        let cases: [(&[&str], &str); 3] = [
            (&["<0x5B>", "<0x52>", "<0xB7>", "k"], "[R\u{FFFD}k"),
            // Held back until certain, a run reads as the final decode has it.
            (&["<0xB7>", "<0x5B>", "▁as"], "\u{FFFD}\u{FFFD} as"),
            // A character split over byte tokens still comes out whole.
            (&["<0xC3>", "<0xA9>", "k"], "ék"),
        ];
        for (pieces, want) in cases {
            let mut d = Detokenizer::new(&tok, &context);
            let mut streamed = String::new();
            for p in pieces {
                streamed.push_str(&d.push(id(p)).unwrap());
            }
            streamed.push_str(&d.finish().unwrap());
            assert_eq!(streamed, want, "{pieces:?}");
        }
    }
}
