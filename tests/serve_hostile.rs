//! `owrun serve` against hostile clients: each failure the server was measured with, reproduced
//! (paths named by clients, browsers' requests, slow and idle sockets, a model that fails to
//! load, token ids without an embedding row, a model thread that dies, requests that held the
//! async threads), then all of them at once beside honest clients. The time limits are made
//! short with the server's own flags.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::server::{closed_within, hang_up_after, raw, request, Response, Server};
use support::{stories260k_dir, stories260k_expected, Sandbox};

fn sandbox() -> Sandbox {
    // Nothing may touch the network: port 9 is discard.
    Sandbox::new("http://127.0.0.1:9")
}

fn completion(model: &str, prompt: &str, extra: Value) -> String {
    let mut body = json!({"model": model, "prompt": prompt});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body.to_string()
}

fn post(port: u16, body: &str) -> Response {
    request(port, "POST", "/v1/completions", &[], body)
}

/// A request written by hand: the request line, `headers` exactly as given (Host included),
/// a Content-Length for `body`, then `body`.
fn by_hand(port: u16, line: &str, headers: &[String], body: &str) -> Response {
    let mut head = format!("{line}\r\n");
    for h in headers {
        head.push_str(&format!("{h}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    raw(port, head.as_bytes())
}

fn host(port: u16) -> String {
    format!("Host: 127.0.0.1:{port}")
}

#[track_caller]
fn error_code(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let e = r.json()["error"].clone();
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    e["code"].clone()
}

/// The ids of the loaded models.
fn loaded(server: &Server) -> Vec<String> {
    server.get("/health").json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// A copy of stories260K's folder, changed by `change`.
fn stories_copy(sb: &Sandbox, name: &str, change: impl FnOnce(&Path)) -> PathBuf {
    let dir = sb.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(stories260k_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    change(&dir);
    dir
}

/// A registry file serving each (name, folder) as a pulled Hub repo.
fn registry_of(sb: &Sandbox, models: &[(&str, &Path)]) -> String {
    let mut toml = String::new();
    for (name, dir) in models {
        let repo = format!("acme/{name}");
        sb.install_pulled(&repo, dir);
        toml.push_str(&format!(
            "[models.{name}]\nrepo = \"{repo}\"\nfamily = \"llama\"\nparams = 260000\n\
             context = 512\nlicense = \"mit\"\ndescription = \"a copy of stories260K\"\n"
        ));
    }
    let file = sb.registry_file("models.toml", &toml);
    file.to_str().unwrap().to_string()
}

/// Any file or folder of the server's disk, named as the model by a client: refused with the
/// same 404 whether it exists, loads, is malformed or is missing. (A client could load any of
/// them, a malformed one could abort the server, and the errors told existing paths from
/// missing ones.)
#[test]
fn clients_cannot_load_paths_nor_tell_which_exist() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k"], &[]);
    server.wait_healthy();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let malformed = sb.dir.path().join("malformed.gguf");
    std::fs::write(
        &malformed,
        b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\x7f",
    )
    .unwrap();
    let mut names: Vec<String> = [
        root.join("tests/fixtures/models/llama"),
        root.join("tests/fixtures/gguf/llama.gguf"),
        malformed,
        root.join("Cargo.toml"),
        PathBuf::from("/etc"),
        PathBuf::from("/no/such/folder"),
        PathBuf::from("/no/such/model.gguf"),
        sb.dir.path().join("missing.gguf"),
    ]
    .iter()
    .map(|p| p.to_str().unwrap().to_string())
    .collect();
    // Relative to the server's working directory (the crate's), where the fixtures are.
    names.extend(
        [
            "tests/fixtures/models/llama",
            "./tests/fixtures/gguf/llama.gguf",
        ]
        .map(String::from),
    );
    let mut messages = std::collections::BTreeSet::new();
    for name in &names {
        let r = post(
            server.port,
            &completion(name, "Once", json!({"max_tokens": 2})),
        );
        assert_eq!(error_code(&r, 404), "model_not_found", "{name}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        messages.insert(message.replace(&format!("{name:?}"), "NAME"));
    }
    assert_eq!(messages.len(), 1, "{messages:#?}");
    // A revision cannot climb out of the store either.
    let r = post(
        server.port,
        &completion("hf:acme/x@../../../../etc", "Once", json!({})),
    );
    assert_eq!(error_code(&r, 404), "model_not_found");
    assert!(r.body.contains("revision"), "{}", r.body);
    assert_eq!(loaded(&server), ["stories260k"]);
    let r = post(
        server.port,
        &completion("stories260k", "Once", json!({"max_tokens": 2})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A model that fails to load (weights cut short, a config the loader refuses) fails that
/// request alone, says so without naming its files (the message named the store's paths), and
/// costs no idle model its place under --max-models (the idle one was unloaded before the new
/// one was known to load).
#[test]
fn a_model_that_fails_to_load_fails_its_request_only() {
    let sb = sandbox();
    let cut = stories_copy(&sb, "cut", |d| {
        std::fs::write(d.join("model.safetensors"), support::noise(1000, 3)).unwrap();
    });
    let headless = stories_copy(&sb, "headless", |d| {
        let path = d.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["num_attention_heads"] = json!(0);
        config.as_object_mut().unwrap().remove("head_dim");
        std::fs::write(&path, config.to_string()).unwrap();
    });
    let reg = registry_of(&sb, &[("cut", &cut), ("headless", &headless)]);
    let server = Server::start(
        &sb,
        &[
            "--registry",
            &reg,
            "--max-models",
            "1",
            "--keep-alive",
            "-1",
        ],
        &[],
    );
    let expected = &stories260k_expected()[0];
    let greedy = completion(
        "stories260k",
        expected["prompt"].as_str().unwrap(),
        json!({"max_tokens": 40, "temperature": 0}),
    );
    assert_eq!(post(server.port, &greedy).status, 200);
    for name in ["cut", "headless"] {
        let r = post(
            server.port,
            &completion(name, "Once", json!({"max_tokens": 2})),
        );
        assert_eq!(r.status, 500, "{}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(name) && message.contains("log"),
            "{message}"
        );
        assert!(!message.contains('/'), "names a path: {message}");
        assert_eq!(loaded(&server), ["stories260k"]);
    }
    let log = server.stderr();
    assert!(!log.contains("unloading stories260k"), "{log}");
    assert!(log.contains("cut"), "{log}");
    let r = post(server.port, &greedy);
    assert_eq!(r.json()["choices"][0]["text"], expected["continuation"]);
    assert_eq!(server.get("/health").status, 200);
}

/// A web page cannot drive the server: no simple request (text/plain, a form) reaches a
/// handler, a page's Origin is refused unless allowed, Host is one plain name, and bodies come
/// plain or chunked. (A POST with `Content-Type: text/plain` and `Origin: http://evil.example`
/// got 200; `localhost:1@evil.com`, `[::1]evil.com` and the first of two Host headers passed.)
#[test]
fn browsers_cannot_drive_it() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["stories260k", "--cors-origin", "https://app.example"],
        &[],
    );
    server.wait_healthy();
    let port = server.port;
    let body = completion("stories260k", "Once", json!({"max_tokens": 2}));
    let line = "POST /v1/completions HTTP/1.1";
    let ask = |headers: &[&str]| {
        let mut all = vec![host(port)];
        all.extend(headers.iter().map(|h| h.to_string()));
        by_hand(port, line, &all, &body)
    };
    assert_eq!(
        error_code(
            &ask(&["Content-Type: text/plain", "Origin: http://evil.example"]),
            403
        ),
        "origin_not_allowed"
    );
    for simple in [
        "Content-Type: text/plain",
        "Content-Type: application/x-www-form-urlencoded",
        "Content-Type: multipart/form-data; boundary=x",
    ] {
        error_code(&ask(&[simple]), 415);
    }
    error_code(&ask(&[]), 415);
    error_code(
        &ask(&[
            "Content-Type: application/json",
            "Origin: http://evil.example",
        ]),
        403,
    );
    error_code(
        &ask(&["Content-Type: application/json", "Origin: null"]),
        403,
    );
    let r = ask(&[
        "Content-Type: application/json; charset=utf-8",
        "Origin: https://app.example",
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // Host: one plain name or address and a port, nothing else.
    let json = "Content-Type: application/json".to_string();
    for hosts in [
        vec!["Host: localhost:1@evil.com"],
        vec!["Host: [::1]evil.com"],
        vec!["Host: 127.0.0.1", "Host: evil.example"],
        vec!["Host: evil.example", "Host: 127.0.0.1"],
        vec![],
    ] {
        let mut headers: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        headers.push(json.clone());
        let r = by_hand(port, line, &headers, &body);
        assert_eq!(error_code(&r, 400), "invalid_header", "{hosts:?}");
    }
    let r = by_hand(
        port,
        line,
        &["Host: evil.example:80".into(), json.clone()],
        &body,
    );
    error_code(&r, 403);
    // A transfer coding that is not chunked is not read as a plain body.
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let head = format!(
        "{line}\r\n{}\r\n{json}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
        host(port)
    );
    let r = raw(port, format!("{head}{chunked}").as_bytes());
    error_code(&r, 501);
    let head = format!(
        "{line}\r\n{}\r\n{json}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        host(port)
    );
    assert_eq!(raw(port, format!("{head}{chunked}").as_bytes()).status, 200);
    error_code(&ask(&[json.as_str(), "Content-Encoding: gzip"]), 415);
}

/// Slow and idle clients are cut off and connections are capped. (0 of 200 slow-header and 0
/// of 1,000 idle connections were ever dropped, a body shorter than its Content-Length held its
/// connection for ever, and idle sockets past the descriptor limit locked every client out.)
#[test]
fn slow_and_idle_clients_are_cut_off_and_connections_capped() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &[
            "stories260k",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--max-connections",
            "8",
        ],
        &[],
    );
    server.wait_healthy();
    let port = server.port;
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();
    let limit = Duration::from_secs(5);

    // Headers a byte at a time: closed about a second after connecting.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let started = Instant::now();
        let head = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: ");
        for b in head.bytes().chain(std::iter::repeat(b'a')) {
            if s.write_all(&[b]).is_err() || started.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    });
    // A socket that says nothing: closed after the header timeout too.
    let mut silent = connect();
    let waited = closed_within(&mut silent, limit).expect("a silent socket is closed");
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
    let slow = slow.join().unwrap();
    assert!(
        slow < Duration::from_secs(3),
        "a slow header held on for {slow:?}"
    );

    // Kept alive after a request, then silent: closed after the idle timeout.
    let mut kept = connect();
    write!(kept, "GET /health HTTP/1.1\r\n{}\r\n\r\n", host(port)).unwrap();
    let waited = closed_within(&mut kept, limit).expect("an idle connection is closed");
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");

    // A body shorter than its Content-Length: 408 after the body timeout, then closed.
    let mut short = connect();
    write!(
        short,
        "POST /v1/completions HTTP/1.1\r\n{}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"model\":",
        host(port)
    )
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    short.set_read_timeout(Some(limit)).unwrap();
    let _ = std::io::Read::read_to_end(&mut short, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Eight connections open: the ninth is told so at once, and closed.
    let held: Vec<TcpStream> = (0..8).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut ninth = connect();
    let mut answer = Vec::new();
    ninth.set_read_timeout(Some(limit)).unwrap();
    let _ = std::io::Read::read_to_end(&mut ninth, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--max-connections"), "{answer}");
    // Once the held sockets time out, clients get in again.
    for mut s in held {
        assert!(closed_within(&mut s, limit).is_some());
    }
    let r = post(
        port,
        &completion("stories260k", "Once", json!({"max_tokens": 2})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A client that asks for a long stream and never reads it: once the socket takes no more, the
/// answer waits for it --idle-timeout, then the connection is closed (the stream never ends
/// with [DONE]) rather than held for as long as the client likes.
#[test]
fn a_client_that_does_not_read_its_answer_is_cut_off() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["stories260k", "--parallel", "16", "--idle-timeout", "1s"],
        &[],
    );
    server.wait_healthy();
    // 16 choices of ~500 tokens with 20 alternatives each: megabytes of events, more than the
    // sockets' buffers hold.
    let body = json!({"model": "stories260k", "n": 16, "max_tokens": 500, "stream": true,
                      "logprobs": true, "top_logprobs": 20,
                      "messages": [{"role": "user", "content": "Once upon a time"}]})
    .to_string();
    // A small receive buffer, as the kernel would otherwise take megabytes for the client.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], server.port).into();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\n{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        host(server.port),
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..100]);
    assert!(
        !answer.contains("data: [DONE]"),
        "the whole stream ({} bytes) waited for its reader",
        answer.len()
    );
    server.wait_until_idle(Duration::from_secs(10));
}

/// The health check answers at once while other clients ask for the model cards (each reads
/// every registry model's files) and name models with megabytes of text (the name suggestions
/// took time in proportion). (/health stalled 1.7 to 12 s.)
#[test]
fn health_answers_while_others_ask_for_cards_and_huge_names() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k"], &[]);
    server.wait_healthy();
    let port = server.port;
    let huge = completion(&"x".repeat(4 << 20), "Once", json!({}));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|i| {
            let (huge, stop) = (huge.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = if i % 2 == 0 {
                        post(port, &huge)
                    } else {
                        request(port, "GET", "/v1/models", &[], "")
                    };
                    assert!(r.status == 404 || r.status == 200, "{}", r.status);
                    if i % 2 == 0 {
                        assert!(r.body.len() < 1000, "the huge name is echoed back");
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(server.get("/health").status, 200);
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "/health took {slowest:?}"
    );
}

/// A prompt of token ids is checked against the model's embedding rows, not only the
/// tokenizer's vocabulary: an id past the rows is a 400, and the stream beside it answers as
/// alone. (It passed the check, failed the batched forward, and ended another client's stream
/// with "the model failed".)
#[test]
fn token_ids_need_an_embedding_row() {
    let sb = sandbox();
    // The tokenizer knows one token more than the model has rows for.
    let extra = stories_copy(&sb, "extra", |d| {
        let path = d.join("tokenizer.json");
        let mut t: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        t["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": 512, "content": "<extra>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}));
        std::fs::write(&path, t.to_string()).unwrap();
    });
    let reg = registry_of(&sb, &[("extra", &extra)]);
    let server = Server::start(
        &sb,
        &["--registry", &reg, "extra", "--parallel", "2"],
        &[("OWRUN_TEST_HOOKS", "step_delay_ms=10")],
    );
    server.wait_healthy();
    let port = server.port;
    let expected = &stories260k_expected()[0];
    let stream = completion(
        "extra",
        expected["prompt"].as_str().unwrap(),
        json!({"max_tokens": 40, "temperature": 0, "stream": true}),
    );
    let beside = std::thread::spawn(move || post(port, &stream));
    std::thread::sleep(Duration::from_millis(100));
    let bad = json!({"model": "extra", "prompt": [1, 512, 300], "max_tokens": 5}).to_string();
    let r = post(port, &bad);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("token 512"), "{}", r.body);
    // The same token reached through the tokenizer, in a chat message.
    let chat = json!({"model": "extra", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "Once <extra>"}]});
    let r = request(port, "POST", "/v1/chat/completions", &[], &chat.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    let r = beside.join().unwrap();
    assert_eq!(r.sse_data().last().unwrap(), "[DONE]");
    let text: String = r
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            let c: Value = serde_json::from_str(d).unwrap();
            assert!(c.get("error").is_none(), "{c}");
            c["choices"][0]["text"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert_eq!(text, expected["continuation"].as_str().unwrap());
}

/// A loader that panics (a bug, or a file that finds one): the client is told the load failed
/// without the server's paths, the log says why, the server goes on, and the next request loads
/// the model. (A malformed file used to abort the whole server.)
#[test]
fn a_load_that_panics_fails_its_request_and_the_server_goes_on() {
    let sb = sandbox();
    let server = Server::start(&sb, &[], &[("OWRUN_TEST_HOOKS", "panic_loads=1")]);
    server.wait_healthy();
    let port = server.port;
    let expected = &stories260k_expected()[0];
    let ask = || {
        post(
            port,
            &completion(
                "stories260k",
                expected["prompt"].as_str().unwrap(),
                json!({"max_tokens": 40, "temperature": 0}),
            ),
        )
    };
    let r = ask();
    assert_eq!(r.status, 500, "{}", r.body);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert_eq!(
        message,
        "loading stories260k failed: the server's log says why"
    );
    // The log is read by a thread of its own: give the line a moment to arrive.
    let logged = Instant::now();
    while !server.stderr().contains("loading stories260k panicked")
        && logged.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.stderr().contains("loading stories260k panicked"),
        "{}",
        server.stderr()
    );
    let health = server.wait_healthy();
    assert_eq!(
        health["models"].as_array().map(Vec::len),
        Some(0),
        "{health}"
    );
    let r = ask();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], expected["continuation"]);
}

/// A panic in the model's thread outside the forward's guard: the request in flight is told
/// why (500), the model is unloaded, and the next request loads it again. (The thread ended
/// and the model answered 503 "shutting down" for ever.)
#[test]
fn a_dead_model_thread_is_reported_and_the_model_loaded_again() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["stories260k"],
        &[("OWRUN_TEST_HOOKS", "panic_token=300")],
    );
    server.wait_healthy();
    let port = server.port;
    let r = post(
        port,
        &json!({"model": "stories260k", "prompt": [1, 300], "max_tokens": 5}).to_string(),
    );
    assert_eq!(r.status, 500, "{}", r.body);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("thread failed") && message.contains("token 300"),
        "{message}"
    );
    let expected = &stories260k_expected()[0];
    for _ in 0..2 {
        let r = post(
            port,
            &completion(
                "stories260k",
                expected["prompt"].as_str().unwrap(),
                json!({"max_tokens": 40, "temperature": 0}),
            ),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["choices"][0]["text"], expected["continuation"]);
    }
    assert!(server.stderr().contains("unloading stories260k"));
    let health = server.wait_healthy();
    assert_eq!(health["models"][0]["slots_busy"], 0);
}

/// What a storm client did, and what came of it.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A status, and the text of a normal request.
    Answered(u16, Option<String>),
    /// The server closed the connection.
    Closed,
    /// The client hung up itself.
    HungUp,
}

