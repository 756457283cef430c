//! Each token's text as it reads in the middle of a document.

/// Every token's text, decoded as it reads after other text: what constrained decoding matches
/// against its recognizer, and the names of tokens in log-probabilities.
pub struct TokenTexts {
    texts: Vec<Option<String>>,
    /// The ids that have a text, sorted by it, each with how many characters its text shares
    /// with the one before: walked in this order, tokens that start alike come together, so a
    /// constraint checks their common start once (see [`TokenTexts::by_text`]).
    by_text: Vec<(u32, u32)>,
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
        Self::indexed(texts)
    }

    /// Texts given directly, by token id (None: a token with no text of its own).
    #[cfg(test)]
    pub fn from_texts(texts: Vec<Option<String>>) -> Self {
        Self::indexed(texts)
    }

    fn indexed(texts: Vec<Option<String>>) -> Self {
        let mut ids: Vec<u32> = (0..texts.len() as u32)
            .filter(|&id| texts[id as usize].is_some())
            .collect();
        let text = |id: u32| texts[id as usize].as_deref().unwrap_or_default();
        // Byte order is code point order, so tokens that share leading characters are adjacent.
        ids.sort_by(|&a, &b| text(a).cmp(text(b)));
        let mut by_text = Vec::with_capacity(ids.len());
        let mut before = "";
        for id in ids {
            let shared = before
                .chars()
                .zip(text(id).chars())
                .take_while(|(a, b)| a == b)
                .count();
            by_text.push((id, shared as u32));
            before = text(id);
        }
        TokenTexts { texts, by_text }
    }

    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize)?.as_deref()
    }

    /// Every id with a text, in the order of the texts, each with the number of leading
    /// characters its text shares with the previous one's (0 for the first).
    pub fn by_text(&self) -> &[(u32, u32)] {
        &self.by_text
    }
}
