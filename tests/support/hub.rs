//! A Hugging Face Hub stand-in on 127.0.0.1 for tests and offline demos.
//!
//! It speaks the parts of the Hub protocol owrun uses, the way the real Hub does:
//! - `GET /api/models/{repo}/revision/{rev}?blobs=true`: model info with `sha`, `siblings`
//!   (`rfilename`, `size`, `blobId`, `lfs.sha256`), `gated` and `cardData.license`.
//! - `GET|HEAD /{repo}/resolve/{rev}/{file}`: small files answered directly with
//!   `ETag: "<git sha1>"` and `X-Repo-Commit`; LFS files (weights) answered with a `302`
//!   to a second listener (the "CDN", another origin) carrying `X-Linked-Etag`,
//!   `X-Linked-Size` and `X-Repo-Commit`. Both honour `Range: bytes=N-`.
//! - Errors with `X-Error-Code`: 401 `RepoNotFound` for unknown repos, 401/403 `GatedRepo`,
//!   404 `RevisionNotFound` / `EntryNotFound`.
//!
//! Faults can be injected at any time: cut the connection after N bytes of a file, corrupt a
//! byte, answer an HTTP status a number of times, or slow the link down.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::{Digest, Sha1};
use sha2::Sha256;

#[derive(Clone)]
pub struct RepoFixture {
    pub id: String,
    pub files: Vec<(String, Vec<u8>)>,
    /// Needs `Authorization: Bearer <token>` with one of the hub's tokens.
    pub gated: bool,
}

impl RepoFixture {
    pub fn new(id: &str) -> Self {
        RepoFixture {
            id: id.to_string(),
            files: Vec::new(),
            gated: false,
        }
    }

    pub fn file(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.retain(|(n, _)| n != name);
        self.files.push((name.to_string(), content.into()));
        self
    }

    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }

    /// Every file of a local directory (not recursive).
    pub fn from_dir(id: &str, dir: &Path) -> std::io::Result<Self> {
        let mut repo = RepoFixture::new(id);
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_type()?.is_file() {
                let name = e.file_name().to_string_lossy().to_string();
                repo = repo.file(&name, std::fs::read(e.path())?);
            }
        }
        Ok(repo)
    }

    /// A deterministic commit id for the repo's content.
    pub fn commit(&self) -> String {
        let mut h = Sha1::new();
        h.update(self.id.as_bytes());
        for (n, c) in &self.files {
            h.update(n.as_bytes());
            h.update(Sha256::digest(c));
        }
        hex(&h.finalize())
    }
}

/// Files the real Hub stores in LFS: weights and anything large.
fn is_lfs(name: &str, content: &[u8]) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin") || content.len() > 10_000
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn git_sha1_hex(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Default, Clone)]
pub struct Faults {
    /// Close the connection after sending this many bytes of the named file's body, this many
    /// times: `(file, bytes, times)`.
    pub cut: Option<(String, u64, u32)>,
    /// Serve the named file with one byte changed.
    pub corrupt: Option<String>,
    /// Answer requests whose path contains the text with this status, this many times.
    pub status: Option<(String, u16, u32)>,
    /// Bytes per second for file bodies.
    pub rate: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub cdn: bool,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, RepoFixture>,
    /// Computed once when a repo is added: its commit, and each file's (sha256, git sha1).
    commits: HashMap<String, String>,
    hashes: HashMap<(String, String), (String, String)>,
    tokens: Vec<String>,
    faults: Faults,
    log: Vec<Logged>,
}

#[derive(Clone)]
pub struct FakeHub {
    pub url: String,
    pub cdn_url: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    /// Start on free ports of 127.0.0.1; the server lives until the process ends.
    pub fn start() -> FakeHub {
        Self::start_on(0)
    }

