//! `owrun serve`: an OpenAI-compatible HTTP server (axum on tokio) over the engine.
//!
//! - `conn`: the accept loop, the connection cap and the clients' time limits;
//! - `guard`: which requests get in (Host, Origin, content type, API key);
//! - `openai`: the request fields and the response/stream shapes;
//! - `scheduler`: continuous batching of many sequences on one model;
//! - `catalog`: which models a client may name, opened through the model opener;
//! - `models`: loading on first use, keep-alive, `--max-models`;
//! - `error`: OpenAI-shaped errors.
//!
//! A request passes the guard on its headers, then its body is read whole (within the body
//! timeout), then the handlers parse it off the async threads. The model thread does the
//! computing; the two async threads only route and stream, so that no request can stall the
//! others (the health check included).

pub mod catalog;
mod conn;
mod error;
mod guard;
pub mod models;
mod openai;
mod scheduler;
mod tools;
mod work;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::generate::constrain::{JsonConstraint, Schema};
use conn::BodyLimits;
pub use conn::Limits;
pub use error::ApiError;
use guard::{Guard, Origins};
use models::{Models, Served};
use openai::{AdapterRef, Common, Endpoint, PromptInput, Reply};
use scheduler::{Event, Job, Refused};
use work::Work;

pub struct ServeOptions {
    pub host: IpAddr,
    pub port: u16,
    pub api_key: Option<String>,
    /// Origins allowed to call from a browser ("*" for any); none: no CORS headers, and
    /// requests that carry an Origin are refused.
    pub cors_origins: Vec<String>,
    pub body_limit: usize,
    /// Time limits and the connection cap.
    pub limits: Limits,
    /// Models to load at start and keep loaded.
    pub preload: Vec<String>,
}

struct App {
    models: Models,
    /// Where requests are parsed, rendered and tokenized.
    work: Work,
    body_limit: usize,
    /// Models named on the command line not loaded yet (the health check says "loading").
    warming: AtomicUsize,
}

/// Run the server until SIGTERM or Ctrl-C.
pub fn serve(models: Models, opts: ServeOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // A worker going idle hands back its freed memory when the server has asked for it.
        .on_thread_park(|| {
            crate::memory::trim_if_asked();
        })
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(run(models, opts))
}

async fn run(models: Models, opts: ServeOptions) -> Result<()> {
    let addr = SocketAddr::new(opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another server using it? pick one with --port)")
    })?;
    let local = listener.local_addr()?;
    if !opts.host.is_loopback() {
        eprintln!(
            "owrun: warning: listening on {local}, reachable from other machines{}",
            if opts.api_key.is_none() {
                " with no API key: anyone who can reach it can use it (set --api-key)"
            } else {
                ""
            }
        );
    }
    let app = Arc::new(App {
        models,
        work: Work::new()?,
        body_limit: opts.body_limit,
        warming: AtomicUsize::new(opts.preload.len()),
    });
    for name in opts.preload.clone() {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = app.models.get(&name, true).await {
                eprintln!("owrun: cannot load {name}: {}", e.message);
            }
            app.warming.fetch_sub(1, Ordering::SeqCst);
        });
    }
    let reaper = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            reaper.models.reap().await;
        }
    });

    let router = router(app.clone(), &opts)?;
    eprintln!("owrun: listening on http://{local} (OpenAI API under /v1; Ctrl-C or SIGTERM stops)");
    let stop = app.models.stop.clone();
    let shutdown = async move {
        shutdown_signal().await;
        eprintln!("owrun: shutting down: ending the streams in flight");
        stop.store(true, Ordering::SeqCst);
    };
    // Without clients for a second: every thread hands back the memory their requests freed.
    let trimmer = app.clone();
    let idle = Arc::new(move || {
        crate::memory::trim();
        trimmer.work.trim();
    });
    let server = conn::serve(listener, router, opts.limits, idle, shutdown);
    // Streams end within a step of the stop; connections that linger are not waited for long.
    let stopped = app.models.stop.clone();
    tokio::select! {
        r = server => r.context("the server failed")?,
        _ = async {
            while !stopped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => {}
    }
    eprintln!("owrun: stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn router(app: Arc<App>, opts: &ServeOptions) -> Result<Router> {
    let guard = Arc::new(Guard::new(
        opts.api_key.as_deref(),
        opts.host.is_loopback(),
        Origins::from_flags(&opts.cors_origins),
    ));
    let body = BodyLimits {
        bytes: opts.body_limit,
        time: opts.limits.body,
    };
    // Layers run from the last added: the guard on the headers, then the body is read.
    let mut router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(one_model))
        .route("/health", get(health))
        .fallback(|req: Request| async move { ApiError::not_found_path(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(opts.body_limit))
        .layer(axum::middleware::from_fn_with_state(body, conn::read_body))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .with_state(app);
    if !opts.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let origin = if opts.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let list = opts
                .cors_origins
                .iter()
                .map(|o| {
                    HeaderValue::from_str(o).with_context(|| format!("bad --cors-origin {o:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            AllowOrigin::list(list)
        };
        router = router.layer(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    Ok(router)
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let loading = app.models.loading() + app.warming.load(Ordering::SeqCst);
    let mut loaded: Vec<Value> = app
        .models
        .all()
        .await
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "slots": s.scheduler.slots,
                "slots_busy": s.scheduler.active(),
                "queued": s.scheduler.queued(),
            })
        })
        .collect();
    loaded.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    if loading > 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"status": "loading", "models": loaded})),
        )
            .into_response();
    }
    Json(json!({"status": "ok", "models": loaded})).into_response()
}

