//! `owrun serve` end to end: the real binary on a free port, the built-in stories260k, plain
//! HTTP over sockets, curl for the raw stream, and the `openai` Python package as a client.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::server::{hang_up_after, request, Server};
use support::{stories260k_dir, stories260k_expected, Sandbox};

fn sandbox() -> Sandbox {
    // Nothing may touch the network: port 9 is discard.
    Sandbox::new("http://127.0.0.1:9")
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "stories260k",
        "messages": [{"role": "user", "content": content}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn completion_body(prompt: &str, extra: Value) -> Value {
    let mut body = json!({"model": "stories260k", "prompt": prompt});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn greedy_answers_match_owrun_run_and_transformers() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k"], &[]);
    let health = server.wait_healthy();
    assert_eq!(health["models"][0]["id"], "stories260k");
    for g in stories260k_expected() {
        let prompt = g["prompt"].as_str().unwrap();
        let r = server.post(
            "/v1/completions",
            &completion_body(prompt, json!({"max_tokens": 40, "temperature": 0})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], g["continuation"], "{prompt}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 40);
        assert_eq!(
            v["usage"]["prompt_tokens"],
            g["prompt_ids"].as_array().unwrap().len()
        );
    }
    // Chat on a model without a chat template: the messages' text, as `owrun run` sends it.
    let r = server.post(
        "/v1/chat/completions",
        &chat_body(
            "Once upon a time",
            json!({"max_tokens": 40, "temperature": 0}),
        ),
    );
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        stories260k_expected()[0]["continuation"]
    );
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
}

/// `--ctx` and `--kv-type` apply to the server's slots: a prompt over the chosen context is
/// refused naming it, and answers within it are the transformers tokens (stories260K's expected
/// continuations, with a bf16 cache as with f32: its answers keep every greedy token).
#[test]
fn the_context_and_kv_type_apply_per_slot() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["stories260k", "--ctx", "100", "--kv-type", "bf16"],
        &[],
    );
    server.wait_healthy();
    let g = &stories260k_expected()[0];
    let r = server.post(
        "/v1/completions",
        &completion_body(
            g["prompt"].as_str().unwrap(),
            json!({"max_tokens": 40, "temperature": 0}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], g["continuation"]);
    let long = "Once upon a time there was a cat. ".repeat(12);
    let r = server.post("/v1/completions", &completion_body(&long, json!({})));
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(e["message"].as_str().unwrap().contains("100 tokens"), "{e}");
}

#[test]
fn a_stream_is_framed_as_openai_clients_read_it() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k"], &[]);
    server.wait_healthy();
    let body = chat_body(
        "Once upon a time",
        json!({"max_tokens": 12, "temperature": 0, "stream": true,
               "stream_options": {"include_usage": true}}),
    );
    let out = std::process::Command::new("curl")
        .args(["-sN", "-i", "-H", "Content-Type: application/json", "-d"])
        .arg(body.to_string())
        .arg(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            server.port
        ))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    // Every event is one `data: …` line followed by a blank line.
    assert!(body.ends_with("data: [DONE]\n\n"), "{body:?}");
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    for e in &events {
        assert!(e.starts_with("data: ") && !e.contains('\n'), "{e:?}");
    }
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e["data: ".len()..]).unwrap())
        .collect();
    let id = chunks[0]["id"].clone();
    assert!(chunks.iter().all(|c| c["id"] == id));
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    let last = rest.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(rest[..rest.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null() && c["usage"].is_null()));
    let streamed: String = rest
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let whole = server
        .post(
            "/v1/chat/completions",
            &chat_body(
                "Once upon a time",
                json!({"max_tokens": 12, "temperature": 0}),
            ),
        )
        .json();
    assert_eq!(streamed, whole["choices"][0]["message"]["content"]);
}

