//! The tokenizer side of a model: [`Text`] (tokenizer, chat template, end-of-sequence ids),
//! prompts rendered from conversations ([`prompt`]), the streaming detokenizer ([`detok`]), the
//! split of reasoning from answer ([`reasoning`]), each token's text ([`token_texts`]).
//!
//! Strings and token ids only: it imports `format` (config files) and nothing else of the engine;
//! no tensors, no sampling.

pub mod detok;
pub mod held_back;
pub mod prompt;
pub mod reasoning;
pub mod template;
pub mod token_texts;

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::format::config::token_ids;
use super::format::json::read_json;
use template::ChatTemplate;
use token_texts::TokenTexts;

/// The text side of a loaded model.
pub struct Text {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// End-of-sequence ids: config.json ∪ generation_config.json ∪ the tokenizer's eos token.
    pub eos: Vec<u32>,
    /// Every token's text, for constrained decoding and log-probabilities (made on first use).
    token_texts: OnceLock<TokenTexts>,
}

impl Text {
    pub fn new(tokenizer: Tokenizer, template: Option<ChatTemplate>, eos: Vec<u32>) -> Text {
        Text {
            tokenizer,
            template,
            eos,
            token_texts: OnceLock::new(),
        }
    }

    /// From a Hugging Face folder: tokenizer.json and tokenizer_config.json, with the
    /// end-of-sequence ids of config.json (`config_eos`) and generation_config.json.
    pub fn from_folder(dir: &Path, config_eos: &[u32], generation_config: &Value) -> Result<Text> {
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("cannot load {}: {e}", tok_path.display()))?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let template = ChatTemplate::from_config(dir, &tc)?;
        let mut eos = config_eos.to_vec();
        eos.extend(token_ids(generation_config.get("eos_token_id")));
        if let Some(id) =
            template::special_token(tc.get("eos_token")).and_then(|t| tokenizer.token_to_id(&t))
        {
            eos.push(id);
        }
        eos.sort_unstable();
        eos.dedup();
        Ok(Text::new(tokenizer, template, eos))
    }

    /// Every token's text as it reads after other text (made once, on first use).
    pub fn token_texts(&self) -> &TokenTexts {
        self.token_texts
            .get_or_init(|| TokenTexts::new(&self.tokenizer))
    }

    /// Token ids for `text`. `add_special_tokens`: let the tokenizer add BOS (raw prompts); a
    /// rendered chat template already contains it, as in transformers' apply_chat_template.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .to_vec())
    }
}