async fn model_cards(app: &App) -> Result<Vec<Value>, ApiError> {
    let loaded = app.models.loaded_ids().await;
    Ok(app
        .models
        .cards()
        .await?
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "object": "model",
                "created": 0,
                "owned_by": "owrun",
                "license": c.licenses.first(),
                "licenses": c.licenses,
                "commercial_use": c.commercial,
                "pulled": c.pulled,
                "loaded": loaded.contains(&c.id),
            })
        })
        .collect())
}

async fn list_models(State(app): State<Arc<App>>) -> Response {
    match model_cards(&app).await {
        Ok(cards) => Json(json!({"object": "list", "data": cards})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn one_model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let cards = match model_cards(&app).await {
        Ok(cards) => cards,
        Err(e) => return e.into_response(),
    };
    match cards.into_iter().find(|c| c["id"] == id) {
        Some(card) => Json(card).into_response(),
        None => {
            ApiError::model_not_found(format!("no model {:?}", catalog::shown(&id))).into_response()
        }
    }
}

fn body_bytes(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(app.body_limit)
        } else {
            ApiError::invalid("", format!("cannot read the request body: {e}"))
        }
    })
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let bytes = body_bytes(&app, body)?;
        let req = app
            .work
            .run("reading the request", move || {
                openai::parse_chat(&openai::parse_json(&bytes)?)
            })
            .await?;
        let mut req = req;
        let (served, lora) = model_and_adapters(&app, &req.common).await?;
        let mut messages = req.messages;
        let template = served.text.template.as_ref().map(|t| t.source());
        let syntax = tools::Syntax::of_template(template);
        let mut offered = None;
        if let Some(tools) = &req.tools {
            // A template that renders tools gets them; for one that does not, owrun lists them
            // in the system message.
            if template.is_some_and(|t| t.contains("tools")) {
                offered = Some(tools.raw.clone());
            } else {
                tools.describe_in_system(&mut messages);
            }
        }
        let text = served.text.clone();
        let with_tools = req.tools.is_some();
        let (tools, schema) = (req.tools, req.common.schema.take());
        let (prompt, constraint) = app
            .work
            .run("rendering the prompt", move || {
                let prompt = text
                    .prompt_with_tools(&messages, offered.as_ref(), false)
                    .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
                let tools = tools.as_ref().map(|t| (t, syntax));
                Ok((prompt, output_constraint(tools, schema)))
            })
            .await?;
        let request = ModelRequest {
            kind: Endpoint::Chat,
            common: req.common,
            prompt: prompt.tokens,
            opens_thinking: prompt.opens_thinking,
            tools: with_tools.then_some(syntax),
            constraint,
            lora,
        };
        generate(&served, request).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let bytes = body_bytes(&app, body)?;
        let req = app
            .work
            .run("reading the request", move || {
                openai::parse_completion(&openai::parse_json(&bytes)?)
            })
            .await?;
        let mut req = req;
        let (served, lora) = model_and_adapters(&app, &req.common).await?;
        let constraint = match req.common.schema.take() {
            Some(schema) => {
                app.work
                    .run("compiling the schema", move || {
                        Ok(output_constraint(None, Some(schema)))
                    })
                    .await?
            }
            None => None,
        };
        let tokens = match req.prompt {
            PromptInput::Tokens(t) => t,
            PromptInput::Text(s) => {
                let text = served.text.clone();
                app.work
                    .run("tokenizing the prompt", move || {
                        text.encode(&s, true)
                            .map_err(|e| ApiError::invalid("prompt", format!("{e:#}")))
                    })
                    .await?
            }
        };
        let request = ModelRequest {
            kind: Endpoint::Completion,
            common: req.common,
            prompt: tokens,
            opens_thinking: false,
            tools: None,
            constraint,
            lora,
        };
        generate(&served, request).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A request ready for the model.
