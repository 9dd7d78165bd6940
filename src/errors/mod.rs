//! The one error body (`docs/ARCHITECTURE.md`, "Errors").
//!
//! Every concern has its own error type; each converts into [`ApiError`] here, and
//! [`ApiError::render`] is the only place that turns an error into bytes. The body carries
//! both the RFC 9457 members and the keys that OrionVM clients parse
//! (`error`, `error_description`, `details`).

mod auth;
pub mod facade;
mod idempotency;
mod limits;
mod observe;
mod routes;
pub mod upstream;
mod validate;

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// An error on its way to the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code, the OrionVM `error` key (`invalid_token`, `validation_failed`...).
    pub code: &'static str,
    /// Short human title, the same for every occurrence of the code.
    pub title: &'static str,
    /// What happened this time.
    pub detail: String,
    /// Per-field or per-topic details (`{"memory": ["..."]}`), an object.
    pub details: Map<String, Value>,
    /// Seconds for `Retry-After`, when the caller should come back.
    pub retry_after: Option<u64>,
    /// Extra response headers (rate-limit fields, `WWW-Authenticate`...).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            title,
            detail: detail.into(),
            details: Map::new(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn with_detail_entry(mut self, key: impl Into<String>, message: impl Into<String>) -> Self {
        let entry = self
            .details
            .entry(key.into())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.push(Value::String(message.into()));
        }
        self
    }

    pub fn with_details(mut self, details: Map<String, Value>) -> Self {
        self.details = details;
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The problem type URI, derived from the code so that it is stable.
    pub fn type_uri(&self) -> String {
        format!("/problems/{}", self.code.replace('_', "-"))
    }

    /// The JSON body for this error, with the request id.
    pub fn body(&self, request_id: &str) -> Value {
        json!({
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": format!("urn:request:{request_id}"),
            "request_id": request_id,
            "error": self.code,
            "error_description": self.detail,
            "details": Value::Object(self.details.clone()),
        })
    }

    /// The serialised body.
    pub fn render(&self, request_id: &str) -> Bytes {
        // Serialising a `Value` built from strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(&self.body(request_id)).unwrap_or_default())
    }

    // Errors that several concerns share.

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError::new(500, "internal_error", "Internal proxy error", detail)
    }

    pub fn bad_gateway(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(502, code, "OrionVM could not be reached", detail)
    }

    pub fn gateway_timeout(detail: impl Into<String>) -> Self {
        ApiError::new(
            504,
            "upstream_timeout",
            "OrionVM did not answer in time",
            detail,
        )
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(503, code, "Service unavailable", detail)
    }
}

/// Default code and title for an HTTP status, for errors whose source gave none
/// (HTML and empty error pages from OrionVM, for example).
/// The media type of an error answer: `application/problem+json` (RFC 9457) when the caller's
/// `Accept` names it, `application/json` otherwise, so that OrionVM's clients (which send
/// `Accept: application/json`, or nothing) keep the media type they parse. The body is the same.
pub fn media_type(accept: Option<&http::HeaderValue>) -> &'static str {
    let names_problem = accept.and_then(|v| v.to_str().ok()).is_some_and(|a| {
        a.split(',').any(|part| {
            let mut it = part.split(';');
            let essence = it.next().unwrap_or("").trim();
            let refused = it.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            essence.eq_ignore_ascii_case("application/problem+json") && !refused
        })
    });
    if names_problem {
        "application/problem+json"
    } else {
        "application/json"
    }
}

pub fn code_for_status(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request", "The request is invalid"),
        401 => ("unauthorized", "Authentication required"),
        403 => ("forbidden", "Forbidden"),
        404 => ("not_found", "Not found"),
        405 => ("method_not_allowed", "Method not allowed"),
        409 => ("conflict", "Conflict"),
        413 => ("payload_too_large", "Request body too large"),
        415 => ("unsupported_media_type", "Unsupported media type"),
        422 => ("validation_failed", "Request body is invalid"),
        429 => ("rate_limited", "Too many requests"),
        500 => ("upstream_error", "OrionVM failed"),
        502 => ("bad_gateway", "OrionVM could not be reached"),
        503 => ("upstream_unavailable", "OrionVM is unavailable"),
        504 => ("upstream_timeout", "OrionVM did not answer in time"),
        s if s >= 500 => ("upstream_error", "OrionVM failed"),
        _ => ("request_failed", "The request failed"),
    }
}