    pub fn start_on(port: u16) -> FakeHub {
        let api = TcpListener::bind(("127.0.0.1", port)).expect("bind hub");
        let cdn = TcpListener::bind(("127.0.0.1", 0)).expect("bind cdn");
        let hub = FakeHub {
            url: format!("http://127.0.0.1:{}", api.local_addr().unwrap().port()),
            cdn_url: format!("http://127.0.0.1:{}", cdn.local_addr().unwrap().port()),
            state: Arc::new(Mutex::new(State::default())),
        };
        for (listener, is_cdn) in [(api, false), (cdn, true)] {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let hub = hub.clone();
                    std::thread::spawn(move || hub.serve(stream, is_cdn));
                }
            });
        }
        hub
    }

    pub fn add_repo(&self, repo: RepoFixture) {
        let mut st = self.state.lock().unwrap();
        st.commits.insert(repo.id.clone(), repo.commit());
        for (name, content) in &repo.files {
            st.hashes.insert(
                (repo.id.clone(), name.clone()),
                (sha256_hex(content), git_sha1_hex(content)),
            );
        }
        st.repos.insert(repo.id.clone(), repo);
    }

    pub fn add_token(&self, token: &str) {
        self.state.lock().unwrap().tokens.push(token.to_string());
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    fn serve(&self, stream: TcpStream, is_cdn: bool) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let path = percent_decode(&path);
        let reply = self.route(is_cdn, &method, &path, &query, &headers);
        self.state.lock().unwrap().log.push(Logged {
            cdn: is_cdn,
            method: method.clone(),
            path: path.clone(),
            range: headers.get("range").cloned(),
            authorization: headers.get("authorization").cloned(),
            status: reply.status,
        });
        self.send(stream, &method, reply);
    }

    fn route(
        &self,
        is_cdn: bool,
        method: &str,
        path: &str,
        query: &str,
        headers: &HashMap<String, String>,
    ) -> Reply {
        let mut st = self.state.lock().unwrap();
        if let Some((needle, status, times)) = st.faults.status.clone() {
            if times > 0 && path.contains(&needle) {
                st.faults.status = Some((needle, status, times - 1));
                return Reply::error(status, "", "injected failure");
            }
        }
        if is_cdn {
            if headers.contains_key("authorization") {
                // Like S3 behind the real Hub's CDN: a token sent there is a leak, and refused.
                return Reply::error(400, "", "Authorization header sent to the CDN");
            }
            let Some(sha) = path.strip_prefix("/blobs/") else {
                return Reply::error(404, "", "no such blob");
            };
            let found = st
                .hashes
                .iter()
                .find(|(_, (sha256, _))| sha256 == sha)
                .map(|((repo, name), _)| (repo.clone(), name.clone()))
                .and_then(|(repo, name)| {
                    let content = st.repos[&repo].files.iter().find(|(n, _)| *n == name)?;
                    Some((name, content.1.clone()))
                });
            return match found {
                Some((name, content)) => {
                    let r = Reply::file(&st.faults, &name, content, headers);
                    if r.cut_after.is_some() {
                        if let Some((_, _, times)) = st.faults.cut.as_mut() {
                            *times -= 1;
                        }
                    }
                    r
                }
                None => Reply::error(404, "", "no such blob"),
            };
        }
        if let Some(rest) = path.strip_prefix("/api/models/") {
            let Some((repo_id, revision)) = rest.split_once("/revision/") else {
                return Reply::error(404, "", "bad api path");
            };
            let Some(repo) = st.repos.get(repo_id) else {
                return Reply::error(401, "RepoNotFound", "Repository not found");
            };
            let commit = &st.commits[repo_id];
            if revision != "main" && revision != commit {
                return Reply::error(404, "RevisionNotFound", "Invalid rev id");
            }
            return Reply::json(info_json(repo, &st, query.contains("blobs=true")));
        }
        // /{owner}/{name}/resolve/{rev}/{file}
        let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if segs.len() != 5 || segs[2] != "resolve" {
            return Reply::error(404, "", "not found");
        }
        let repo_id = format!("{}/{}", segs[0], segs[1]);
        let (revision, file) = (segs[3], segs[4]);
        let Some(repo) = st.repos.get(&repo_id) else {
            return Reply::error(401, "RepoNotFound", "Repository not found");
        };
        if repo.gated {
            match headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
            {
                None => {
                    return Reply::error(
                        401,
                        "GatedRepo",
                        "Access to this model is restricted. You must be authenticated.",
                    )
                }
                Some(t) if !st.tokens.iter().any(|x| x == t) => return Reply::error(
                    403,
                    "GatedRepo",
                    "Access to this model is restricted and you are not in the authorized list.",
                ),
                Some(_) => {}
            }
        }
        let commit = st.commits[&repo_id].clone();
        if revision != "main" && revision != commit {
            return Reply::error(404, "RevisionNotFound", "Invalid rev id");
        }
        let Some((name, content)) = repo.files.iter().find(|(n, _)| n == file).cloned() else {
            return Reply::error(404, "EntryNotFound", "Entry not found");
        };
        let (sha, git_sha1) = st.hashes[&(repo_id.clone(), name.clone())].clone();
        if is_lfs(&name, &content) {
            let mut r = Reply::status(302);
            r.headers
                .push(("Location".into(), format!("{}/blobs/{sha}", self.cdn_url)));
            r.headers
                .push(("X-Linked-Etag".into(), format!("\"{sha}\"")));
            r.headers
                .push(("X-Linked-Size".into(), content.len().to_string()));
            r.headers.push(("X-Repo-Commit".into(), commit));
            r.headers.push(("ETag".into(), format!("\"{git_sha1}\"")));
            return r;
        }
        let etag = git_sha1;
        let mut r = Reply::file(&st.faults, &name, content, headers);
        if r.cut_after.is_some() {
            if let Some((_, _, times)) = st.faults.cut.as_mut() {
                *times -= 1;
            }
        }
        if method == "HEAD" || r.status < 300 {
            r.headers.push(("ETag".into(), format!("\"{etag}\"")));
            r.headers.push(("X-Repo-Commit".into(), commit));
        }
        r
    }

    fn send(&self, mut stream: TcpStream, method: &str, reply: Reply) {
        let reason = match reply.status {
            200 => "OK",
            206 => "Partial Content",
            302 => "Found",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            416 => "Range Not Satisfiable",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Status",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            reply.body.len()
        ));
        if stream.write_all(head.as_bytes()).is_err() || method == "HEAD" {
            return;
        }
        let limit = reply.cut_after.unwrap_or(u64::MAX) as usize;
        let body = &reply.body[..reply.body.len().min(limit)];
        match reply.rate {
            None => {
                let _ = stream.write_all(body);
            }
            Some(rate) => {
                let chunk = (rate / 20).max(1) as usize;
                for piece in body.chunks(chunk) {
                    if stream.write_all(piece).is_err() {
                        return;
                    }
                    let _ = stream.flush();
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let _ = stream.flush();
        let _ = stream.shutdown(Shutdown::Both);
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut_after: Option<u64>,
    rate: Option<u64>,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_after: None,
            rate: None,
        }
    }

    fn error(status: u16, code: &str, msg: &str) -> Reply {
        let mut r = Reply::status(status);
        if !code.is_empty() {
            r.headers.push(("X-Error-Code".into(), code.into()));
        }
        r.headers.push(("X-Error-Message".into(), msg.into()));
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r.body = format!("{{\"error\":\"{msg}\"}}").into_bytes();
        r
    }

    fn json(v: serde_json::Value) -> Reply {
        let mut r = Reply::status(200);
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r.body = v.to_string().into_bytes();
        r
    }

    /// A file body, honouring `Range: bytes=N-` and the faults that apply to it.
    fn file(
        faults: &Faults,
        name: &str,
        mut content: Vec<u8>,
        headers: &HashMap<String, String>,
    ) -> Reply {
        if faults.corrupt.as_deref() == Some(name) && !content.is_empty() {
            let mid = content.len() / 2;
            content[mid] ^= 0xff;
        }
        let total = content.len() as u64;
        let start = headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        let mut r = match start {
            Some(s) if s >= total && total > 0 => {
                let mut r = Reply::status(416);
                r.headers
                    .push(("Content-Range".into(), format!("bytes */{total}")));
                return r;
            }
            Some(s) => {
                let mut r = Reply::status(206);
                r.headers.push((
                    "Content-Range".into(),
                    format!("bytes {s}-{}/{total}", total.saturating_sub(1)),
                ));
                r.body = content[s as usize..].to_vec();
                r
            }
            None => {
                let mut r = Reply::status(200);
                r.body = content;
                r
            }
        };
        r.headers.push(("Accept-Ranges".into(), "bytes".into()));
        if let Some((file, bytes, times)) = &faults.cut {
            if file == name && *times > 0 {
                r.cut_after = Some(*bytes);
            }
        }
        r.rate = faults.rate;
        r
    }
}