struct ModelRequest {
    kind: Endpoint,
    common: Common,
    prompt: Vec<u32>,
    /// The template left the model inside `<think>`.
    opens_thinking: bool,
    /// Tools were offered, and calls are written in this syntax.
    tools: Option<tools::Syntax>,
    /// What the output is held to, compiled (see [`output_constraint`]).
    constraint: Option<JsonConstraint>,
    /// How strongly each of the model's LoRA adapters applies.
    lora: Vec<f32>,
}

/// The model a request names, and how strongly each of its LoRA adapters applies: a
/// `base+adapter` name applies that adapter at 1, the `lora` field sets any (by number or
/// name); the others are off.
async fn model_and_adapters(
    app: &App,
    common: &Common,
) -> Result<(Arc<Served>, Vec<f32>), ApiError> {
    let (base, adapter) = app.models.split_adapter(&common.model);
    let served = app.models.get(&base, false).await?;
    let mut lora = vec![0.0; served.adapters.len()];
    let position = |name: &str| served.adapters.iter().position(|a| a == name);
    if let Some(a) = adapter {
        match position(&a) {
            Some(i) => lora[i] = 1.0,
            None => {
                return Err(ApiError::model_not_found(format!(
                    "{} has no adapter {a:?}",
                    served.id
                )))
            }
        }
    }
    for (which, scale) in &common.lora {
        let i = match which {
            AdapterRef::Id(i) => (*i < lora.len()).then_some(*i),
            AdapterRef::Name(n) => position(n),
        };
        let Some(i) = i else {
            let known = if served.adapters.is_empty() {
                "it has none (the server registers them with --lora NAME=PATH)".to_string()
            } else {
                format!(
                    "it has {}",
                    served
                        .adapters
                        .iter()
                        .enumerate()
                        .map(|(i, a)| format!("{i}: {a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(ApiError::invalid(
                "lora",
                format!("{} has no adapter {which:?}: {known}", served.id),
            ));
        };
        lora[i] = *scale;
    }
    Ok((served, lora))
}

/// What a request's output is held to: a required tool call (in the template's syntax), else the response
/// format's schema. Built on the request pool: compiling a large schema takes a quarter of a
/// second, which must not stall the async threads.
fn output_constraint(
    tools: Option<(&tools::Tools, tools::Syntax)>,
    schema: Option<Schema>,
) -> Option<JsonConstraint> {
    tools
        .and_then(|(t, syntax)| t.constraint(syntax))
        .or_else(|| schema.map(JsonConstraint::new))
}

/// Queue the request's choices and answer: a stream of chunks, or the whole object.
async fn generate(served: &Served, request: ModelRequest) -> Result<Response, ApiError> {
    let ModelRequest {
        kind,
        common,
        prompt,
        opens_thinking,
        tools,
        constraint,
        lora,
    } = request;
    let what = match kind {
        Endpoint::Chat => "messages",
        Endpoint::Completion => "prompt",
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(what, "the prompt is empty"));
    }
    // Every id must have a row in the model's embedding, not only a tokenizer entry (a
    // tokenizer may know more tokens than the model has rows): one that has none would fail
    // the batched forward of every sequence beside it.
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= served.tokens) {
        return Err(ApiError::invalid(
            what,
            format!(
                "token {bad} is not one of this model's {} tokens",
                served.tokens
            ),
        ));
    }
    if prompt.len() >= served.context {
        return Err(ApiError::invalid(
            what,
            format!(
                "this model's maximum context length is {} tokens, but the {what} take {} \
                 tokens (leaving none to generate): shorten them by at least {} tokens",
                served.context,
                prompt.len(),
                prompt.len() + 1 - served.context
            ),
        )
        .with_code("context_length_exceeded"));
    }
    if constraint.is_some() || common.logprobs.is_some() {
        // The vocabulary's texts (for the constraint's mask, and the logprobs' token names),
        // made once per model off the async threads, not in the model's thread where it would
        // stall every sequence.
        let text = served.text.clone();
        tokio::task::spawn_blocking(move || {
            text.token_texts();
        })
        .await
        .map_err(|e| ApiError::internal(format!("cannot list the vocabulary: {e}")))?;
    }
    let (events, rx) = unbounded_channel();
    for index in 0..common.n {
        let job = Job {
            index,
            prompt: prompt.clone(),
            sampling: common.sampling(&served.sampling, index),
            max_tokens: common.max_tokens,
            stop: common.stop.clone(),
            logprobs: common.logprobs,
            constraint: constraint.clone(),
            lora: lora.clone(),
            events: events.clone(),
        };
        match served.scheduler.submit(job) {
            Ok(()) => {}
            // Jobs already queued see their receiver dropped with this answer, and go.
            Err(Refused::QueueFull) => {
                return Err(ApiError::busy(
                    format!(
                        "{} is busy: {} requests generating and {} waiting; try again shortly",
                        served.id,
                        served.scheduler.active(),
                        served.scheduler.queued()
                    ),
                    1,
                ))
            }
            Err(Refused::Stopped) => {
                return Err(ApiError::busy("the server is shutting down", 5));
            }
            Err(Refused::Failed(why)) => {
                return Err(ApiError::internal(format!("{}: {why}", served.id)));
            }
        }
    }
    drop(events);
    let reply = Reply::new(kind, &served.id, opens_thinking, &common, tools);
    if common.stream {
        Ok(stream_reply(reply, rx).into_response())
    } else {
        whole_reply(reply, rx).await
    }
}

