//! Each token's text as it reads in the middle of a document.

/// Every token's text, decoded as it reads after other text: what constrained decoding matches
/// against its recognizer, and the names of tokens in log-probabilities.
pub struct TokenTexts {
    texts: Vec<Option<String>>,
}

impl TokenTexts {
    /// Texts for every id of `tokenizer`, as each reads after other text: decoded alone,
    /// sentencepiece decoders drop a token's leading space ("▁there" → "there"), so each is
    /// decoded after an anchor token and keeps what it adds. Tokens that decode to nothing or to
    /// a broken character (a lone byte of a multi-byte character) have none, and are never
    /// allowed under a constraint.
    pub fn new(tokenizer: &tokenizers::Tokenizer) -> Self {
        let n = tokenizer.get_vocab_size(true) as u32;
        let anchor = tokenizer
            .encode("a", false)
            .ok()
            .and_then(|e| e.get_ids().first().copied());
        let texts = (0..n)
            .map(|t| {
                let text = match anchor {
                    Some(a) => {
                        let base = tokenizer.decode(&[a], false).ok()?;
                        let both = tokenizer.decode(&[a, t], false).ok()?;
                        both.strip_prefix(&base)?.to_string()
                    }
                    None => tokenizer.decode(&[t], false).ok()?,
                };
                (!text.is_empty() && !text.contains('\u{FFFD}')).then_some(text)
            })
            .collect();
        TokenTexts { texts }
    }

    /// Texts given directly, by token id (None: a token with no text of its own).
    #[cfg(test)]
    pub fn from_texts(texts: Vec<Option<String>>) -> Self {
        TokenTexts { texts }
    }

    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize)?.as_deref()
    }
}
