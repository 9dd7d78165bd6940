//! Calls the proxy makes to OrionVM on its own behalf (facade composites, coalesced reads),
//! outside Pingora's proxy pipeline: the same account, endpoints and credentials, with the
//! same one retry when OrionVM refuses the proxy's token.

use super::Account;
use super::stats::Outcome;
use bytes::Bytes;
use std::time::Instant;

#[derive(Debug, Clone)]
pub enum CallError {
    Credentials(String),
    Connect,
    Timeout,
    Other(String),
    /// Refused before any call: the breaker is open or the budget is exhausted.
    Refused(crate::limits::LimitsError),
}

impl From<CallError> for crate::errors::ApiError {
    fn from(e: CallError) -> Self {
        use crate::errors::ApiError;
        match e {
            CallError::Credentials(_) => ApiError::bad_gateway(
                "upstream_auth_failed",
                "the proxy could not obtain OrionVM credentials",
            ),
            CallError::Connect => ApiError::bad_gateway(
                "upstream_unreachable",
                "the proxy could not connect to OrionVM",
            ),
            CallError::Timeout => ApiError::gateway_timeout("OrionVM did not answer in time"),
            CallError::Other(_) => {
                ApiError::bad_gateway("bad_gateway", "the call to OrionVM failed")
            }
            CallError::Refused(e) => e.into(),
        }
    }
}

/// OrionVM's answer to one call.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub elapsed: std::time::Duration,
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
    let mut retried = false;
    let mut avoid = None;
    loop {
        let attempt = account.acquire(avoid).await.map_err(CallError::Refused)?;
        let idx = attempt.index;
        let Some(endpoint) = account.endpoints.get(idx) else {
            return Err(CallError::Other("the account has no endpoint".into()));
        };
        let auth = match account.credentials.authorization_header().await {
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
        let started = Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() && avoid.is_none() && account.endpoints.len() > 1 => {
                attempt.finish(Outcome::Connect, None);
                avoid = Some(idx);
                continue;
            }
            Err(e) if e.is_timeout() => {
                attempt.finish(Outcome::Timeout, None);
                return Err(CallError::Timeout);
            }
            Err(e) if e.is_connect() => {
                attempt.finish(Outcome::Connect, None);
                return Err(CallError::Connect);
            }
            Err(_) => {
                attempt.finish(Outcome::Reset, None);
                return Err(CallError::Other("request failed".into()));
            }
        };
        let status = resp.status().as_u16();
        if status == 401 && !retried && account.credentials.mode() == "oauth2" {
            attempt.finish(Outcome::Status(status), None);
            if let Some(a) = &auth {
                account.credentials.invalidate(a);
            }
            retried = true;
            continue;
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => {
                attempt.finish(Outcome::Timeout, None);
                return Err(CallError::Timeout);
            }
            Err(_) => {
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
        });
    }
}