async fn whole_reply(
    mut reply: Reply,
    mut rx: UnboundedReceiver<(usize, Event)>,
) -> Result<Response, ApiError> {
    while !reply.done() {
        match rx.recv().await {
            Some((_, Event::Failed(why))) => return Err(failure(why)),
            Some((index, event)) => {
                reply.on_event(index, event);
            }
            None => return Err(ApiError::internal("the model stopped before answering")),
        }
    }
    Ok(Json(reply.response()).into_response())
}

fn failure(why: String) -> ApiError {
    if why.contains("shutting down") {
        ApiError::busy(why, 5)
    } else {
        ApiError::internal(why)
    }
}

/// Server-sent events as the `openai` client reads them: `data: {chunk}` events with one id,
/// the usage chunk when asked, then `data: [DONE]`; a failure midway is `data: {"error": …}`.
fn stream_reply(
    reply: Reply,
    rx: UnboundedReceiver<(usize, Event)>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let data = |v: &Value| SseEvent::default().data(v.to_string());
    let events = stream::unfold(Some((reply, rx)), move |state| async move {
        let (mut reply, mut rx) = state?;
        let mut out = Vec::new();
        match rx.recv().await {
            Some((_, Event::Failed(why))) => {
                out.push(data(&failure(why).body()));
                out.push(SseEvent::default().data("[DONE]"));
                return Some((out, None));
            }
            Some((index, event)) => {
                out.extend(reply.on_event(index, event).iter().map(data));
                if reply.done() {
                    out.extend(reply.usage_chunk().as_ref().map(data));
                    out.push(SseEvent::default().data("[DONE]"));
                    return Some((out, None));
                }
            }
            None => {
                let e = ApiError::internal("the model stopped before finishing");
                out.push(data(&e.body()));
                out.push(SseEvent::default().data("[DONE]"));
                return Some((out, None));
            }
        }
        Some((out, Some((reply, rx))))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(events)
}
