//! Observability: request ids, the JSON access log with redaction, the audit trail, usage per
//! client and Prometheus metrics.
//!
//! The proxy phases call four hooks here: [`on_response_header`] (`response_filter`),
//! [`on_response_body`] (`response_body_filter`), [`on_local_answer`] (before the proxy writes
//! an answer of its own) and [`finish`] (`logging`). The audit record of a mutating call is
//! written and flushed in the first of the body hooks that sees the end of the answer, so it is
//! on disk before the caller has the last byte; `finish` writes it only when no answer was
//! completed (the caller went away, or the upstream broke mid-body).

/// Observability's part of the process state (`runtime::State`).
#[derive(Default)]
pub struct ObserveState {}

pub mod access;
pub mod audit;
pub mod redact;
pub mod request_id;
pub mod rotate;
pub mod usage;

use crate::config::model::LoggingConfig;
use crate::metrics;
use crate::proxy::ctx::Ctx;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora_proxy::Session;
pub use redact::{ALWAYS_REDACTED_FIELDS, ALWAYS_REDACTED_HEADERS, Redactor};
use std::sync::Arc;

/// What can go wrong in an observability answer (`/admin/audit`, `/admin/usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveError {
    /// A query parameter is unknown or has a bad value.
    BadQuery { field: String, message: String },
    /// The audit trail is off (`logging.audit.path: off`).
    AuditOff,
    /// The audit files cannot be opened.
    AuditUnreadable,
}

impl From<ObserveError> for crate::errors::ApiError {
    fn from(e: ObserveError) -> Self {
        use crate::errors::ApiError;
        match e {
            ObserveError::BadQuery { field, message } => ApiError::new(
                400,
                "invalid_request",
                "The request is invalid",
                format!("{field}: {message}"),
            )
            .with_detail_entry(field, message),
            ObserveError::AuditOff => ApiError::new(
                404,
                "not_found",
                "No audit trail",
                "the audit trail is off (logging.audit.path)",
            ),
            ObserveError::AuditUnreadable => ApiError::internal("the audit trail cannot be read"),
        }
    }
}

/// Most bytes of a body kept for logging or the audit; a body past this is not logged (it could
/// not be parsed, so it could not be redacted).
pub const CAPTURE_MAX: usize = 64 * 1024;

/// What and where to log, from one config load.
pub struct LogPolicy {
    pub sink: Option<Arc<access::Sink>>,
    pub redactor: Redactor,
    pub request_headers: bool,
    pub response_headers: bool,
    pub request_body: bool,
    pub response_body: bool,
    pub body_max_bytes: usize,
    pub audit: Option<Arc<audit::AuditLog>>,
}

impl LogPolicy {
    /// Puts this policy's sinks into the process (after the whole config was built).
    pub fn commit(&self, _state: &ObserveState) {}
}

