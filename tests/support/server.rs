//! `owrun serve` started by a test on a free port, and a plain HTTP/1.1 client over a TCP
//! socket (full control of the headers, and of hanging up midway).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Sandbox;

pub struct Server {
    child: Child,
    pub port: u16,
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    /// `owrun serve --port 0 ARGS` with `env`; returns once it listens.
    pub fn start(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = sb.cmd();
        cmd.arg("serve").args(["--port", "0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start owrun serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(port)) => port,
            _ => {
                let _ = child.kill();
                panic!("owrun serve did not start:\n{}", stderr.lock().unwrap());
            }
        };
        Server {
            child,
            port,
            stderr,
        }
    }

    /// Wait until /health answers 200 (the models named at start are loaded).
    pub fn wait_healthy(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get("/health");
            if r.status == 200 {
                return r.json();
            }
            assert!(Instant::now() < deadline, "never healthy: {}", r.body);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Slots busy and jobs queued over every loaded model.
    pub fn in_use(&self) -> (u64, u64) {
        let h = self.get("/health").json();
        h["models"]
            .as_array()
            .unwrap()
            .iter()
            .fold((0, 0), |acc, m| {
                (
                    acc.0 + m["slots_busy"].as_u64().unwrap(),
                    acc.1 + m["queued"].as_u64().unwrap(),
                )
            })
    }

    #[track_caller]
    pub fn wait_until_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.in_use() != (0, 0) {
            assert!(
                Instant::now() < deadline,
                "slots still busy: {}",
                self.get("/health").body
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's resident memory (Linux: /proc), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc is readable");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.port, "GET", path, &[], "")
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Response {
        request(self.port, "POST", path, &[], &body.to_string())
    }

    /// Send SIGTERM and wait for the exit (at most `limit`).
    pub fn terminate(mut self, limit: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not JSON ({}): {}", self.status, self.body))
    }

    /// The text a stream's chunks carry in `choices[0].delta.<field>`, joined.
    pub fn streamed_delta(&self, field: &str) -> String {
        self.sse_data()
            .iter()
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| {
                let c: serde_json::Value = serde_json::from_str(d).unwrap();
                c["choices"][0]["delta"][field].as_str().map(str::to_string)
            })
            .collect()
    }

    /// The `data:` payloads of a server-sent event stream, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("an event that is not `data: …`: {e:?}"))
                    .to_string()
            })
            .collect()
    }
}

/// Write `head` lines (request line and headers, without the blank line) and the body.
fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s
}

/// One request, the whole response read (chunked bodies decoded).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut s = send(port, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    parse(&raw)
}

/// Write `bytes` as they are (a request as a hostile client writes it) and read the answer.
pub fn raw(port: u16, bytes: &[u8]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

/// How long until the server closes `s` (reads whatever it sends meanwhile), at most `limit`:
/// None if it is still open then.
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => {
                if started.elapsed() >= limit {
                    return None;
                }
            }
        }
    }
}

/// Send a request, read about `bytes` bytes of the answer, and hang up.
pub fn hang_up_after(port: u16, path: &str, body: &str, bytes: usize) {
    let mut s = send(port, "POST", path, &[], body);
    let mut buf = vec![0u8; bytes];
    let _ = s.read(&mut buf);
    drop(s);
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("a UTF-8 body"),
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]).to_string();
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let after = &rest[eol + 2..];
        if n == 0 || after.len() < n {
            break;
        }
        out.extend_from_slice(&after[..n]);
        rest = after[n..].strip_prefix(b"\r\n").unwrap_or(&after[n..]);
    }
    out
}
