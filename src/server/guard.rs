//! Which requests reach the handlers, judged by their headers before any body is read.
//!
//! A web page can make a browser send requests to a server on the user's machine; these
//! checks keep pages away unless the operator lets them in (`--cors-origin`):
//!
//! - exactly one Host header, a host name or IP literal and an optional port, nothing else;
//!   on a loopback address only loopback names (DNS rebinding);
//! - a request with an Origin header (a browser's, from a page) only from an allowed origin;
//! - a POST's body as `Content-Type: application/json`, so no CORS "simple request" (a form,
//!   `text/plain`) reaches a handler; no transfer coding but chunked, no content coding;
//! - the API key, compared as SHA-256 digests in constant time (neither its bytes nor its
//!   length show in the timing).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Which origins' pages may call the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Origins {
    Any,
    /// These (none: no page may).
    Only(Vec<String>),
}

impl Origins {
    /// From `--cors-origin` values (`*` for any).
    pub fn from_flags(flags: &[String]) -> Origins {
        if flags.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::Only(flags.to_vec())
        }
    }

    fn allow(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::Only(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

pub struct Guard {
    /// SHA-256 of the API key, if one is required.
    key: Option<[u8; 32]>,
    /// The server listens on a loopback address: only loopback names may be in Host.
    loopback: bool,
    origins: Origins,
}

impl Guard {
    pub fn new(api_key: Option<&str>, loopback: bool, origins: Origins) -> Guard {
        Guard {
            key: api_key.map(digest),
            loopback,
            origins,
        }
    }

    fn admit(&self, req: &Request) -> Result<(), ApiError> {
        let headers = req.headers();
        self.host(req)?;
        codings(headers)?;
        if let Some(origin) = single(headers, header::ORIGIN, "Origin")? {
            if !self.origins.allow(origin) {
                return Err(ApiError::forbidden_origin(origin));
            }
        }
        if req.method() == Method::POST {
            json_body(headers)?;
        }
        if let Some(key) = &self.key {
            if req.uri().path() != "/health" {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !same_digest(&digest(given.trim()), key) {
                    return Err(ApiError::unauthorized());
                }
            }
        }
        Ok(())
    }

    fn host(&self, req: &Request) -> Result<(), ApiError> {
        let Some(value) = single(req.headers(), header::HOST, "Host")? else {
            return Err(ApiError::bad_header("the request has no Host header"));
        };
        let Some(name) = host_name(value) else {
            return Err(ApiError::bad_header(format!(
                "Host {value:?} is not a host name or IP address with an optional port"
            )));
        };
        // An absolute-form target names its own host: it must be the same.
        if let Some(authority) = req.uri().authority() {
            if !authority.as_str().eq_ignore_ascii_case(value) {
                return Err(ApiError::bad_header(format!(
                    "the request is for {authority} but its Host header says {value:?}"
                )));
            }
        }
        if self.loopback && !is_loopback_name(name) {
            return Err(ApiError::forbidden_host(value));
        }
        Ok(())
    }
}

/// The middleware: refuse what [`Guard::admit`] refuses, before the body is read.
pub async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match guard.admit(&req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The header `name`'s one value; None if absent, 400 if repeated or not text.
fn single<'h>(
    headers: &'h HeaderMap,
    name: header::HeaderName,
    shown: &str,
) -> Result<Option<&'h str>, ApiError> {
    let mut values = headers.get_all(&name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_header(format!(
            "the request has more than one {shown} header"
        )));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::bad_header(format!("the {shown} header is not plain text")))
}

/// The host of a Host header's value: a DNS name, an IPv4 address or a bracketed IPv6 address,
/// then `:port` or nothing. None for anything else (`localhost:1@evil.com`, `[::1]evil.com`).
fn host_name(value: &str) -> Option<&str> {
    let (name, port) = if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (ip, port)
    } else {
        let (name, port) = match value.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (value, None),
        };
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return None;
        }
        (name, port)
    };
    if let Some(p) = port {
        let digits = (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
        if !digits || p.parse::<u32>().ok()? > 65535 {
            return None;
        }
    }
    Some(name)
}

/// `localhost`, `127.x.x.x` or `::1` (a host from [`host_name`], brackets removed).
fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Only chunked transfer coding (hyper decodes it; any other would be read as if absent), and
/// no content coding (owrun decompresses nothing).
fn codings(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let value = value.to_str().unwrap_or("?");
        if value
            .split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
        {
            return Err(ApiError::not_implemented(format!(
                "Transfer-Encoding {value:?} is not supported: send the body as it is or chunked"
            )));
        }
    }
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value.to_str().unwrap_or("?");
        if !value.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::unsupported_media(format!(
                "Content-Encoding {value:?} is not supported: send the body uncompressed"
            )));
        }
    }
    Ok(())
}

/// `Content-Type: application/json`, with or without parameters (`; charset=utf-8`).
fn json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |what: &str| {
        ApiError::unsupported_media(format!(
            "the request body must be JSON sent with Content-Type: application/json, not {what}"
        ))
    };
    let value = single(headers, header::CONTENT_TYPE, "Content-Type")?
        .ok_or_else(|| refuse("no Content-Type"))?;
    let media = value.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(refuse(&format!("{value:?}")));
    }
    Ok(())
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares every byte, whatever differs first.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_a_name_or_address_and_an_optional_port() {
        for (value, name) in [
            ("localhost", "localhost"),
            ("localhost:11435", "localhost"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]:11435", "::1"),
            ("[::1]", "::1"),
            ("api.example.com", "api.example.com"),
            ("LOCALHOST:1", "LOCALHOST"),
        ] {
            assert_eq!(host_name(value), Some(name), "{value}");
        }
        for bad in [
            "localhost:1@evil.com",
            "[::1]evil.com",
            "[::1]:",
            "localhost:",
            "localhost:99999",
            "localhost:1:2",
            "local host",
            "evil.com/x",
            "user@localhost",
            "",
            "a..b",
            "[evil.com]",
        ] {
            assert_eq!(host_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn loopback_names_pass_and_others_do_not() {
        for ok in ["localhost", "127.0.0.1", "127.1.2.3", "::1", "LocalHost"] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in ["evil.example", "10.0.0.1", "localhost.evil", "0.0.0.0"] {
            assert!(!is_loopback_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_json_bodies_and_plain_or_chunked_transfers_pass() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        assert!(json_body(&headers(&[("content-type", "application/json")])).is_ok());
        assert!(json_body(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )]))
        .is_ok());
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            let e = json_body(&headers(&[("content-type", bad)])).unwrap_err();
            assert_eq!(e.status, 415, "{bad}");
        }
        assert_eq!(json_body(&headers(&[])).unwrap_err().status, 415);
        assert!(codings(&headers(&[("transfer-encoding", "chunked")])).is_ok());
        for bad in ["gzip, chunked", "gzip", "chunked, identity"] {
            let e = codings(&headers(&[("transfer-encoding", bad)])).unwrap_err();
            assert_eq!(e.status, 501, "{bad}");
            assert!(e.close);
        }
        let e = codings(&headers(&[("content-encoding", "gzip")])).unwrap_err();
        assert_eq!(e.status, 415);
    }

    #[test]
    fn keys_compare_as_digests() {
        let key = digest("s3cret");
        assert!(same_digest(&digest("s3cret"), &key));
        assert!(!same_digest(&digest("s3cres"), &key));
        assert!(!same_digest(&digest("s3cret "), &key));
        assert!(!same_digest(&digest(""), &key));
    }
}
