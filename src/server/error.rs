//! Errors as OpenAI shapes them: `{"error": {"message", "type", "param", "code"}}` with the
//! status a client acts on (400 fix the request, 401 the key, 403 the license or the origin, 404
//! the model, 408/413/415/501 the body's timing, size, type or coding, 503 retry later).
//!
//! No message names a file or folder of the server's (the one exception: a model's path the
//! operator named on the command line): a client must not learn what is on the server's disk.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 503: when to try again.
    pub retry_after: Option<u64>,
    /// Close the connection after answering (the rest of the request cannot be trusted or
    /// waited for).
    pub close: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            close: false,
        }
    }

    /// 400: the request is wrong; `param` names the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: (!param.is_empty()).then(|| param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or wrong API key: send it as `Authorization: Bearer KEY` (the key given to \
             `owrun serve --api-key` or OWRUN_API_KEY)",
        )
        .with_code("invalid_api_key")
    }

    pub fn model_not_found(message: impl Into<String>) -> Self {
        ApiError {
            param: Some("model".into()),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
        .with_code("model_not_found")
    }

    /// 403: the model's license stops it being served.
    pub fn license(message: impl Into<String>, code: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message).with_code(code)
    }

    /// 503 with Retry-After.
    pub fn busy(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
        .with_code("server_busy")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn not_found_path(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "no such endpoint {path}: owrun serves /v1/chat/completions, /v1/completions, \
                 /v1/models and /health"
            ),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method not allowed on this endpoint",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    pub fn forbidden_host(host: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            format!(
                "Host {host:?} is not this server's address: on a loopback address owrun answers \
                 only requests for localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding); \
                 use --host to listen elsewhere"
            ),
        )
    }

    /// 400 for a request whose headers are malformed or ambiguous (closed after the answer:
    /// where the request ends is not certain).
    pub fn bad_header(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_code("invalid_header")
            .closing()
    }

    /// 403: a web page from `origin` may not call the server.
    pub fn forbidden_origin(origin: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            format!(
                "requests from web pages of origin {origin:?} are refused: start the server with \
                 --cors-origin {origin} to allow them"
            ),
        )
        .with_code("origin_not_allowed")
    }

    /// 415: the body is not sent as plain JSON.
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            message,
        )
        .closing()
    }

    /// 501: a transfer coding owrun does not decode.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            message,
        )
        .closing()
    }

    /// 408: the request did not arrive in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            message,
        )
        .closing()
    }

    /// Close the connection after this answer.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The `{"error": …}` document (also sent as an SSE event when a stream fails midway).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
