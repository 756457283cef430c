//! Connections and their time limits, so that slow or idle clients cannot hold the server.
//!
//! axum's `serve` gives hyper no timer and no cap: a client that sends its headers a byte at a
//! time, or opens sockets and says nothing, holds a connection (and a file descriptor) forever.
//! This accept loop serves each connection with hyper's HTTP/1 and a watchdog of its own:
//!
//! - a new connection sends its first request head within `header` (from accept), and every
//!   later head within `header` of its first byte;
//! - between requests a connection may stay open, silent, for `idle`; an answer the client does
//!   not read (the socket takes no more bytes) may wait for it as long;
//! - a request's body arrives whole within `body` of its head ([`read_body`]: 408 otherwise, so a
//!   body shorter than its Content-Length does not hold the connection);
//! - at most `max_connections` are open; one more is answered 503 at once and closed.
//!
//! hyper's own `header_read_timeout` is not used: it restarts whenever a kept-alive connection
//! waits for its next request, so it would close idle connections after the header timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Result;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use super::error::ApiError;

/// How long clients may take, and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// To send a request head (from accept, or from its first byte).
    pub header: Duration,
    /// To send a request body, from its head.
    pub body: Duration,
    /// Silent between requests, or not reading an answer.
    pub idle: Duration,
    pub max_connections: usize,
}

/// Most bytes of request headers (431 beyond): hyper's default is its whole read buffer, about
/// 400 KB per connection.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How long the server is without connections before it calls its `idle` (and hands back the
/// memory its clients' requests used).
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Accept connections and serve `router` on each until `shutdown` completes; then let the open
/// connections finish their request in flight and close (the caller bounds how long it waits).
/// `idle` runs once the last connection has been closed for a second (and none came since).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    idle: Arc<dyn Fn() + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Connections accepted so far: an idle check that sees it unchanged saw no new one.
    let accepted_count = Arc::new(AtomicU64::new(0));
    let (closing, _) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, most likely: the open connections go on, and free
                // theirs as they end or time out.
                eprintln!("owrun: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(tcp, limits.max_connections);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (router, closing) = (router.clone(), closing.subscribe());
        accepted_count.fetch_add(1, Ordering::SeqCst);
        let (permits, accepted_count, idle) =
            (permits.clone(), accepted_count.clone(), idle.clone());
        tokio::spawn(async move {
            connection(tcp, router, limits, closing).await;
            drop(permit);
            if permits.available_permits() == limits.max_connections {
                // The last one closed: idle if no other comes within the second.
                let seen = accepted_count.load(Ordering::SeqCst);
                tokio::time::sleep(IDLE_AFTER).await;
                let none_since = accepted_count.load(Ordering::SeqCst) == seen;
                if none_since && permits.available_permits() == limits.max_connections {
                    idle();
                }
            }
        });
    }
    let _ = closing.send(true);
    let _ = permits.acquire_many(limits.max_connections as u32).await;
    Ok(())
}

/// One connection over the cap: a 503 written if the socket takes it at once, then closed
/// (waiting for a slow reader here would hold the descriptor the cap protects).
fn refuse(tcp: TcpStream, max: usize) {
    let body = ApiError::busy(
        format!("the server has {max} connections open (--max-connections): try again shortly"),
        1,
    )
    .body()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(response.as_bytes());
}