impl LogPolicy {
    pub fn build(cfg: &LoggingConfig, _state: &ObserveState) -> Result<LogPolicy, Vec<String>> {
        let mut errors = Vec::new();
        for (key, r) in [
            ("logging.rotate", &cfg.rotate),
            ("logging.audit.rotate", &cfg.audit.rotate),
        ] {
            if r.max_bytes < 4096 {
                errors.push(format!("{key}.max_bytes: must be at least 4096"));
            }
            if r.max_files == 0 || r.max_files > 1000 {
                errors.push(format!("{key}.max_files: must be between 1 and 1000"));
            }
        }
        if cfg.body_max_bytes == 0 || cfg.body_max_bytes > CAPTURE_MAX {
            errors.push(format!(
                "logging.body_max_bytes: must be between 1 and {CAPTURE_MAX}"
            ));
        }
        let audit_path = cfg.audit.path.as_str();
        if audit_path.is_empty() || audit_path == "stdout" {
            errors.push("logging.audit.path: must be a file path or 'off'".into());
        } else if audit_path != "off" && same_file(audit_path, &cfg.access_log) {
            errors.push(
                "logging.audit.path: the audit trail must not share the access log's file".into(),
            );
        }
        if cfg.access_log.is_empty() {
            errors.push("logging.access_log: must be 'stdout', 'off' or a file path".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let policy = |r: &crate::config::model::RotateConfig| rotate::RotatePolicy {
            max_bytes: r.max_bytes,
            max_files: r.max_files,
        };
        let sink = match cfg.access_log.as_str() {
            "off" => None,
            target => Some(
                access::sink_for(target, policy(&cfg.rotate))
                    .map_err(|e| vec![format!("logging.access_log: {e}")])?,
            ),
        };
        let audit = match audit_path {
            "off" => None,
            path => Some(
                audit::AuditLog::open(path, policy(&cfg.audit.rotate))
                    .map_err(|e| vec![format!("logging.audit.path: {e}")])?,
            ),
        };
        Ok(LogPolicy {
            sink,
            redactor: Redactor::new(&cfg.redact_headers, &cfg.redact_fields),
            request_headers: cfg.request_headers,
            response_headers: cfg.response_headers,
            request_body: cfg.request_body,
            response_body: cfg.response_body,
            body_max_bytes: cfg.body_max_bytes,
            audit,
        })
    }

    pub fn is_secret_field(&self, name: &str) -> bool {
        self.redactor.is_secret_field(name)
    }

    /// A query string with the values of secret parameters replaced.
    pub fn redact_query(&self, query: &str) -> String {
        self.redactor.query(query)
    }

    /// A JSON body as it may appear in a log line: parsed, secrets redacted, cut to
    /// `body_max_bytes`. Returns the text and whether it was cut. A body that is not JSON
    /// is never logged.
    pub fn body_for_log(&self, bytes: &[u8], overflow: bool) -> (String, bool) {
        if overflow {
            return (
                format!("[not logged: body larger than {CAPTURE_MAX} bytes]"),
                true,
            );
        }
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return ("[not logged: not JSON]".into(), false);
        };
        self.redactor.json(&mut v);
        let text = v.to_string();
        if text.len() <= self.body_max_bytes {
            (text, false)
        } else {
            let mut end = self.body_max_bytes;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (text[..end].to_string(), true)
        }
    }
}

/// Whether two log targets name the same file (as far as can be told before they exist).
fn same_file(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let abs = |p: &str| {
        let p = std::path::Path::new(p);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        match (
            full.parent().and_then(|d| d.canonicalize().ok()),
            full.file_name(),
        ) {
            (Some(d), Some(f)) => d.join(f),
            _ => full,
        }
    };
    abs(a) == abs(b)
}

/// What the observe hooks keep about one request (a field of the proxy's `Ctx`).
#[derive(Default)]
pub struct RequestObs {
    /// The status the caller gets.
    pub status: Option<u16>,
    /// The response headers, redacted, when they are logged.
    pub response_headers: Option<serde_json::Value>,
    /// The response body, kept (up to [`CAPTURE_MAX`]) when it is logged or audited.
    pub response_body: Option<BytesMut>,
    pub response_body_overflow: bool,
    /// The audit record of this request has been written.
    pub audited: bool,
}

fn is_json(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let v = v.to_ascii_lowercase();
            let essence = v.split(';').next().unwrap_or("").trim().to_string();
            essence == "application/json" || essence.ends_with("+json")
        })
        .unwrap_or(false)
}

/// The request body for the log and the audit digest: what went upstream (after any rewrite),
/// or else, for a body the proxy read and refused, the JSON bytes it received (Pingora keeps
/// them in its retry buffer). `None` when there is no complete body.
pub fn request_body(session: &Session, ctx: &Ctx) -> Option<Bytes> {
    if let Some(b) = &ctx.body {
        return Some(b.clone());
    }
    let downstream = session.as_ref();
    if downstream.retry_buffer_truncated()
        || !is_json(session.req_header().headers.get("content-type"))
    {
        return None;
    }
    downstream.get_retry_buffer().filter(|b| !b.is_empty())
}