#[test]
fn bad_requests_get_openai_shaped_errors() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k", "--max-body", "64K"], &[]);
    server.wait_healthy();
    let error = |r: &support::server::Response, status: u16| -> Value {
        assert_eq!(r.status, status, "{}", r.body);
        let e = r.json()["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e["type"].is_string(), "{e}");
        e
    };
    let port = server.port;
    let post_raw = |path: &str, body: &str| request(port, "POST", path, &[], body);

    let e = error(&post_raw("/v1/chat/completions", "{\"model\": "), 400);
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"));
    let e = error(
        &server.post(
            "/v1/chat/completions",
            &chat_body("hi", json!({"temperature": "warm"})),
        ),
        400,
    );
    assert_eq!(e["param"], "temperature");
    let e = error(
        &server.post(
            "/v1/chat/completions",
            &chat_body("hi", json!({"top_p": 7})),
        ),
        400,
    );
    assert_eq!(e["param"], "top_p");
    let e = error(
        &server.post("/v1/completions", &json!({"model": "stories260k"})),
        400,
    );
    assert_eq!(e["param"], "prompt");
    // A prompt over the context is refused with the counts, never cut.
    let long = "Once upon a time there was a cat. ".repeat(60);
    let e = error(
        &server.post("/v1/completions", &completion_body(&long, json!({}))),
        400,
    );
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(e["message"].as_str().unwrap().contains("512 tokens"), "{e}");
    let e = error(
        &server.post(
            "/v1/chat/completions",
            &json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
        ),
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    // A registry model that is not pulled: 404 saying how to pull it (nothing is downloaded).
    let e = error(
        &server.post(
            "/v1/chat/completions",
            &json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}]}),
        ),
        404,
    );
    assert!(e["message"].as_str().unwrap().contains("owrun pull"), "{e}");
    error(&server.get("/v2/nothing"), 404);
    error(&server.get("/v1/chat/completions"), 405);
    let big = format!(
        "{{\"model\": \"stories260k\", \"prompt\": \"{}\"}}",
        "a".repeat(70_000)
    );
    error(&post_raw("/v1/completions", &big), 413);
    // DNS rebinding: a loopback server answers only for loopback names.
    let r = request(
        port,
        "GET",
        "/v1/models",
        &[("Host", "attacker.example:11435")],
        "",
    );
    error(&r, 403);
    let r = request(port, "GET", "/v1/models", &[("Host", "localhost:1")], "");
    assert_eq!(r.status, 200);
    // No CORS headers unless asked for, and a page's request is refused.
    let r = request(
        port,
        "GET",
        "/v1/models",
        &[("Origin", "https://example.com")],
        "",
    );
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(error(&r, 403)["code"], "origin_not_allowed");
    // An invalid (or unsupported) JSON schema is a 400 saying why.
    let e = error(
        &server.post(
            "/v1/chat/completions",
            &chat_body(
                "x",
                json!({"response_format": {"type": "json_schema", "json_schema":
                    {"name": "x", "schema": {"type": "object", "required": ["a"],
                                             "properties": {"b": {"type": "string"}}}}}}),
            ),
        ),
        400,
    );
    assert_eq!(e["param"], "response_format");
    assert!(e["message"].as_str().unwrap().contains("\"a\""), "{e}");
    // After all that, it still answers.
    let r = server.post(
        "/v1/completions",
        &completion_body("Once upon a time", json!({"max_tokens": 3})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_api_key_is_required_except_for_health_and_cors_is_opt_in() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["stories260k", "--cors-origin", "https://app.example"],
        &[("OWRUN_API_KEY", "s3cret")],
    );
    server.wait_healthy();
    let r = server.get("/v1/models");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = request(
        server.port,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer wrong")],
        "",
    );
    assert_eq!(r.status, 401);
    let r = request(
        server.port,
        "GET",
        "/v1/models",
        &[
            ("Authorization", "Bearer s3cret"),
            ("Origin", "https://app.example"),
        ],
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let models = r.json();
    let card = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "stories260k")
        .unwrap()
        .clone();
    assert_eq!(card["license"], "mit");
    assert_eq!(card["commercial_use"], "allowed");
    assert_eq!(card["pulled"], true);
    assert_eq!(card["loaded"], true);
    let not_pulled = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "llama3.2-1b")
        .unwrap()
        .clone();
    assert_eq!(not_pulled["pulled"], false);
    assert_eq!(not_pulled["license"], "llama3.2");
    // Another origin gets no permission.
    let r = request(
        server.port,
        "GET",
        "/v1/models",
        &[
            ("Authorization", "Bearer s3cret"),
            ("Origin", "https://evil.example"),
        ],
        "",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_full_queue_is_a_503_with_retry_after_and_a_hang_up_frees_the_slot() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["stories260k", "--parallel", "1", "--queue", "1"],
        &[("OWRUN_TEST_HOOKS", "step_delay_ms=20")],
    );
    server.wait_healthy();
    let long = completion_body(
        "Once upon a time",
        json!({"max_tokens": 400, "stream": true, "temperature": 0}),
    )
    .to_string();
    let port = server.port;
    // One generating (slow: 20 ms a token), one waiting.
    let a = {
        let long = long.clone();
        std::thread::spawn(move || request(port, "POST", "/v1/completions", &[], &long))
    };
    std::thread::sleep(Duration::from_millis(300));
    let b = {
        let long = long.clone();
        std::thread::spawn(move || request(port, "POST", "/v1/completions", &[], &long))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.in_use() != (1, 1) {
        assert!(Instant::now() < deadline, "{}", server.get("/health").body);
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = server.post("/v1/completions", &completion_body("Hi", json!({})));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "server_busy");
    drop((a, b));

    // A client that hangs up mid-stream frees its slot within a token or two.
    server.wait_until_idle(Duration::from_secs(30));
    hang_up_after(port, "/v1/completions", &long, 400);
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    server.wait_until_idle(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn prefixes_are_reused_and_seeds_repeat_with_one_slot_or_four() {
    let sb = sandbox();
    let outputs = |parallel: &str| -> Vec<String> {
        let server = Server::start(&sb, &["stories260k", "--parallel", parallel], &[]);
        server.wait_healthy();
        let port = server.port;
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let body = completion_body(
                    "Once upon a time",
                    json!({"max_tokens": 30, "temperature": 1.0, "seed": 100 + i}),
                )
                .to_string();
                std::thread::spawn(move || {
                    let r = request(port, "POST", "/v1/completions", &[], &body);
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()["choices"][0]["text"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let one = outputs("1");
    let four = outputs("4");
    assert_eq!(one, four);
    assert!(one.iter().collect::<std::collections::BTreeSet<_>>().len() > 1);

    // A conversation sent again with one more turn reuses the cached prefix.
    let server = Server::start(&sb, &["stories260k", "--parallel", "2"], &[]);
    server.wait_healthy();
    let first = chat_body(
        "Once upon a time",
        json!({"max_tokens": 20, "temperature": 0}),
    );
    let r = server.post("/v1/chat/completions", &first).json();
    let answer = r["choices"][0]["message"]["content"].clone();
    let again = json!({
        "model": "stories260k",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "Once upon a time"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "The end."},
        ],
    });
    let r = server.post("/v1/chat/completions", &again).json();
    let cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached >= 20 && cached < prompt, "{cached} of {prompt}");
}

#[test]
fn n_choices_and_logprobs() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k"], &[]);
    server.wait_healthy();
    let r = server.post(
        "/v1/chat/completions",
        &chat_body(
            "Once upon a time",
            json!({"n": 3, "max_tokens": 8, "temperature": 1.5, "seed": 7,
                   "logprobs": true, "top_logprobs": 2}),
        ),
    );
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let content = c["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 8);
        for t in content {
            let lp = t["logprob"].as_f64().unwrap();
            assert!(lp <= 0.0);
            let top = t["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 2);
            assert!(top[0]["logprob"].as_f64().unwrap() >= lp - 1e-6);
        }
        let joined: String = content
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        assert_eq!(
            joined.trim(),
            c["message"]["content"].as_str().unwrap().trim()
        );
    }
    assert_eq!(v["usage"]["completion_tokens"], 24);
    // Legacy completions logprobs: tokens, token_logprobs, top_logprobs maps, offsets.
    let v = server
        .post(
            "/v1/completions",
            &completion_body(
                "Once upon a time",
                json!({"max_tokens": 4, "temperature": 0, "logprobs": 3}),
            ),
        )
        .json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 3);
    assert_eq!(lp["text_offset"][0], 0);
}

#[test]
fn thirty_two_clients_with_hang_ups_and_bad_requests_leave_it_healthy() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k", "--parallel", "8"], &[]);
    server.wait_healthy();
    let port = server.port;
    let long_prompt = "Once upon a time there was a cat. ".repeat(60);
    let started = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let long_prompt = long_prompt.clone();
            std::thread::spawn(move || -> u16 {
                let stream = i % 2 == 0;
                let body = completion_body(
                    "Once upon a time",
                    json!({"max_tokens": 60 + i, "stream": stream, "seed": i}),
                )
                .to_string();
                match i % 8 {
                    // Hang up midway.
                    0 | 5 => {
                        hang_up_after(port, "/v1/completions", &body, 200 + 37 * i as usize);
                        0
                    }
                    1 => request(port, "POST", "/v1/completions", &[], "{\"model\": [").status,
                    2 => {
                        let b = completion_body(&long_prompt, json!({})).to_string();
                        request(port, "POST", "/v1/completions", &[], &b).status
                    }
                    3 => {
                        let b = chat_body("hi", json!({"n": 99})).to_string();
                        request(port, "POST", "/v1/chat/completions", &[], &b).status
                    }
                    _ => {
                        let r = request(port, "POST", "/v1/completions", &[], &body);
                        if stream && r.status == 200 {
                            assert_eq!(r.sse_data().last().unwrap(), "[DONE]");
                        }
                        r.status
                    }
                }
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(started.elapsed() < Duration::from_secs(120));
    for (i, s) in statuses.iter().enumerate() {
        let want = match i % 8 {
            0 | 5 => 0,
            1..=3 => 400,
            _ => 200,
        };
        assert_eq!(*s, want, "client {i}");
    }
    server.wait_until_idle(Duration::from_secs(10));
    let v = server
        .post(
            "/v1/completions",
            &completion_body(
                "Once upon a time",
                json!({"max_tokens": 40, "temperature": 0}),
            ),
        )
        .json();
    assert_eq!(
        v["choices"][0]["text"],
        stories260k_expected()[0]["continuation"]
    );
}

#[test]
fn health_says_loading_then_models_go_after_keep_alive_and_sigterm_ends_streams() {
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["--keep-alive", "1s", "--parallel", "2"],
        &[("OWRUN_TEST_HOOKS", "load_delay_ms=800,step_delay_ms=30")],
    );
    // Nothing loaded: healthy, no models.
    assert_eq!(server.get("/health").json()["models"], json!([]));
    let port = server.port;
    let first = std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/v1/completions",
            &[],
            &completion_body("Once", json!({"max_tokens": 2})).to_string(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = server.get("/health");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["status"], "loading");
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(server.get("/health").status, 200);
    // Unloaded after a second without requests.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.get("/health").json()["models"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.stderr().contains("unloading stories260k"));

    // SIGTERM mid-stream: the stream ends with an error event and [DONE], the server exits 0.
    let streaming = std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/v1/completions",
            &[],
            &completion_body("Once", json!({"max_tokens": 400, "stream": true})).to_string(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.in_use().0 == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.terminate(Duration::from_secs(10)), Some(0));
    let r = streaming.join().unwrap();
    let data = r.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{error}"
    );
}

#[test]
fn the_license_gate_applies_without_asking() {
    let sb = sandbox();
    // A pulled copy of stories260k under a registry entry whose license needs acceptance (the
    // gate judges registry models by their entry).
    let repo = "acme/gated-stories";
    sb.install_pulled(repo, &stories260k_dir());
    let reg = sb.registry_file(
        "gated.toml",
        &format!(
            r#"[models.gated-stories]
repo = "{repo}"
family = "llama"
params = 260000
context = 512
license = "llama3.2"
description = "stories260K under a license that needs acceptance"
[models.nc-stories]
repo = "{repo}"
family = "llama"
params = 260000
context = 512
license = "cc-by-nc-4.0"
description = "stories260K under a non-commercial license"
"#
        ),
    );
    let reg = reg.to_str().unwrap();
    // Named on the command line: refused at start with the license's exit code.
    let r = sb.run(&["--registry", reg, "serve", "gated-stories", "--port", "0"]);
    r.fails_with(3, "owrun license accept");

    let server = Server::start(&sb, &["--registry", reg], &[]);
    let ask = |model: &str| {
        server.post(
            "/v1/completions",
            &json!({"model": model, "prompt": "Once", "max_tokens": 2}),
        )
    };
    let r = ask("gated-stories");
    assert_eq!(r.status, 403, "{}", r.body);
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "license_not_accepted");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("owrun license accept"));
    sb.run(&["--registry", reg, "license", "accept", "gated-stories"])
        .ok();
    let r = ask("gated-stories");
    assert_eq!(r.status, 200, "{}", r.body);
    // Acceptance is recorded while the server runs; the next request sees it.
    assert_eq!(ask("nc-stories").status, 403);
    sb.run(&["--registry", reg, "license", "accept", "nc-stories"])
        .ok();
    assert_eq!(ask("nc-stories").status, 200);
    drop(server);

    let server = Server::start(&sb, &["--registry", reg], &[("OWRUN_USE", "commercial")]);
    let r = server.post(
        "/v1/completions",
        &json!({"model": "nc-stories", "prompt": "Once", "max_tokens": 2}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "license_forbids_use");
    let r = server.post(
        "/v1/completions",
        &json!({"model": "stories260k", "prompt": "Once", "max_tokens": 2}),
    );
    assert_eq!(r.status, 200);
}