/// Sleep until `deadline`; for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn connection(
    tcp: TcpStream,
    router: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        tcp,
        activity: activity.clone(),
    });
    let service = Tracked {
        inner: TowerToHyperService::new(router),
        activity: activity.clone(),
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_header_size(MAX_HEADER_BYTES);
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        // While a request is in flight, usually no deadline applies here (its body has its
        // own, and a stream lasts as long as the generation): sleep until told otherwise.
        let wake = activity.deadline(&limits);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = activity.sooner.notified() => {}
            _ = sleep_until(wake) => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection is doing, for its deadlines.
struct Activity {
    state: Mutex<Progress>,
    /// Told when a deadline may have come earlier (the watchdog sleeps until the last one).
    sooner: Notify,
}

struct Progress {
    /// Requests whose response is not yet sent whole.
    in_flight: usize,
    /// A request was received on this connection.
    served: bool,
    /// Accepted, or the last response ended.
    idle_since: Instant,
    /// The first byte of the next request head arrived then.
    head_since: Option<Instant>,
    /// The socket has taken no bytes of the answer since then (the client does not read).
    write_stalled: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(Progress {
                in_flight: 0,
                served: false,
                idle_since: Instant::now(),
                head_since: None,
                write_stalled: None,
            }),
            sooner: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Progress> {
        // The state stays consistent whatever panicked while it was held.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bytes_arrived(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            self.sooner.notify_one();
        }
    }

    /// A write to the socket took bytes (`true`) or had to wait (`false`).
    fn wrote(&self, took: bool) {
        let mut s = self.state();
        match (took, s.write_stalled) {
            (true, _) => s.write_stalled = None,
            (false, None) => {
                s.write_stalled = Some(Instant::now());
                self.sooner.notify_one();
            }
            (false, Some(_)) => {}
        }
    }

    /// A request head was read: the connection is busy until the returned guard is dropped
    /// (with the response's body, once it is sent).
    fn request(self: &Arc<Self>) -> InFlight {
        let mut s = self.state();
        s.in_flight += 1;
        s.served = true;
        s.head_since = None;
        s.write_stalled = None;
        InFlight(self.clone())
    }

    /// When the connection is closed if nothing changes. While a request is in flight, none
    /// unless its answer waits on a client that does not read it.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let s = self.state();
        if s.in_flight > 0 {
            s.write_stalled.map(|t| t + limits.idle)
        } else if !s.served {
            Some(s.idle_since + limits.header)
        } else if let Some(t) = s.head_since {
            Some(t + limits.header)
        } else {
            Some(s.idle_since + limits.idle)
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight -= 1;
        s.idle_since = Instant::now();
        self.0.sooner.notify_one();
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.activity.wrote(written.is_ready());
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.activity.wrote(written.is_ready());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The router, with each request marked in flight until its response is sent.
struct Tracked {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

type Answer =
    Pin<Box<dyn Future<Output = Result<Response<Sending>, std::convert::Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response<Sending>;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, req: hyper::Request<Incoming>) -> Answer {
        let in_flight = self.activity.request();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Sending {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is sent (or abandoned).
pub struct Sending {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What [`read_body`] allows a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub bytes: usize,
    pub time: Duration,
}

/// Read the whole request body before the handler runs: at most `bytes` (413), within `time`
/// of the head (408; the connection is closed, since the rest of the body may never come).
pub async fn read_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.bytes as u64) {
        return ApiError::too_large(limits.bytes).closing().into_response();
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(limits.time, collect(body, limits.bytes)).await;
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => e.closing().into_response(),
        Err(_) => ApiError::timeout(format!(
            "the request body did not arrive within {} s",
            limits.time.as_secs_f64()
        ))
        .into_response(),
    }
}

async fn collect(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut data = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid("", format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            max_connections: 4,
        }
    }

    #[test]
    fn deadlines_follow_what_the_connection_is_doing() {
        let limits = limits();
        let a = Arc::new(Activity::new());
        // New: its first head within the header timeout of the accept, however it trickles.
        let accepted = a.state().idle_since;
        assert_eq!(a.deadline(&limits), Some(accepted + limits.header));
        a.bytes_arrived();
        assert_eq!(a.deadline(&limits), Some(accepted + limits.header));
        let in_flight = a.request();
        assert_eq!(a.deadline(&limits), None);
        // Bytes of the body, or the next head pipelined, while in flight change nothing.
        a.bytes_arrived();
        assert_eq!(a.deadline(&limits), None);
        assert_eq!(a.state().head_since, None);
        // An answer the client does not read waits for it as long as an idle connection.
        a.wrote(false);
        let stalled = a.state().write_stalled.expect("a stalled write");
        a.wrote(false);
        assert_eq!(a.deadline(&limits), Some(stalled + limits.idle));
        a.wrote(true);
        assert_eq!(a.deadline(&limits), None);
        drop(in_flight);
        // Kept alive: silent for the idle timeout, then a head within the header timeout.
        let idle = a.state().idle_since;
        assert_eq!(a.deadline(&limits), Some(idle + limits.idle));
        a.bytes_arrived();
        let head = a.state().head_since.expect("a head started");
        assert!(head >= idle);
        assert_eq!(a.deadline(&limits), Some(head + limits.header));
    }
}