/// The title of an OrionVM 422 that refuses an action because of the object's state (start a
/// running instance, delete an attached disk): the body was fine, the moment was not.
pub const STATE_CONFLICT_TITLE: &str = "The object's state does not allow this";

/// Turn an error answer from OrionVM (any body: JSON, HTML, empty) into the error body.
///
/// OrionVM's `error`, `error_description` and `details` are kept for 4xx answers, because
/// its clients act on them. For 5xx answers the text is replaced: upstream internals are
/// not passed through verbatim. A 422 about the instance's or disk's state keeps its status
/// and OrionVM's code (clients act on both) but is titled as a state conflict, not as an
/// invalid body.
///
/// OrionVM answering 401 means it refused the proxy's own credentials (the caller had already
/// authenticated to the proxy): that is the proxy's failure, a 502 `upstream_auth_failed`. This
/// is the one place that rule is written.
pub fn from_upstream(status: u16, body: &[u8]) -> ApiError {
    if status == 401 {
        return upstream_auth_failed();
    }
    let (default_code, title) = code_for_status(status);
    let parsed: Option<Map<String, Value>> =
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            });
    let mut err = ApiError::new(status, default_code, title, title);
    if status >= 500 {
        err.detail = format!("OrionVM answered {status}");
        return err;
    }
    if let Some(map) = parsed {
        if let Some(code) = map.get("error").and_then(Value::as_str) {
            err.code = intern_code(code);
        }
        if let Some(desc) = map.get("error_description").and_then(Value::as_str) {
            err.detail = truncate(desc, 500);
        }
        if let Some(Value::Object(details)) = map.get("details") {
            err.details = details.clone();
        }
        if status == 422 && about_state(&map) {
            err.title = STATE_CONFLICT_TITLE;
        }
    } else {
        err.detail = format!("OrionVM answered {status}");
    }
    err
}

/// Whether an OrionVM 422 body refuses because of the object's state: a `state` detail (as in
/// `{"details": {"state": ["must be stopped"]}}`), or words that only a state refusal uses.
fn about_state(map: &Map<String, Value>) -> bool {
    const WORDS: &[&str] = &[
        "in transition",
        "must be stopped",
        "must be running",
        "must be detached",
    ];
    let details = map.get("details").and_then(Value::as_object);
    if details.is_some_and(|d| d.contains_key("state")) {
        return true;
    }
    let mut texts = map
        .get("error_description")
        .and_then(Value::as_str)
        .into_iter()
        .chain(
            details
                .into_iter()
                .flat_map(|d| d.values())
                .flat_map(|v| match v {
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    Value::String(s) => vec![s.as_str()],
                    _ => Vec::new(),
                }),
        );
    texts.any(|t| {
        let t = t.to_ascii_lowercase();
        WORDS.iter().any(|w| t.contains(w))
    })
}

/// OrionVM refused the proxy's own credentials (after the one retry with a fresh token).
pub fn upstream_auth_failed() -> ApiError {
    ApiError::bad_gateway(
        "upstream_auth_failed",
        "OrionVM refused the proxy's credentials",
    )
}

/// The status the caller sees for an OrionVM error status (401 becomes 502, see
/// [`from_upstream`]).
pub fn caller_status(upstream_status: u16) -> u16 {
    if upstream_status == 401 {
        502
    } else {
        upstream_status
    }
}