/// The real `openai` Python client. CI installs it in a venv and names its python in
/// OWRUN_TEST_PYTHON; elsewhere a python3 that imports openai serves, else the test is skipped.
#[test]
fn the_openai_python_client_works_against_it() {
    let python = std::env::var("OWRUN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_openai = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true needs OWRUN_TEST_PYTHON with the openai package"
        );
        eprintln!("\n*** SKIPPED: no python with the openai package (set OWRUN_TEST_PYTHON) ***\n");
        return;
    }
    let sb = sandbox();
    let server = Server::start(
        &sb,
        &["stories260k", "--api-key", "k3y", "--parallel", "4"],
        &[],
    );
    server.wait_healthy();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .env(
            "OPENAI_BASE_URL",
            format!("http://127.0.0.1:{}/v1", server.port),
        )
        .env("OPENAI_API_KEY", "k3y")
        .env(
            "EXPECTED",
            serde_json::to_string(&stories260k_expected()).unwrap(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\nserver:\n{}",
        server.stderr()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn response_formats_are_enforced_by_constrained_decoding() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k"], &[]);
    server.wait_healthy();
    // A story model knows nothing of JSON: whatever it writes is held to the schema.
    let schema = json!({
        "type": "object",
        "properties": {
            "age": {"type": "integer"},
            "happy": {"type": "boolean"},
            "mood": {"enum": ["glad", "sad"]},
            "pets": {"type": "array", "items": {"type": "null"}, "maxItems": 2}
        },
        "required": ["age", "happy", "mood"]
    });
    for (seed, stream) in [(1, false), (2, true), (3, false)] {
        let body = chat_body(
            "Once upon a time",
            json!({"max_tokens": 120, "temperature": 1.0, "seed": seed, "stream": stream,
                   "response_format": {"type": "json_schema",
                                       "json_schema": {"name": "kid", "schema": schema}}}),
        );
        let r = server.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let content: String = if stream {
            r.streamed_delta("content")
        } else {
            r.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let v: Value =
            serde_json::from_str(&content).unwrap_or_else(|e| panic!("{e}: not JSON: {content:?}"));
        assert!(v["age"].is_i64(), "{v}");
        assert!(v["happy"].is_boolean(), "{v}");
        assert!(v["mood"] == "glad" || v["mood"] == "sad", "{v}");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert!(keys
            .iter()
            .all(|k| ["age", "happy", "mood", "pets"].contains(&k.as_str())));
    }
    // json_object: whatever it writes is a JSON object, as far as it got.
    let r = server
        .post(
            "/v1/completions",
            &completion_body(
                "Once upon a time",
                json!({"max_tokens": 60, "temperature": 0,
                       "response_format": {"type": "json_object"}}),
            ),
        )
        .json();
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(text.trim_start().starts_with('{'), "{text:?}");
    if r["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
    }
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object",
                           "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                          "days": {"type": "integer"}},
                           "required": ["city"]}}},
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
    ])
}