fn info_json(repo: &RepoFixture, st: &State, blobs: bool) -> serde_json::Value {
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|(name, content)| {
            if !blobs {
                return serde_json::json!({ "rfilename": name });
            }
            let (sha256, git_sha1) = &st.hashes[&(repo.id.clone(), name.clone())];
            let mut s = serde_json::json!({
                "rfilename": name,
                "size": content.len(),
                "blobId": git_sha1,
            });
            if is_lfs(name, content) {
                s["lfs"] = serde_json::json!({
                    "sha256": sha256,
                    "size": content.len(),
                    "pointerSize": 134,
                });
            }
            s
        })
        .collect();
    let card = repo
        .files
        .iter()
        .find(|(n, _)| n == "README.md")
        .map(|(_, c)| String::from_utf8_lossy(c).to_string())
        .unwrap_or_default();
    let mut card_data = serde_json::Map::new();
    if card.starts_with("---") {
        for line in card.lines().skip(1).take_while(|l| l.trim() != "---") {
            if let Some((k, v)) = line.split_once(':') {
                if k == "license" || k == "license_name" {
                    card_data.insert(k.to_string(), serde_json::json!(v.trim()));
                }
            }
        }
    }
    serde_json::json!({
        "_id": "0",
        "id": repo.id,
        "modelId": repo.id,
        "sha": st.commits[&repo.id],
        "private": false,
        "gated": if repo.gated { serde_json::json!("manual") } else { serde_json::json!(false) },
        "disabled": false,
        "cardData": card_data,
        "siblings": siblings,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}