/// 64 clients at once: normal streams and requests beside slow headers, idle sockets, oversized
/// and malformed bodies, bodies cut short, cross-site requests, bad schemas, client-named paths
/// and disconnects. Every normal request is answered as when alone, every bad one refused with
/// its status, no slot is lost, and the server's memory comes back near where it was.
#[test]
fn sixty_four_honest_and_hostile_clients_leave_it_as_it_was() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &[
            "stories260k",
            "--parallel",
            "8",
            "--max-body",
            "256K",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
            "--idle-timeout",
            "2s",
        ],
        &[],
    );
    server.wait_healthy();
    let port = server.port;
    let started = Instant::now();
    let prompts: Vec<String> = stories260k_expected()
        .iter()
        .map(|g| g["prompt"].as_str().unwrap().to_string())
        .collect();
    let normal = move |i: usize| {
        completion(
            "stories260k",
            &prompts[i % prompts.len()],
            json!({"max_tokens": 30, "temperature": 0, "stream": i.is_multiple_of(2)}),
        )
    };
    let text_of = |r: &Response| -> String {
        if r.header("content-type") == Some("text/event-stream") {
            r.sse_data()
                .iter()
                .filter(|d| *d != "[DONE]")
                .map(|d| {
                    let c: Value = serde_json::from_str(d).unwrap();
                    c["choices"][0]["text"].as_str().unwrap_or("").to_string()
                })
                .collect()
        } else {
            r.json()["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    // Each normal request alone first; then memory, once warm.
    let kinds = 2 * stories260k_expected().len();
    let alone: Vec<String> = (0..kinds)
        .map(|i| text_of(&post(port, &normal(i))))
        .collect();
    let rss_before = server.resident_bytes();

    // The storm twice: each time, once the server has been without clients for a second, its
    // threads hand back what the storm's requests used, and resident memory comes back to
    // where it was (the model's buffers aside, which the next forward takes again).
    let mut rss = vec![rss_before];
    for _ in 0..2 {
        let clients: Vec<_> = (0..64usize)
            .map(|i| {
                let (body, stream) = (normal(i), normal(0));
                std::thread::spawn(move || -> Outcome {
                    let answered = |r: Response| Outcome::Answered(r.status, None);
                    let limit = Duration::from_secs(10);
                    match i % 16 {
                        // Slow headers, then an idle socket: both closed by the server.
                        6 => {
                            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                            let _ = s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0");
                            closed_within(&mut s, limit).map_or(Outcome::HungUp, |_| Outcome::Closed)
                        }
                        7 => {
                            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                            closed_within(&mut s, limit).map_or(Outcome::HungUp, |_| Outcome::Closed)
                        }
                        8 => {
                            let big = completion("stories260k", &"a".repeat(300_000), json!({}));
                            answered(post(port, &big))
                        }
                        9 => answered(post(port, "{\"model\": \"stories260k\", \"prompt\": ")),
                        10 => answered(by_hand(
                            port,
                            "POST /v1/completions HTTP/1.1",
                            &[
                                host(port),
                                "Content-Type: text/plain".into(),
                                "Origin: http://evil.example".into(),
                            ],
                            &body,
                        )),
                        11 => {
                            // About 110 KB of schema, over the 64 KB limit.
                            let values: Vec<String> = (0..10_000).map(|v| format!("v{v:06}")).collect();
                            let schema = json!({"enum": values});
                            let bad = json!({"model": "stories260k", "prompt": "Once",
                                "response_format": {"type": "json_schema",
                                                    "json_schema": {"name": "x", "schema": schema}}});
                            answered(post(port, &bad.to_string()))
                        }
                        12 => {
                            hang_up_after(port, "/v1/completions", &stream, 300);
                            Outcome::HungUp
                        }
                        13 => {
                            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                            let _ = write!(
                                s,
                                "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                                 Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{"
                            );
                            let mut answer = Vec::new();
                            s.set_read_timeout(Some(limit)).unwrap();
                            let _ = std::io::Read::read_to_end(&mut s, &mut answer);
                            let status = String::from_utf8_lossy(&answer)
                                .split_whitespace()
                                .nth(1)
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            Outcome::Answered(status, None)
                        }
                        14 => answered(post(
                            port,
                            &completion("/etc/passwd", "Once", json!({"max_tokens": 2})),
                        )),
                        15 => answered(post(
                            port,
                            &completion("stories260k", "Once", json!({"n": 99})),
                        )),
                        _ => {
                            let r = post(port, &body);
                            let status = r.status;
                            let text = (status == 200).then(|| text_of(&r));
                            Outcome::Answered(status, text)
                        }
                    }
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        for (i, outcome) in outcomes.iter().enumerate() {
            let want = match i % 16 {
                6 | 7 => Outcome::Closed,
                8 => Outcome::Answered(413, None),
                9 | 11 | 15 => Outcome::Answered(400, None),
                10 => Outcome::Answered(403, None),
                12 => Outcome::HungUp,
                13 => Outcome::Answered(408, None),
                14 => Outcome::Answered(404, None),
                _ => Outcome::Answered(200, Some(alone[i % alone.len()].clone())),
            };
            assert_eq!(*outcome, want, "client {i}");
        }
        server.wait_until_idle(Duration::from_secs(10));
        let health = server.get("/health").json();
        assert_eq!(health["models"][0]["slots"], 8);
        assert_eq!(health["models"][0]["slots_busy"], 0);
        let settled = Instant::now() + Duration::from_secs(5);
        let mut now = server.resident_bytes();
        while now >= rss_before + (8 << 20) && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(100));
            now = server.resident_bytes();
        }
        rss.push(now);
    }
    let mb: Vec<u64> = rss.iter().map(|b| b >> 20).collect();
    assert!(rss[1] < rss[0] + (8 << 20), "resident memory (MB): {mb:?}");
    assert!(rss[2] < rss[0] + (8 << 20), "resident memory (MB): {mb:?}");
    assert_eq!(text_of(&post(port, &normal(1))), alone[1]);
    assert!(started.elapsed() < Duration::from_secs(60));
    eprintln!(
        "storms: {:.1} s; resident memory {mb:?} MB before and after each",
        started.elapsed().as_secs_f64()
    );
}
