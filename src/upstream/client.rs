//! Calls the proxy makes to OrionVM on its own behalf (facade composites, coalesced reads),
//! outside Pingora's proxy pipeline: the same account, endpoints and credentials, with the
//! same one retry when OrionVM refuses the proxy's token.
//!
//! The answer is read whole, so it is bounded: a successful answer up to the account's
//! `max_response_bytes` (past it [`CallError::TooLarge`], a 502), an error answer up to
//! [`MAX_ERROR_BODY`] (the rest is not read: only its beginning is normalised, as on the
//! proxied path).

use super::Account;
use super::stats::Outcome;
use super::trace::{CallKind, CallSpan, CallTracer};
use bytes::Bytes;
use std::time::Instant;

/// Why a call of the proxy's own to OrionVM got no answer (`src/errors/upstream.rs` turns it
/// into the error body). Clone: the micro-cache hands one call's failure to every caller that
/// waited on it.
#[derive(Debug, Clone)]
pub enum CallError {
    Credentials(String),
    Connect,
    Timeout,
    Other(String),
    /// Refused before any call: the breaker is open or the budget is exhausted.
    Refused(super::UpstreamError),
    /// OrionVM's successful answer is larger than `accounts.NAME.max_response_bytes`.
    TooLarge {
        limit: usize,
    },
}

/// The largest error answer read from OrionVM (the same as on the proxied path).
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why a bounded read of an answer stopped.
enum ReadError {
    TooLarge,
    Timeout,
    Broken,
}

/// Reads `resp`'s body, at most `limit` bytes. With `truncate`, a longer body is cut at
/// `limit` (the rest is not read); without, it is an error, found out from `Content-Length`
/// before reading when OrionVM declares it.
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Bytes, ReadError> {
    let declared = resp.content_length();
    if !truncate && declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body =
        bytes::BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n.min(limit as u64) as usize));
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                if chunk.len() > room {
                    if !truncate {
                        return Err(ReadError::TooLarge);
                    }
                    body.extend_from_slice(&chunk[..room]);
                    return Ok(body.freeze());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) if e.is_timeout() => return Err(ReadError::Timeout),
            Err(_) => return Err(ReadError::Broken),
        }
    }
}

fn end(span: Option<Box<dyn CallSpan>>, status: Option<u16>, failure: Option<&str>) {
    if let Some(span) = span {
        span.end(status, failure);
    }
}

/// OrionVM's answer to one call.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub elapsed: std::time::Duration,
    /// Headers of the answer that a caller must see again when it is replayed (a facade
    /// list's `X-Total-Count`); empty for OrionVM's answers.
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One call to OrionVM as `account`: `path` is the OrionVM path (`/api/v1/...`, with query).
pub async fn call(
    account: &Account,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    request_id: &str,
) -> Result<Answer, CallError> {
    call_traced(account, method, path, body, request_id, None).await
}

