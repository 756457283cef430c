//! Where owrun keeps things and what the environment asks of it.
//!
//! Everything that reads environment variables or owrun's config file lives here, so the rest of
//! the program receives plain values and tests can reason about one place.
//!
//! - `OWRUN_HOME`: owrun's own settings and state (config.toml, models.toml, accepted licenses,
//!   chat history). Default: the platform config dir for settings and data dir for state.
//! - `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`: the model store, in
//!   the standard Hugging Face cache layout shared with transformers and huggingface-cli.
//! - `HF_ENDPOINT` (default <https://huggingface.co>), `HF_TOKEN` (else the token file
//!   `HF_HOME/token`), `HF_HUB_OFFLINE`.
//! - `OWRUN_USE` (`commercial` or `noncommercial`), else `use` in `$OWRUN_HOME/config.toml`.
//! - `OWRUN_MODELS` (an extra registry file), `OWRUN_RETRY_BASE_MS` (download backoff),
//!   `OWRUN_MEMORY_LIMIT` (memory owrun may assume available), `OWRUN_TEST_HOOKS` (the tests'
//!   pauses, see `test_hooks`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::error::Fatal;
use crate::test_hooks::TestHooks;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What the user has declared they will use models for. Only a declared commercial use changes
/// what owrun does: it then refuses models whose license does not allow commercial use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclaredUse {
    Commercial,
    Noncommercial,
}

impl DeclaredUse {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "commercial" => Some(Self::Commercial),
            "noncommercial" | "non-commercial" | "personal" | "research" => {
                Some(Self::Noncommercial)
            }
            _ => None,
        }
    }
}

/// `$OWRUN_HOME/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(rename = "use")]
    declared_use: Option<DeclaredUse>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory for config.toml and the user's models.toml.
    pub config_dir: PathBuf,
    /// Directory for state: accepted licenses, chat history.
    pub data_dir: PathBuf,
    /// Root of the Hugging Face hub cache (holds `models--owner--name` folders).
    pub hub_cache: PathBuf,
    /// Hub base URL without a trailing slash.
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
    pub declared_use: Option<DeclaredUse>,
    /// Base delay of the exponential backoff between download retries.
    pub retry_base_ms: u64,
    /// Memory owrun may assume available (`OWRUN_MEMORY_LIMIT`), instead of what the kernel
    /// reports.
    pub memory_limit: Option<u64>,
    /// Pauses for the end-to-end tests (`OWRUN_TEST_HOOKS`); all off for users.
    pub test_hooks: TestHooks,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_truthy(name: &str) -> bool {
    matches!(
        env_nonempty(name)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("."));
        let (config_dir, data_dir) = match env_nonempty("OWRUN_HOME") {
            Some(dir) => (PathBuf::from(&dir), PathBuf::from(dir)),
            None => (
                dirs::config_dir()
                    .unwrap_or_else(|| home.join(".config"))
                    .join("owrun"),
                dirs::data_dir()
                    .unwrap_or_else(|| home.join(".local/share"))
                    .join("owrun"),
            ),
        };
        let hf_home = env_nonempty("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cache").join("huggingface"));
        let hub_cache = env_nonempty("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = env_nonempty("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        // HF_TOKEN wins over the token file written by `huggingface-cli login`, as in
        // huggingface_hub.
        let token = env_nonempty("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = env_truthy("HF_HUB_OFFLINE");

        let config = read_config(&config_dir.join("config.toml"))?;
        let declared_use = match env_nonempty("OWRUN_USE") {
            Some(v) => Some(DeclaredUse::parse(&v).ok_or_else(|| {
                Fatal::Usage(format!(
                    "OWRUN_USE={v:?} is not understood: use `commercial` or `noncommercial`"
                ))
            })?),
            None => config.declared_use,
        };
        let retry_base_ms = env_nonempty("OWRUN_RETRY_BASE_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);

        let memory_limit = match env_nonempty("OWRUN_MEMORY_LIMIT") {
            Some(v) => Some(crate::memory::parse_size(&v).ok_or_else(|| {
                Fatal::Usage(format!(
                    "OWRUN_MEMORY_LIMIT={v:?} is not a size: give bytes, or a number with K, M or G"
                ))
            })?),
            None => None,
        };
        let test_hooks = match env_nonempty(crate::test_hooks::VARIABLE) {
            Some(spec) => TestHooks::parse(&spec).map_err(|e| Fatal::Usage(format!("{e:#}")))?,
            None => TestHooks::default(),
        };

        Ok(Settings {
            config_dir,
            data_dir,
            hub_cache,
            endpoint,
            token,
            offline,
            declared_use,
            retry_base_ms,
            memory_limit,
            test_hooks,
        })
    }

    /// The user's registry overlay, `$OWRUN_HOME/models.toml`.
    pub fn user_registry(&self) -> PathBuf {
        self.config_dir.join("models.toml")
    }

    /// Extra registry file named by `OWRUN_MODELS`.
    pub fn env_registry(&self) -> Option<PathBuf> {
        env_nonempty("OWRUN_MODELS").map(PathBuf::from)
    }

    pub fn chat_history_file(&self) -> PathBuf {
        self.data_dir.join("chat_history")
    }

    pub fn accepted_licenses_file(&self) -> PathBuf {
        self.data_dir.join("accepted-licenses.json")
    }
}

fn read_config(path: &Path) -> Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text)
        .map_err(|e| Fatal::Usage(crate::registry::describe_toml_error(path, &text, &e)).into())
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a half-written file and a crash never leaves one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Today's date in UTC as `YYYY-MM-DD` (for license acceptance records).
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }

    #[test]
    fn declared_use_parses_common_spellings() {
        assert_eq!(
            DeclaredUse::parse("Commercial"),
            Some(DeclaredUse::Commercial)
        );
        assert_eq!(
            DeclaredUse::parse("non-commercial"),
            Some(DeclaredUse::Noncommercial)
        );
        assert_eq!(DeclaredUse::parse("maybe"), None);
    }
}