#[test]
fn tool_calls_are_made_parsed_and_streamed_with_indexes() {
    let sb = sandbox();
    let server = Server::start(&sb, &["stories260k"], &[]);
    server.wait_healthy();
    let ask = |extra: Value| {
        let mut body = chat_body(
            "What is the weather in Oslo?",
            json!({"max_tokens": 120, "temperature": 0, "tools": weather_tools()}),
        );
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        server.post("/v1/chat/completions", &body)
    };
    // A named function: the model must call it, with arguments of its schema.
    let r = ask(json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}));
    let v = r.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"] == "Oslo" || args["city"] == "Paris", "{args}");

    // Streaming: the call arrives as a tool_calls delta with its index.
    let r = ask(json!({"tool_choice": "required", "stream": true}));
    let chunks: Vec<Value> = r
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert!(!calls.is_empty(), "{chunks:?}");
    for c in &calls {
        assert_eq!(c[0]["index"], 0);
        assert!(["get_weather", "add"].contains(&c[0]["function"]["name"].as_str().unwrap()));
    }
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // tool_choice none: a plain answer; auto: a story model answers in prose.
    for choice in ["none", "auto"] {
        let v = ask(json!({"tool_choice": choice, "max_tokens": 10})).json();
        assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
        assert!(v["choices"][0]["message"]["content"].is_string());
    }
    // A conversation that carries a call and its result renders and answers.
    let v = server
        .post(
            "/v1/chat/completions",
            &json!({"model": "stories260k", "max_tokens": 5, "tools": weather_tools(),
                "messages": [
                    {"role": "user", "content": "Weather in Oslo?"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                        "type": "function", "function": {"name": "get_weather",
                        "arguments": "{\"city\": \"Oslo\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]}),
        )
        .json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    // Bad tool requests are 400s naming the field.
    let r = ask(json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "tool_choice");
    let r = server.post(
        "/v1/chat/completions",
        &chat_body(
            "x",
            json!({"tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"type": "wat"}}}]}),
        ),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "tools[0]");
}

#[test]
fn a_reasoning_model_s_thinking_goes_to_reasoning_content() {
    let sb = sandbox();
    // The tiny DeepSeek-R1-distill fixture: its template opens <think> for the model.
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/deepseek_r1_llama");
    let model = model.to_str().unwrap();
    let server = Server::start(&sb, &[model], &[]);
    server.wait_healthy();
    let body = json!({"model": model, "max_tokens": 12, "temperature": 0,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let v = server.post("/v1/chat/completions", &body).json();
    let message = &v["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap();
    assert!(!reasoning.is_empty(), "{v}");
    assert!(!message["content"].as_str().unwrap().contains(reasoning));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = server.post("/v1/chat/completions", &streamed);
    let thinking = r.streamed_delta("reasoning_content");
    assert_eq!(thinking.trim(), reasoning);
}

#[test]
fn max_models_makes_room_and_a_public_address_is_warned_about() {
    let sb = sandbox();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    sb.install_pulled("acme/tiny-llama", &fixture);
    let reg = sb.registry_file(
        "llama.toml",
        r#"[models.tiny-llama]
repo = "acme/tiny-llama"
family = "llama"
params = 70000
context = 256
license = "mit"
description = "the tiny llama fixture"
"#,
    );
    let llama = "tiny-llama";
    let server = Server::start(
        &sb,
        &[
            "--registry",
            reg.to_str().unwrap(),
            "--max-models",
            "1",
            "--host",
            "0.0.0.0",
            "--keep-alive",
            "-1",
        ],
        &[],
    );
    assert!(
        server.stderr().contains("reachable from other machines"),
        "{}",
        server.stderr()
    );
    let ask = |model: &str| {
        let r = server.post(
            "/v1/completions",
            &json!({"model": model, "prompt": "Once", "max_tokens": 3}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    ask("stories260k");
    ask(llama);
    let loaded: Vec<Value> = server.get("/health").json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(loaded, [json!(llama)]);
    assert!(server
        .stderr()
        .contains("unloading stories260k to make room"));
    ask("stories260k");
}