/// [`call`], each attempt (and a token fetched for it) a span of `trace`, whose
/// `traceparent` the attempt carries.
pub async fn call_traced(
    account: &Account,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    request_id: &str,
    trace: Option<&dyn CallTracer>,
) -> Result<Answer, CallError> {
    let mut retried = false;
    let mut avoid = None;
    loop {
        let attempt = account.acquire(avoid).await.map_err(CallError::Refused)?;
        let idx = attempt.index;
        let Some(endpoint) = account.endpoints.get(idx) else {
            return Err(CallError::Other("the account has no endpoint".into()));
        };
        let auth = match account.credentials.authorization_header(trace).await {
            Ok(a) => a,
            Err(e) => {
                attempt.finish(Outcome::Connect, None);
                return Err(CallError::Credentials(e.to_string()));
            }
        };
        let mut req = account
            .http
            .request(method.clone(), endpoint.url_for(path))
            .header("x-request-id", request_id)
            .header("content-type", "application/json");
        if let Some(a) = &auth {
            req = req.header("authorization", a.clone());
        }
        // Serialising a `Value` cannot fail.
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        if let Some(signer) = account.credentials.signer() {
            let full = format!("{}{path}", endpoint.base_path);
            let (p, q) = match full.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (full.as_str(), None),
            };
            let h = signer
                .sign(&super::signing::RequestParts {
                    method: method.as_str(),
                    authority: &endpoint.authority,
                    path: p,
                    query: q,
                    content_type: Some("application/json"),
                    body: &bytes,
                })
                .map_err(|e| CallError::Other(e.to_string()))?;
            req = req
                .header("content-digest", h.content_digest)
                .header("signature-input", h.signature_input)
                .header("signature", h.signature);
        }
        if body.is_some() {
            req = req.body(bytes);
        }
        let span = trace.map(|t| {
            t.begin(
                CallKind::Own,
                method.as_str(),
                path.split('?').next().unwrap_or(path),
            )
        });
        if let Some(span) = &span {
            req = req.header("traceparent", span.traceparent());
        }
        let started = Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() && avoid.is_none() && account.endpoints.len() > 1 => {
                end(span, None, Some("connect"));
                attempt.finish(Outcome::Connect, None);
                avoid = Some(idx);
                continue;
            }
            Err(e) if e.is_timeout() => {
                end(span, None, Some("timeout"));
                attempt.finish(Outcome::Timeout, None);
                return Err(CallError::Timeout);
            }
            Err(e) if e.is_connect() => {
                end(span, None, Some("connect"));
                attempt.finish(Outcome::Connect, None);
                return Err(CallError::Connect);
            }
            Err(_) => {
                end(span, None, Some("reset"));
                attempt.finish(Outcome::Reset, None);
                return Err(CallError::Other("request failed".into()));
            }
        };
        let status = resp.status().as_u16();
        if status == 401 && !retried && account.credentials.refreshes() {
            end(span, Some(status), None);
            attempt.finish(Outcome::Status(status), None);
            if let Some(a) = &auth {
                account.credentials.invalidate(a);
            }
            retried = true;
            continue;
        }
        let (limit, truncate) = if status >= 400 {
            (MAX_ERROR_BODY, true)
        } else {
            (account.max_response_bytes, false)
        };
        let read = read_bounded(resp, limit, truncate).await;
        end(
            span,
            Some(status),
            match &read {
                Ok(_) => None,
                Err(ReadError::TooLarge) => Some("too_large"),
                Err(ReadError::Timeout) => Some("timeout"),
                Err(ReadError::Broken) => Some("reset"),
            },
        );
        let body = match read {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                // OrionVM answered; the answer is just more than the proxy takes.
                attempt.finish(Outcome::Status(status), Some(started.elapsed()));
                log::warn!(
                    "request {request_id}: OrionVM's answer to {method} {path} exceeds {limit} bytes (accounts.{}.max_response_bytes)",
                    account.name
                );
                return Err(CallError::TooLarge { limit });
            }
            Err(ReadError::Timeout) => {
                attempt.finish(Outcome::Timeout, None);
                return Err(CallError::Timeout);
            }
            Err(ReadError::Broken) => {
                attempt.finish(Outcome::Reset, None);
                return Err(CallError::Other("reading the answer failed".into()));
            }
        };
        let elapsed = started.elapsed();
        attempt.finish(Outcome::Status(status), Some(elapsed));
        return Ok(Answer {
            status,
            body,
            elapsed,
            headers: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::UpstreamState;
    use super::super::testing::{self, NO_CHECKS};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An in-process OrionVM stand-in on 127.0.0.1:0 that answers every request with `status`
    /// and `len` bytes of JSON-ish body, with a `Content-Length` or chunked.
    async fn answering(status: u16, len: usize, chunked: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let framing = if chunked {
                        "transfer-encoding: chunked".to_string()
                    } else {
                        format!("content-length: {len}")
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
                    );
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let piece = vec![b' '; 64 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(piece.len());
                        let chunk = if chunked {
                            let mut c = format!("{n:x}\r\n").into_bytes();
                            c.extend_from_slice(&piece[..n]);
                            c.extend_from_slice(b"\r\n");
                            c
                        } else {
                            piece[..n].to_vec()
                        };
                        if sock.write_all(&chunk).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    if chunked {
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    async fn get(url: String, account_extra: &str) -> Result<Answer, CallError> {
        let state = UpstreamState::default();
        let extra = format!("{NO_CHECKS}{account_extra}");
        let tenant = testing::tenant(&testing::config(&[url], &extra, ""), &state);
        call(
            &tenant.account,
            http::Method::GET,
            "/api/v1/instances",
            None,
            "01REQ",
        )
        .await
    }

    #[tokio::test]
    async fn an_answer_past_the_default_limit_is_refused() {
        let default = crate::config::model::default_max_response_bytes();
        for chunked in [false, true] {
            let got = get(answering(200, default + 1, chunked).await, "").await;
            assert!(
                matches!(got, Err(CallError::TooLarge { limit }) if limit == default),
                "chunked {chunked}: {:?}",
                got.map(|a| a.body.len())
            );
            let at = get(answering(200, default, chunked).await, "").await;
            assert_eq!(at.unwrap().body.len(), default, "chunked {chunked}");
        }
    }

    #[tokio::test]
    async fn the_limit_is_the_accounts_and_error_answers_are_cut_at_64_kib() {
        let extra = "    max_response_bytes: 4096\n";
        for chunked in [false, true] {
            let got = get(answering(200, 4097, chunked).await, extra).await;
            assert!(
                matches!(got, Err(CallError::TooLarge { limit: 4096 })),
                "{got:?}"
            );
            let fits = get(answering(200, 4096, chunked).await, extra)
                .await
                .unwrap();
            assert_eq!(fits.body.len(), 4096);
            // An error answer is OrionVM's status with the beginning of its body.
            let error = get(answering(503, 1 << 20, chunked).await, extra)
                .await
                .unwrap();
            assert_eq!(error.status, 503);
            assert_eq!(error.body.len(), MAX_ERROR_BODY);
        }
    }

    #[test]
    fn the_limit_is_checked() {
        let state = UpstreamState::default();
        for (bytes, ok) in [
            (1023, false),
            (1024, true),
            (256 << 20, true),
            ((256 << 20) + 1, false),
        ] {
            let extra = format!("{NO_CHECKS}    max_response_bytes: {bytes}\n");
            let config = testing::config(&testing::urls(1), &extra, "");
            match super::super::Upstreams::build(&config, &state) {
                Ok(_) => assert!(ok, "{bytes}"),
                Err(e) => {
                    assert!(!ok, "{bytes}");
                    assert_eq!(
                        e,
                        ["accounts.a.max_response_bytes: must be between 1024 and 268435456"]
                    );
                }
            }
        }
    }
}
