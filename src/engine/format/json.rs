//! The JSON files beside a model (config.json, tokenizer_config.json, generation_config.json).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// The JSON document at `path`; None when there is no such file. A file that is there but
/// unreadable or not JSON is an error naming it.
pub fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            Ok(Some(serde_json::from_str(&t).with_context(|| {
                format!("{} is not valid JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
