//! Talking to the Hugging Face Hub (or any server that speaks its protocol, see HF_ENDPOINT).
//!
//! Two calls: model info (`/api/models/{repo}/revision/{rev}?blobs=true`) and file download
//! (`/{repo}/resolve/{commit}/{file}`, which the real Hub answers for large files with a
//! redirect to its CDN carrying `X-Linked-Etag` and `X-Repo-Commit`).
//!
//! hf-hub's own downloader is not used for the transfer: it does not verify sha256, gives up on
//! a file another process is downloading, and hides HTTP status codes that decide the message
//! a user needs (gated, missing, private). This module adds what owrun promises: resume with
//! Range requests, sha256 / git-sha1 verification, retries with backoff, and exact errors.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::settings::Settings;

/// How many times a transient failure (connection cut, timeout, 5xx, 429) is retried.
const MAX_RETRIES: u32 = 5;
const BUF_SIZE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{repo} is gated: log in at {page}, accept its terms there, then set HF_TOKEN to a token \
         of that account (or run `huggingface-cli login`)"
    )]
    GatedNoToken { repo: String, page: String },
    #[error(
        "your Hugging Face token has no access to {repo}: request access at {page} (and check \
         that HF_TOKEN belongs to the account that was granted access)"
    )]
    NoAccess { repo: String, page: String },
    #[error(
        "repository {repo} not found at {endpoint} (if it is private, set HF_TOKEN to a token \
         that can read it)"
    )]
    RepoNotFound { repo: String, endpoint: String },
    #[error("revision {revision:?} not found in {repo}")]
    RevisionNotFound { repo: String, revision: String },
    #[error("file {file} not found in {repo} at revision {revision}")]
    FileNotFound {
        repo: String,
        revision: String,
        file: String,
    },
    #[error("the hub answered HTTP {status} for {url}{detail}")]
    Status {
        status: u16,
        url: String,
        detail: String,
    },
    #[error("network error talking to {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "{file}: downloaded data does not match the hub's checksum (expected {expected}, got \
         {actual}); the bad file was deleted, run the command again"
    )]
    Integrity {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{what}")]
    Protocol { what: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl HubError {
    /// Worth another try after a pause.
    fn is_transient(&self) -> bool {
        match self {
            HubError::Transport { .. } => true,
            HubError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Model info as owrun needs it.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    /// The commit the requested revision points at.
    pub commit: String,
    pub files: Vec<RemoteFile>,
    /// `false`, or `"auto"` / `"manual"` on the real Hub.
    pub gated: bool,
    /// License id from the model card (`license`, or `license_name` when that is `other`).
    pub card_license: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub name: String,
    pub size: Option<u64>,
    /// sha256 for LFS files, git blob sha1 for the others; also the blob's name in the cache.
    pub etag: Option<String>,
}

#[derive(Deserialize)]
struct RawInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<RawSibling>,
    #[serde(default)]
    gated: serde_json::Value,
    #[serde(rename = "cardData")]
    card_data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    sha256: String,
    size: u64,
}

type Request = ureq::RequestBuilder<ureq::typestate::WithoutBody>;

pub struct Hub {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
    retry_base: Duration,
}

/// Something that wants to hear about download progress.
pub trait Progress {
    /// The transfer (re)starts at `offset` bytes already on disk.
    fn start(&mut self, offset: u64);
    fn advance(&mut self, bytes: u64);
    /// A transient failure; owrun waits `wait` and tries again.
    fn retry(&mut self, err: &HubError, wait: Duration);
}

impl Hub {
    pub fn new(settings: &Settings) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Redirects are followed by hand: the token must not travel to the CDN, and the
            // redirect itself carries the headers that identify the file.
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("owrun/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Hub {
            endpoint: settings.endpoint.clone(),
            token: settings.token.clone(),
            agent,
            retry_base: Duration::from_millis(settings.retry_base_ms),
        }
    }

    pub fn repo_page(&self, repo: &str) -> String {
        format!("{}/{repo}", self.endpoint)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        (self.retry_base * 2u32.saturating_pow(attempt)).min(Duration::from_secs(30))
    }

    fn get(&self, url: &str, with_token: bool) -> Request {
        self.authorize(self.agent.get(url), with_token)
    }

    fn authorize(&self, req: Request, with_token: bool) -> Request {
        match (&self.token, with_token) {
            (Some(t), true) => req.header("Authorization", format!("Bearer {t}")),
            _ => req,
        }
    }

    /// Model info for `repo` at `revision`, with file sizes and hashes.
    pub fn model_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            encode_path(revision).replace('/', "%2F")
        );
        let mut attempt = 0;
        loop {
            match self.model_info_once(&url, repo, revision) {
                Err(e) if e.is_transient() && attempt < MAX_RETRIES => {
                    std::thread::sleep(self.backoff(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn model_info_once(&self, url: &str, repo: &str, revision: &str) -> Result<RepoInfo, HubError> {
        let resp = self.get(url, true).call().map_err(|e| transport(url, e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(self.status_error(&resp, url, repo, revision, None));
        }
        let unreadable = |e: &dyn std::fmt::Display| HubError::Protocol {
            what: format!("unreadable model info from {url}: {e}"),
        };
        let text = resp
            .into_body()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| unreadable(&e))?;
        let raw: RawInfo = serde_json::from_str(&text).map_err(|e| unreadable(&e))?;
        let commit = raw.sha.ok_or_else(|| HubError::Protocol {
            what: format!("model info from {url} has no commit sha"),
        })?;
        let card = raw.card_data.as_ref();
        let field = |k: &str| card.and_then(|c| c.get(k)).and_then(|v| v.as_str());
        let card_license = crate::license::card_license_id(field("license"), field("license_name"));
        let gated = match raw.gated {
            serde_json::Value::Bool(b) => b,
            serde_json::Value::String(s) => !s.is_empty(),
            _ => false,
        };
        let files = raw
            .siblings
            .into_iter()
            .map(|s| match s.lfs {
                Some(lfs) => RemoteFile {
                    name: s.rfilename,
                    size: Some(lfs.size),
                    etag: Some(lfs.sha256),
                },
                None => RemoteFile {
                    name: s.rfilename,
                    size: s.size,
                    etag: s.blob_id,
                },
            })
            .collect();
        Ok(RepoInfo {
            commit,
            files,
            gated,
            card_license,
        })
    }

    /// Size and etag of a file from its resolve headers, for servers whose model info lacks them.
    pub fn file_metadata(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
    ) -> Result<(u64, String), HubError> {
        let url = self.resolve_url(repo, commit, file);
        let resp = self
            .authorize(self.agent.head(&url), true)
            .call()
            .map_err(|e| transport(&url, e))?;
        let status = resp.status().as_u16();
        if !(200..400).contains(&status) {
            return Err(self.status_error(&resp, &url, repo, commit, Some(file)));
        }
        let h = |k: &str| header(&resp, k);
        let etag = h("x-linked-etag")
            .or_else(|| h("etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .ok_or_else(|| HubError::Protocol {
                what: format!("{url}: no ETag"),
            })?;
        let size = h("x-linked-size")
            .or_else(|| h("content-length"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HubError::Protocol {
                what: format!("{url}: no size"),
            })?;
        Ok((size, etag))
    }

    fn resolve_url(&self, repo: &str, commit: &str, file: &str) -> String {
        format!(
            "{}/{repo}/resolve/{commit}/{}",
            self.endpoint,
            encode_path(file)
        )
    }

    /// Download `file` of `repo` at `commit` into `partial` (appending to what is there), verify
    /// it against `etag`, and rename it to `dest`. Transient failures are retried, resuming.
    #[allow(clippy::too_many_arguments)]
    pub fn download(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        size: u64,
        etag: &str,
        partial: &Path,
        dest: &Path,
        progress: &mut dyn Progress,
    ) -> Result<(), HubError> {
        let url = self.resolve_url(repo, commit, file);
        let mut attempt = 0;
        let digest = loop {
            // The hash runs along with the transfer; what an earlier attempt or an interrupted
            // pull left on disk is hashed first.
            let (mut digest, _) = FileDigest::of_prefix(partial, etag, size)?;
            let target = Target {
                path: partial,
                size,
                etag,
            };
            match self.download_once(&url, repo, commit, file, &target, &mut digest, progress) {
                Ok(()) => break digest,
                Err(e) if e.is_transient() && attempt < MAX_RETRIES => {
                    let wait = self.backoff(attempt);
                    progress.retry(&e, wait);
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let actual = digest.finish();
        if !actual.eq_ignore_ascii_case(etag) {
            let _ = std::fs::remove_file(partial);
            return Err(HubError::Integrity {
                file: format!("{repo}/{file}"),
                expected: etag.to_string(),
                actual,
            });
        }
        std::fs::rename(partial, dest)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    fn download_once(
        &self,
        url: &str,
        repo: &str,
        commit: &str,
        file: &str,
        target: &Target,
        digest: &mut FileDigest,
        progress: &mut dyn Progress,
    ) -> Result<(), HubError> {
        let size = target.size;
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(target.path)?;
        let mut offset = out.metadata()?.len();
        if offset > size {
            // Not a prefix of this file: start over.
            out.set_len(0)?;
            *digest = FileDigest::new(target.etag, size);
            offset = 0;
        }
        if offset == size {
            progress.start(offset);
            return Ok(());
        }
        // A Range header only when resuming, as huggingface_hub does.
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let with_range = |req: Request| match &range {
            Some(r) => req.header("Range", r),
            None => req,
        };
        let resp = with_range(self.get(url, true))
            .call()
            .map_err(|e| transport(url, e))?;
        let mut status = resp.status().as_u16();
        let resp = if (300..400).contains(&status) {
            let location = header(&resp, "location").ok_or_else(|| HubError::Protocol {
                what: format!("{url}: redirect without Location"),
            })?;
            let target = join_url(url, &location);
            // The token goes only to the hub itself, never to the CDN it redirects to.
            let same_origin = origin(&target) == origin(&self.endpoint);
            let r = with_range(self.get(&target, same_origin))
                .call()
                .map_err(|e| transport(&target, e))?;
            status = r.status().as_u16();
            r
        } else {
            resp
        };
        match status {
            206 => {
                let start =
                    header(&resp, "content-range").and_then(|cr| parse_content_range_start(&cr));
                if start != Some(offset) {
                    return Err(HubError::Protocol {
                        what: format!("{url}: answered a range that was not asked for"),
                    });
                }
            }
            200 => {
                // A fresh start, or a server that ignored the range: take the whole file.
                out.set_len(0)?;
                *digest = FileDigest::new(target.etag, size);
                offset = 0;
            }
            416 => {
                // Nothing left to send for our offset: what we have is everything (the hash
                // check decides whether it is right).
                out.set_len(offset)?;
                progress.start(offset);
                return Ok(());
            }
            _ => return Err(self.status_error(&resp, url, repo, commit, Some(file))),
        }
        out.seek(SeekFrom::End(0))?;
        progress.start(offset);
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; BUF_SIZE];
        let mut have = offset;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    out.flush()?;
                    return Err(transport(url, e));
                }
            };
            out.write_all(&buf[..n])?;
            digest.update(&buf[..n]);
            have += n as u64;
            progress.advance(n as u64);
        }
        out.flush()?;
        out.sync_all()?;
        if have < size {
            return Err(HubError::Transport {
                url: url.to_string(),
                source: format!("connection closed after {have} of {size} bytes").into(),
            });
        }
        Ok(())
    }

    /// Turn an unsuccessful response into the error a user can act on.
    fn status_error(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
        url: &str,
        repo: &str,
        revision: &str,
        file: Option<&str>,
    ) -> HubError {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code").unwrap_or_default();
        let page = self.repo_page(repo);
        match (status, code.as_str()) {
            (_, "RepoNotFound") => HubError::RepoNotFound {
                repo: repo.into(),
                endpoint: self.endpoint.clone(),
            },
            (_, "RevisionNotFound") => HubError::RevisionNotFound {
                repo: repo.into(),
                revision: revision.into(),
            },
            (_, "EntryNotFound") => HubError::FileNotFound {
                repo: repo.into(),
                revision: revision.into(),
                file: file.unwrap_or("?").into(),
            },
            (401, _) if self.token.is_none() => HubError::GatedNoToken {
                repo: repo.into(),
                page,
            },
            (401 | 403, _) => HubError::NoAccess {
                repo: repo.into(),
                page,
            },
            (404, _) => match file {
                Some(f) => HubError::FileNotFound {
                    repo: repo.into(),
                    revision: revision.into(),
                    file: f.into(),
                },
                None => HubError::RepoNotFound {
                    repo: repo.into(),
                    endpoint: self.endpoint.clone(),
                },
            },
            _ => HubError::Status {
                status,
                url: url.to_string(),
                detail: header(resp, "x-error-message")
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
            },
        }
    }
}

fn transport(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> HubError {
    HubError::Transport {
        url: url.to_string(),
        source: Box::new(e),
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `bytes 100-199/200` → 100.
fn parse_content_range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Resolve a Location header against the URL that answered with it.
fn join_url(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = &base[..base.rfind('/').map_or(base.len(), |i| i + 1)];
        format!("{dir}{location}")
    }
}

/// Percent-encode a file path for a URL, keeping `/` between its parts.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a download goes and what it must turn out to be.
struct Target<'a> {
    path: &'a Path,
    size: u64,
    etag: &'a str,
}

/// The hash the Hub names a file by, computed as the bytes arrive: sha256 (64 hex digits, LFS
/// files) or git's blob sha1 (40 hex digits, small files), whichever `etag` is.
enum FileDigest {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl FileDigest {
    fn new(etag: &str, size: u64) -> Self {
        if etag.len() == 40 {
            let mut h = Sha1::new();
            h.update(format!("blob {size}\0").as_bytes());
            FileDigest::GitSha1(h)
        } else {
            FileDigest::Sha256(Sha256::new())
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            FileDigest::Sha256(h) => h.update(bytes),
            FileDigest::GitSha1(h) => h.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            FileDigest::Sha256(h) => hex(&h.finalize()),
            FileDigest::GitSha1(h) => hex(&h.finalize()),
        }
    }

    /// The digest of what `path` holds so far (nothing if it does not exist), and its length.
    fn of_prefix(path: &Path, etag: &str, size: u64) -> Result<(Self, u64), HubError> {
        let mut digest = FileDigest::new(etag, size);
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((digest, 0)),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; BUF_SIZE];
        let mut len = 0;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok((digest, len));
            }
            digest.update(&buf[..n]);
            len += n as u64;
        }
    }
}

/// The Hub's name (sha256 or git blob sha1, like `etag`) for the content of a file.
#[cfg(test)]
fn hash_file(path: &Path, size: u64, etag: &str) -> Result<String, HubError> {
    Ok(FileDigest::of_prefix(path, etag, size)?.0.finish())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_helpers() {
        assert_eq!(origin("http://127.0.0.1:80/a/b"), "http://127.0.0.1:80");
        assert_eq!(
            join_url("http://h:1/a/resolve/x", "/cdn/1?x=y"),
            "http://h:1/cdn/1?x=y"
        );
        assert_eq!(join_url("http://h/a/b", "https://cdn/z"), "https://cdn/z");
        assert_eq!(encode_path("dir/a b+c.json"), "dir/a%20b%2Bc.json");
        assert_eq!(parse_content_range_start("bytes 100-199/200"), Some(100));
    }

    #[test]
    fn git_blob_sha1_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        let etag = "ce013625030ba8dba906f756967f9e9ca394464a";
        assert_eq!(hash_file(&p, 6, etag).unwrap(), etag);
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        assert_eq!(hash_file(&p, 6, sha).unwrap(), sha);
    }
}