/// OrionVM's error codes are a small known vocabulary; unknown codes keep the status' code so
/// that `ApiError::code` stays `'static` and an upstream cannot inject arbitrary text there.
fn intern_code(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "invalid_request",
        "invalid_token",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "unauthorized",
        "forbidden",
        "not_found",
        "validation_failed",
        "conflict",
        "rate_limited",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == code)
        .unwrap_or("request_failed")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_both_vocabularies() {
        let e = ApiError::new(
            422,
            "validation_failed",
            "Request body is invalid",
            "memory too small",
        )
        .with_detail_entry("memory", "100 is less than the minimum of 512");
        let v = e.body("01ABC");
        assert_eq!(v["status"], 422);
        assert_eq!(v["error"], "validation_failed");
        assert_eq!(v["error_description"], "memory too small");
        assert_eq!(v["detail"], "memory too small");
        assert_eq!(v["request_id"], "01ABC");
        assert_eq!(v["instance"], "urn:request:01ABC");
        assert_eq!(v["type"], "/problems/validation-failed");
        assert_eq!(
            v["details"]["memory"][0],
            "100 is less than the minimum of 512"
        );
    }

    #[test]
    fn upstream_json_4xx_is_kept() {
        let body = br#"{"error":"validation_failed","error_description":"Instance could not be started","details":{"state":["must be stopped"]}}"#;
        let e = from_upstream(422, body);
        assert_eq!(e.code, "validation_failed");
        assert_eq!(e.detail, "Instance could not be started");
        assert_eq!(e.details["state"][0], "must be stopped");
    }

    #[test]
    fn upstream_state_refusals_are_titled_as_state_conflicts() {
        // OrionVM's own example: a `state` detail.
        let body = br#"{"error":"validation_failed","error_description":"Instance could not be started","details":{"state":["must be stopped"]}}"#;
        let e = from_upstream(422, body);
        assert_eq!((e.status, e.code), (422, "validation_failed"));
        assert_eq!(e.title, STATE_CONFLICT_TITLE);
        assert_eq!(e.detail, "Instance could not be started");
        assert_eq!(e.details["state"][0], "must be stopped");
        // The words alone, in the description or a detail.
        for body in [
            &br#"{"error":"validation_failed","error_description":"Instance must not be in transition"}"#[..],
            br#"{"error":"validation_failed","error_description":"Disk could not be deleted","details":{"disk":["must be detached"]}}"#,
            br#"{"error":"validation_failed","error_description":"Instance Must Be Running"}"#,
        ] {
            let e = from_upstream(422, body);
            assert_eq!(e.title, STATE_CONFLICT_TITLE, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.status, 422);
        }
        // A body that is simply invalid keeps its title; so do other statuses.
        let e = from_upstream(
            422,
            br#"{"error":"validation_failed","error_description":"Instance could not be created","details":{"memory":["100 is less than the minimum of 512"]}}"#,
        );
        assert_eq!(e.title, "Request body is invalid");
        let e = from_upstream(
            404,
            br#"{"error":"not_found","error_description":"x","details":{"state":["gone"]}}"#,
        );
        assert_eq!(e.title, "Not found");
    }

    #[test]
    fn upstream_html_and_5xx_are_replaced() {
        let e = from_upstream(404, b"<html><body>Not Found</body></html>");
        assert_eq!(e.code, "not_found");
        assert!(!e.detail.contains("html"));
        let e = from_upstream(
            500,
            br#"{"error":"x","error_description":"db at 10.0.0.3 failed"}"#,
        );
        assert!(!e.detail.contains("10.0.0.3"));
        assert_eq!(e.status, 500);
    }

    #[test]
    fn upstream_401_is_the_proxys_failure() {
        let e = from_upstream(401, br#"{"error":"invalid_token"}"#);
        assert_eq!((e.status, e.code), (502, "upstream_auth_failed"));
        assert_eq!(caller_status(401), 502);
        assert_eq!(caller_status(404), 404);
    }

    #[test]
    fn unknown_upstream_code_is_not_echoed() {
        let e = from_upstream(400, br#"{"error":"<script>","error_description":"x"}"#);
        assert_eq!(e.code, "request_failed");
    }
}