fn is_mutating(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// Whether the response body should be kept: logged, or needed to name the resource a
/// create made.
fn wants_response_body(session: &Session, ctx: &Ctx, header: &ResponseHeader) -> bool {
    let Some(rt) = ctx.runtime.as_ref() else {
        return false;
    };
    if !is_json(header.headers.get("content-type")) {
        return false;
    }
    rt.log.response_body
        || (rt.log.audit.is_some()
            && is_mutating(&session.req_header().method)
            && !ctx.params.iter().any(|(k, _)| k == "id"))
}

/// `response_filter`: the status and headers the caller gets (after any rewrite).
pub fn on_response_header(session: &Session, ctx: &mut Ctx, header: &ResponseHeader) {
    ctx.obs.status = Some(header.status.as_u16());
    if let Some(rt) = ctx.runtime.as_ref()
        && rt.log.response_headers
    {
        ctx.obs.response_headers = Some(rt.log.redactor.headers(&header.headers));
    }
    if wants_response_body(session, ctx, header) {
        ctx.obs.response_body = Some(BytesMut::new());
    }
}

fn keep(obs: &mut RequestObs, chunk: &[u8]) {
    if let Some(buf) = obs.response_body.as_mut() {
        if buf.len() + chunk.len() > CAPTURE_MAX {
            obs.response_body_overflow = true;
        } else {
            buf.extend_from_slice(chunk);
        }
    }
}

/// `response_body_filter`, with the bytes that go to the caller. At the end of the answer the
/// audit record is written, before those last bytes leave.
pub fn on_response_body(session: &Session, ctx: &mut Ctx, body: Option<&Bytes>, end: bool) {
    if let Some(b) = body {
        keep(&mut ctx.obs, b);
    }
    if end {
        audit::record(session, ctx, None);
    }
}

/// Before the proxy writes an answer of its own (errors, local routes): status, headers, body
/// for the log, and the audit record.
pub fn on_local_answer(session: &Session, ctx: &mut Ctx, header: &ResponseHeader, body: &Bytes) {
    on_response_header(session, ctx, header);
    keep(&mut ctx.obs, body);
    audit::record(session, ctx, None);
}

/// `logging`: metrics, usage, the access-log line, and the audit record if no answer was
/// completed.
pub fn finish(session: &Session, ctx: &mut Ctx, e: Option<&pingora::Error>) {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    if !ctx.obs.audited {
        audit::record(session, ctx, e);
    }
    let elapsed = ctx.started.elapsed();
    metrics::request_done(
        ctx.route_name(),
        session.req_header().method.as_str(),
        status,
        ctx.tenant_name(),
        elapsed.as_secs_f64(),
        ctx.upstream.elapsed.map(|d| d.as_secs_f64()),
    );
    match ctx.upstream.status {
        Some(s) if s >= 500 => metrics::upstream_error("5xx"),
        Some(401) => metrics::upstream_error("auth"),
        Some(429) => metrics::rate_limited(metrics::UPSTREAM_POLICY),
        _ => {}
    }
    if let Some(p) = &ctx.principal {
        usage::record(&p.id, &p.tenant, status);
    }
    if let Some(rt) = ctx.runtime.clone() {
        access::log_request(&rt.log, session, ctx, status, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cfg: LoggingConfig) -> LogPolicy {
        LogPolicy::build(&cfg, &ObserveState::default()).unwrap()
    }

    #[test]
    fn query_secrets_are_redacted() {
        let p = policy(LoggingConfig {
            access_log: "off".into(),
            ..Default::default()
        });
        assert_eq!(
            p.redact_query("a=1&api_key=xyz&Token=abc"),
            "a=1&api_key=[redacted]&Token=[redacted]"
        );
    }

    #[test]
    fn bodies_are_redacted_then_cut() {
        let p = policy(LoggingConfig {
            access_log: "off".into(),
            body_max_bytes: 40,
            ..Default::default()
        });
        let (text, cut) = p.body_for_log(
            br#"{"password":"hunter2","name":"a-long-name-that-goes-on"}"#,
            false,
        );
        assert!(cut);
        assert!(!text.contains("hunter2"));
        assert_eq!(text.len(), 40);
        let (text, cut) = p.body_for_log(b"client_secret=abc", false);
        assert!(!cut);
        assert!(!text.contains("abc"));
        let (text, _) = p.body_for_log(b"{}", true);
        assert!(text.starts_with("[not logged"));
    }

    #[test]
    fn audit_and_access_log_cannot_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.log").display().to_string();
        let mut cfg = LoggingConfig {
            access_log: f.clone(),
            ..Default::default()
        };
        cfg.audit.path = f;
        let errs = LogPolicy::build(&cfg, &ObserveState::default())
            .err()
            .unwrap();
        assert!(errs[0].starts_with("logging.audit.path"), "{errs:?}");
        cfg.audit.path = "stdout".into();
        assert!(LogPolicy::build(&cfg, &ObserveState::default()).is_err());
        cfg.audit.path = "off".into();
        cfg.rotate.max_files = 0;
        let errs = LogPolicy::build(&cfg, &ObserveState::default())
            .err()
            .unwrap();
        assert_eq!(
            errs,
            vec!["logging.rotate.max_files: must be between 1 and 1000"]
        );
    }
}
