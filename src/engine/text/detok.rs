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
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back at the end of generation.
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.tokens[self.prefix_offset..])?;
        self.prefix_offset = self.tokens.len();
        self.read_offset = self.tokens.len();
        Ok(full.get(prefix.len()..).unwrap_or("").to_string())
    }
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
}
