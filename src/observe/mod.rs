//! Observability: request ids, the JSON access log with redaction, the audit trail, usage per
//! client, Prometheus metrics and OpenTelemetry traces ([`trace`]: `early_request_filter` asks
//! `Traces::start_request` for the request's spans, `logging` ends them).
//!
//! The proxy phases call four hooks here: [`on_response_header`] (`response_filter`),
//! [`on_response_body`] (`response_body_filter`), [`on_local_answer`] (before the proxy writes
//! an answer of its own) and [`finish`] (`logging`); `request_filter` asks [`audit_ready`]
//! before a mutating call goes on. Each hook takes the request as a [`RequestView`] and this
//! module's own record of the request, [`RequestObs`], which the proxy's context embeds and
//! keeps up to date; nothing here knows Pingora's session or the proxy's context.
//!
//! The audit record of a mutating call is handed to the trail's writer thread in the first of
//! the body hooks that sees the end of the answer, and the request waits until the writer has it
//! in the file, so it is there before the caller has the last byte; `finish` records it only
//! when no answer was completed (the caller went away, or the upstream broke mid-body).
//!
//! State: the sinks (access-log targets and audit files, with their writer threads) and the
//! usage store outlive a config and live in [`ObserveState`]. [`LogPolicy::build`] reads that
//! state to hand an open sink over to the new config, and changes nothing;
//! [`LogPolicy::commit`] opens and starts what is new and retires what the committed config no
//! longer names (`docs/ARCHITECTURE.md`, "Reload").

pub mod access;
pub mod audit;
pub mod audit_writer;
pub mod diagnostics;
pub mod redact;
pub mod request_id;
pub mod rotate;
pub mod series;
pub mod trace;
pub mod usage;

use crate::config::model::{AuditOnFailure, LoggingConfig};
use crate::metrics;
use crate::request::RequestView;
use crate::store::UsageStore;
use audit_writer::AuditWriter;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
pub use redact::{ALWAYS_REDACTED_FIELDS, ALWAYS_REDACTED_HEADERS, Redactor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Observability's part of the process state (`runtime::State`): the log sinks in use, with
/// their writer threads, and the usage counters.
pub struct ObserveState {
    usage: Arc<dyn UsageStore>,
    /// The last hour of traffic in ten-second slots (the console's charts).
    pub series: Arc<series::Series>,
    /// Access-log sinks by target (`stdout` or a path).
    sinks: Mutex<HashMap<String, Arc<access::Sink>>>,
    /// Audit writers by path.
    audits: Mutex<HashMap<PathBuf, Arc<AuditWriter>>>,
    /// The OTLP pipeline of the config in force (`trace`), kept across reloads that keep
    /// `tracing:` as it is.
    tracing: trace::Slot,
}

impl ObserveState {
    pub fn new(usage: Arc<dyn UsageStore>) -> ObserveState {
        ObserveState {
            usage,
            series: Arc::default(),
            sinks: Default::default(),
            audits: Default::default(),
            tracing: Default::default(),
        }
    }

    pub fn usage(&self) -> &Arc<dyn UsageStore> {
        &self.usage
    }

    /// Writes every access-log sink's pending lines and sends the trace spans still queued;
    /// called once the server has stopped.
    pub fn flush_all(&self) {
        let sinks: Vec<Arc<access::Sink>> = self.sinks.lock().values().cloned().collect();
        for s in sinks {
            s.flush();
        }
        let tracing = self.tracing.lock().clone();
        if let Some(p) = tracing {
            p.flush();
        }
    }

    /// Closes and opens again every log file (access log and audit trail): `SIGUSR1`, sent by
    /// logrotate's `postrotate` after it renamed the files.
    pub fn reopen_all(&self) {
        let sinks: Vec<Arc<access::Sink>> = self.sinks.lock().values().cloned().collect();
        for s in sinks {
            s.reopen();
        }
        let audits: Vec<Arc<AuditWriter>> = self.audits.lock().values().cloned().collect();
        for a in audits {
            a.reopen();
        }
        log::info!("log files reopened");
    }

    /// The access-log targets and audit paths registered now (tests).
    pub fn targets(&self) -> (Vec<String>, Vec<PathBuf>) {
        let mut sinks: Vec<String> = self.sinks.lock().keys().cloned().collect();
        let mut audits: Vec<PathBuf> = self.audits.lock().keys().cloned().collect();
        sinks.sort();
        audits.sort();
        (sinks, audits)
    }
}

impl Default for ObserveState {
    fn default() -> Self {
        ObserveState::new(Arc::new(crate::store::usage::MemoryUsage::default()))
    }
}

impl Drop for ObserveState {
    fn drop(&mut self) {
        for s in self.sinks.lock().values() {
            s.retire();
        }
        for a in self.audits.lock().values() {
            a.retire();
        }
    }
}

/// What can go wrong in observability: an admin answer (`/admin/audit`, `/admin/usage`), or
/// the audit trail refusing a mutating call. `src/errors/observe.rs` makes the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveError {
    /// A query parameter is unknown or has a bad value.
    BadQuery { field: String, message: String },
    /// The audit trail is off (`logging.audit.path: off`).
    AuditOff,
    /// The audit files cannot be opened.
    AuditUnreadable,
    /// The audit trail cannot take records and `logging.audit.on_failure` is `closed`.
    AuditUnavailable,
    /// The usage store did not answer.
    UsageUnavailable,
}

/// Most bytes of a body kept for logging or the audit; a body past this is not logged (it could
/// not be parsed, so it could not be redacted).
pub const CAPTURE_MAX: usize = 64 * 1024;

/// What and where to log, from one config load.
pub struct LogPolicy {
    pub sink: Option<Arc<access::Sink>>,
    /// The rotation of a file access log, given to the sink at commit.
    access_rotate: rotate::RotatePolicy,
    pub redactor: Redactor,
    pub request_headers: bool,
    pub response_headers: bool,
    pub request_body: bool,
    pub response_body: bool,
    pub body_max_bytes: usize,
    pub audit: Option<Arc<AuditWriter>>,
    /// Rotation and durability of the audit file, given to the writer at commit.
    audit_settings: audit_writer::Settings,
    pub audit_on_failure: AuditOnFailure,
    /// Where usage is counted (the state's store).
    pub usage: Arc<dyn UsageStore>,
    /// The state's short traffic history.
    pub series: Arc<series::Series>,
    /// Paths and route names that get no access-log line (`logging.access.skip_routes`).
    pub skip: Box<[Box<str>]>,
    /// The shape of the diagnostic lines, applied at commit.
    pub format: crate::config::model::LogFormat,
}

impl LogPolicy {
    /// Checks the logging model and builds the policy, handing over the sinks the state already
    /// has for the same targets. No side effect: nothing is opened, started or registered.
    pub fn build(cfg: &LoggingConfig, state: &ObserveState) -> Result<LogPolicy, Vec<String>> {
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
        for (i, r) in cfg.access.skip_routes.iter().enumerate() {
            if r.is_empty() {
                errors.push(format!(
                    "logging.access.skip_routes[{i}]: must be a path or a route name"
                ));
            }
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
        let access_rotate = policy(&cfg.rotate);
        let sink = match cfg.access_log.as_str() {
            "off" => None,
            target => Some(match state.sinks.lock().get(target) {
                Some(open) => open.clone(),
                None => {
                    if target != "stdout" {
                        check_target(target)
                            .map_err(|e| vec![format!("logging.access_log: {e}")])?;
                    }
                    access::Sink::new(target, access_rotate)
                }
            }),
        };
        let audit_settings = audit_writer::Settings {
            rotate: policy(&cfg.audit.rotate),
            durability: cfg.audit.durability,
        };
        let audit = match audit_path {
            "off" => None,
            path => Some(match state.audits.lock().get(Path::new(path)) {
                Some(open) => open.clone(),
                None => {
                    check_target(path).map_err(|e| vec![format!("logging.audit.path: {e}")])?;
                    AuditWriter::new(Path::new(path), audit_settings)
                }
            }),
        };
        Ok(LogPolicy {
            sink,
            access_rotate,
            redactor: Redactor::new(&cfg.redact_headers, &cfg.redact_fields),
            request_headers: cfg.request_headers,
            response_headers: cfg.response_headers,
            request_body: cfg.request_body,
            response_body: cfg.response_body,
            body_max_bytes: cfg.body_max_bytes,
            audit,
            audit_settings,
            audit_on_failure: cfg.audit.on_failure,
            usage: state.usage.clone(),
            series: state.series.clone(),
            skip: cfg
                .access
                .skip_routes
                .iter()
                .map(|s| s.as_str().into())
                .collect(),
            format: cfg.format,
        })
    }

    /// Puts this policy's sinks into the process, once the whole config was built: opens and
    /// starts the new ones, gives the handed-over ones their new settings, and retires those
    /// the state has that this policy does not use.
    pub fn commit(&self, state: &ObserveState) {
        diagnostics::set_format(self.format);
        {
            let mut sinks = state.sinks.lock();
            if let Some(sink) = &self.sink {
                sink.set_rotate(self.access_rotate);
                let registered = sinks
                    .get(sink.target())
                    .is_some_and(|s| Arc::ptr_eq(s, sink));
                if !registered {
                    if let Some(old) = sinks.insert(sink.target().to_string(), sink.clone()) {
                        old.retire();
                    }
                    sink.start();
                }
            }
            let keep = self.sink.as_ref().map(|s| s.target());
            sinks.retain(|target, s| {
                let kept = keep == Some(target.as_str());
                if !kept {
                    s.retire();
                }
                kept
            });
        }
        let mut audits = state.audits.lock();
        if let Some(writer) = &self.audit {
            writer.set_settings(self.audit_settings);
            let registered = audits
                .get(writer.path())
                .is_some_and(|w| Arc::ptr_eq(w, writer));
            if !registered {
                if let Some(old) = audits.insert(writer.path().to_path_buf(), writer.clone()) {
                    old.retire();
                }
                writer.start();
            }
        }
        let keep = self.audit.as_ref().map(|w| w.path());
        audits.retain(|path, w| {
            let kept = keep == Some(path.as_path());
            if !kept {
                w.retire();
            }
            kept
        });
    }

    /// Whether a request gets an access-log line (not when its path or route name is in
    /// `logging.access.skip_routes`).
    pub fn logs(&self, req: &RequestView<'_>) -> bool {
        self.skip.is_empty()
            || !self
                .skip
                .iter()
                .any(|s| **s == *req.path || **s == *req.route_name())
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

/// Whether a log file can be opened at `path` later, as far as can be told without opening
/// (or creating) it: its directory exists, the path is not a directory, and neither the file
/// nor (for a new file) the directory is read-only.
fn check_target(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "cannot open {path}: {} is not a directory",
                dir.display()
            ));
        }
        Err(_)
            if crate::config::host::missing(|| {
                format!("log file {path}: directory {} is not here", dir.display())
            }) =>
        {
            return Ok(());
        }
        Err(_) => {
            return Err(format!(
                "cannot open {path}: directory {} does not exist",
                dir.display()
            ));
        }
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Err(format!("cannot open {path}: it is a directory")),
        Ok(m) if m.permissions().readonly() => Err(format!("cannot open {path}: it is read-only")),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::metadata(dir) {
            Ok(m) if m.permissions().readonly() => Err(format!(
                "cannot open {path}: directory {} is read-only",
                dir.display()
            )),
            _ => Ok(()),
        },
        Err(e) => Err(format!("cannot open {path}: {e}")),
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

/// The error a request was answered with, as the logs keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorNote {
    pub code: &'static str,
    pub detail: String,
}

/// What observability keeps about one request (a field of the proxy's `Ctx`). The hooks fill
/// the answer's part; the proxy keeps the rest up to date (see `proxy::ctx::Ctx::observed`).
pub struct RequestObs {
    pub started: Instant,
    pub started_at: SystemTime,
    /// The W3C trace id of the request.
    pub trace_id: String,
    /// The request's server span id when traces are exported (`trace`); empty otherwise.
    pub span_id: String,
    /// The status the caller gets.
    pub status: Option<u16>,
    /// The response headers, redacted, when they are logged.
    pub response_headers: Option<serde_json::Value>,
    /// The response body, kept (up to [`CAPTURE_MAX`]) when it is logged or audited.
    pub response_body: Option<BytesMut>,
    pub response_body_overflow: bool,
    /// The audit record of this request has been made.
    pub audited: bool,
    /// The request body as it went upstream (or as received, when the proxy refused it), when
    /// the log or the audit wants it ([`wants_request_body`]).
    pub request_body: Option<Bytes>,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub upstream_status: Option<u16>,
    pub upstream_elapsed: Option<Duration>,
    /// The name of the OrionVM endpoint of the last attempt.
    pub upstream_endpoint: Option<Arc<str>>,
    pub attempts: u8,
    /// The error the request was answered with.
    pub error: Option<ErrorNote>,
    /// Why authentication failed.
    pub auth_failure: Option<&'static str>,
    /// Kind of upstream failure (connect, timeout, reset, credentials).
    pub upstream_failure: Option<&'static str>,
    /// The request reached OrionVM on some attempt.
    pub request_sent: bool,
    /// How the request's `Idempotency-Key` was handled (`first`, `replayed`, `recovered`...).
    pub idempotency: Option<&'static str>,
}

impl Default for RequestObs {
    fn default() -> Self {
        RequestObs {
            started: Instant::now(),
            started_at: SystemTime::now(),
            trace_id: String::new(),
            span_id: String::new(),
            status: None,
            response_headers: None,
            response_body: None,
            response_body_overflow: false,
            audited: false,
            request_body: None,
            request_bytes: 0,
            response_bytes: 0,
            upstream_status: None,
            upstream_elapsed: None,
            upstream_endpoint: None,
            attempts: 0,
            error: None,
            auth_failure: None,
            upstream_failure: None,
            request_sent: false,
            idempotency: None,
        }
    }
}

fn is_json(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            // Compared without case and without a lowercased copy.
            let essence = v.split(';').next().unwrap_or("").trim().as_bytes();
            essence.eq_ignore_ascii_case(b"application/json")
                || essence
                    .len()
                    .checked_sub(5)
                    .is_some_and(|at| essence[at..].eq_ignore_ascii_case(b"+json"))
        })
        .unwrap_or(false)
}

/// Whether the request body should be kept in [`RequestObs::request_body`]: logged, or digested
/// in the audit record.
pub fn wants_request_body(policy: &LogPolicy, method: &http::Method) -> bool {
    policy.request_body || audit::wants_record(policy, method)
}

/// Whether a request body the proxy did not read itself may be taken from what it received
/// (it is logged only when it is JSON).
pub fn is_json_request(headers: &http::HeaderMap) -> bool {
    is_json(headers.get(http::header::CONTENT_TYPE))
}

/// Whether the response body should be kept: logged, or needed to name the resource a
/// create made.
fn wants_response_body(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    headers: &http::HeaderMap,
) -> bool {
    if !is_json(headers.get(http::header::CONTENT_TYPE)) {
        return false;
    }
    policy.response_body || (audit::wants_record(policy, req.method) && req.param("id").is_none())
}

/// `response_filter`: the status and headers the caller gets (after any rewrite).
pub fn on_response_header(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    obs: &mut RequestObs,
    status: u16,
    headers: &http::HeaderMap,
) {
    obs.status = Some(status);
    if policy.response_headers {
        obs.response_headers = Some(policy.redactor.headers(headers));
    }
    if wants_response_body(policy, req, headers) {
        obs.response_body = Some(BytesMut::new());
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
/// audit record is written, before those last bytes leave: this waits for the audit writer
/// (blocking, as the body filter is synchronous; the Tokio worker hands its other tasks over
/// first).
pub fn on_response_body(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    obs: &mut RequestObs,
    body: Option<&Bytes>,
    end: bool,
) {
    if let Some(b) = body {
        keep(obs, b);
    }
    if end {
        audit::record(policy, req, obs, false);
    }
}

/// Before the proxy writes an answer of its own (errors, local routes): status, headers, body
/// for the log, and the audit record, which is in the file when this returns.
pub async fn on_local_answer(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    obs: &mut RequestObs,
    status: u16,
    headers: &http::HeaderMap,
    body: &Bytes,
) {
    on_response_header(policy, req, obs, status, headers);
    keep(obs, body);
    audit::record_async(policy, req, obs, false).await;
}

/// `request_filter`, before a call goes on toward OrionVM: with `logging.audit.on_failure:
/// closed`, a mutating call is refused while the audit trail cannot take records.
pub fn audit_ready(policy: &LogPolicy, method: &http::Method) -> Result<(), ObserveError> {
    match &policy.audit {
        Some(writer)
            if policy.audit_on_failure == AuditOnFailure::Closed
                && audit::is_audited(method)
                && !writer.is_healthy() =>
        {
            Err(ObserveError::AuditUnavailable)
        }
        _ => Ok(()),
    }
}

/// The access-log line of a request refused before any phase ran (a request header Pingora's
/// parser or framing checks refuse): neither its method nor its path is known (`-`).
pub fn log_refused_header(
    policy: &LogPolicy,
    request_id: &str,
    client_ip: Option<std::net::IpAddr>,
    status: u16,
    error: ErrorNote,
) {
    let headers = http::HeaderMap::new();
    let Ok(method) = http::Method::from_bytes(b"-") else {
        return;
    };
    let req = RequestView {
        method: &method,
        path: "-",
        query: None,
        headers: &headers,
        route: None,
        params: &[],
        principal: None,
        tenant: None,
        client_ip,
        request_id,
    };
    let obs = RequestObs {
        status: Some(status),
        error: Some(error),
        ..Default::default()
    };
    access::log_request(policy, &req, &obs, status, Some("InvalidHTTPHeader"));
}

/// `logging`: metrics, usage, the access-log line, and the audit record if no answer was
/// completed. `status` is what the caller got (0: nothing); `error_type` the kind of error that
/// ended the request early, if any.
pub async fn finish(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    obs: &mut RequestObs,
    status: u16,
    error_type: Option<&str>,
) {
    if !obs.audited {
        if obs.status.is_none() && status != 0 {
            obs.status = Some(status);
        }
        // The answer is over (or abandoned): nobody waits for this record.
        let _ = audit::submit(policy, req, obs, error_type.is_some());
    }
    let elapsed = obs.started.elapsed();
    let tenant = req.principal.map(|p| &*p.tenant).unwrap_or("none");
    metrics::request_done(
        req.route_name(),
        req.route.map(|r| &r.series),
        req.method.as_str(),
        status,
        tenant,
        elapsed.as_secs_f64(),
        obs.upstream_elapsed.map(|d| d.as_secs_f64()),
    );
    metrics::bytes(tenant, obs.request_bytes, obs.response_bytes);
    match obs.upstream_status {
        Some(s) if s >= 500 => metrics::upstream_error("5xx"),
        Some(401) => metrics::upstream_error("auth"),
        Some(429) => metrics::rate_limited(metrics::UPSTREAM_POLICY),
        _ => {}
    }
    policy.series.record(
        status,
        elapsed,
        obs.upstream_elapsed,
        obs.upstream_status,
        req.principal.map(|p| (&p.id, &p.tenant)),
    );
    if let Some(p) = req.principal {
        usage::record(&*policy.usage, &p.id, &p.tenant, status).await;
    }
    access::log_request(policy, req, obs, status, error_type);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised_in_any_case() {
        let is = |v: &str| is_json(Some(&http::HeaderValue::from_str(v).unwrap()));
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;q=1",
            "application/problem+json",
            "application/VND.ORION+JSON",
        ] {
            assert!(is(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "json",
            "+jso",
            "",
            "application/json5",
        ] {
            assert!(!is(no), "{no}");
        }
        assert!(!is_json(None));
    }

    fn policy(cfg: LoggingConfig) -> LogPolicy {
        LogPolicy::build(&cfg, &ObserveState::default()).unwrap()
    }

    fn files(dir: &Path, access: &str, audit: &str) -> LoggingConfig {
        let mut cfg = LoggingConfig {
            access_log: dir.join(access).display().to_string(),
            ..Default::default()
        };
        cfg.audit.path = dir.join(audit).display().to_string();
        cfg
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn build_changes_nothing_commit_opens_hands_over_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let state = ObserveState::default();
        let empty = (Vec::<String>::new(), Vec::<PathBuf>::new());

        // Built and dropped (a config that failed later): no trace.
        let p = LogPolicy::build(&files(d, "a1.log", "u1.log"), &state).unwrap();
        assert!(!d.join("a1.log").exists() && !d.join("u1.log").exists());
        assert_eq!(state.targets(), empty);
        let sink = p.sink.clone().unwrap();
        let writer = p.audit.clone().unwrap();
        assert!(!sink.is_running() && !writer.is_running());
        drop(p);

        // Committed: opened, started, registered.
        let p1 = LogPolicy::build(&files(d, "a1.log", "u1.log"), &state).unwrap();
        p1.commit(&state);
        assert!(d.join("a1.log").exists() && d.join("u1.log").exists());
        let s1 = p1.sink.clone().unwrap();
        let w1 = p1.audit.clone().unwrap();
        assert!(s1.is_running() && w1.is_running() && w1.is_healthy());
        assert_eq!(
            state.targets(),
            (
                vec![d.join("a1.log").display().to_string()],
                vec![d.join("u1.log")]
            )
        );

        // The same files with other settings: the same sinks, handed over.
        let mut cfg = files(d, "a1.log", "u1.log");
        cfg.rotate.max_files = 9;
        cfg.audit.durability = crate::config::model::AuditDurability::Fsync;
        let p2 = LogPolicy::build(&cfg, &state).unwrap();
        assert!(Arc::ptr_eq(p2.sink.as_ref().unwrap(), &s1));
        assert!(Arc::ptr_eq(p2.audit.as_ref().unwrap(), &w1));
        assert_eq!(w1.syncs(), 0);
        p2.commit(&state);
        let ticket = w1.submit(b"{}".to_vec());
        assert_eq!(ticket.wait(), audit_writer::Written::Yes);
        assert_eq!(w1.syncs(), 1, "the new durability applies from the commit");

        // Other files: new sinks at commit; the old ones are retired and end once the
        // configs that used them are gone.
        let p3 = LogPolicy::build(&files(d, "a2.log", "u2.log"), &state).unwrap();
        assert!(!d.join("a2.log").exists());
        p3.commit(&state);
        assert!(d.join("a2.log").exists() && d.join("u2.log").exists());
        assert_eq!(
            state.targets(),
            (
                vec![d.join("a2.log").display().to_string()],
                vec![d.join("u2.log")]
            )
        );
        assert!(
            s1.is_running() && w1.is_running(),
            "still used by p1 and p2"
        );
        let (old_sink, old_writer) = (Arc::downgrade(&s1), Arc::downgrade(&w1));
        drop((p1, p2, s1, w1));
        wait_until("the old writers end", || {
            old_sink.upgrade().is_none() && old_writer.upgrade().is_none()
        });

        // Logging off: the state keeps nothing.
        let mut off = LoggingConfig {
            access_log: "off".into(),
            ..Default::default()
        };
        off.audit.path = "off".into();
        LogPolicy::build(&off, &state).unwrap().commit(&state);
        assert_eq!(state.targets(), empty);
    }

    #[test]
    fn files_that_cannot_be_opened_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let state = ObserveState::default();
        let errs = LogPolicy::build(&files(dir.path(), "no/such/a.log", "u.log"), &state)
            .err()
            .unwrap();
        assert!(
            errs[0].starts_with("logging.access_log: cannot open")
                && errs[0].contains("does not exist"),
            "{errs:?}"
        );
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        let errs = LogPolicy::build(&files(dir.path(), "a.log", "adir"), &state)
            .err()
            .unwrap();
        assert!(errs[0].contains("is a directory"), "{errs:?}");
        assert!(!dir.path().join("a.log").exists());
    }

    #[test]
    fn closed_refuses_mutations_only_while_the_trail_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = ObserveState::default();
        let mut cfg = files(dir.path(), "a.log", "u.log");
        cfg.audit.on_failure = AuditOnFailure::Closed;
        let p = LogPolicy::build(&cfg, &state).unwrap();
        // Not committed: its writer cannot take records.
        assert_eq!(
            audit_ready(&p, &http::Method::POST),
            Err(ObserveError::AuditUnavailable)
        );
        assert_eq!(audit_ready(&p, &http::Method::GET), Ok(()));
        p.commit(&state);
        assert_eq!(audit_ready(&p, &http::Method::DELETE), Ok(()));
        let mut open = cfg.clone();
        open.audit.on_failure = AuditOnFailure::Open;
        let p = LogPolicy::build(&open, &ObserveState::default()).unwrap();
        assert_eq!(audit_ready(&p, &http::Method::POST), Ok(()));
    }

    fn principal() -> Arc<crate::auth::principal::Principal> {
        Arc::new(crate::auth::principal::Principal {
            id: "key:ci".into(),
            kind: crate::auth::principal::CredentialKind::ApiKey,
            roles: vec!["operator".into()],
            tenant: "acme".into(),
            permissions: Default::default(),
            policy: None,
        })
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_goes_through_the_hooks_into_the_trail_the_log_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let state = ObserveState::default();
        let mut cfg = files(dir.path(), "access.log", "audit.log");
        cfg.request_body = true;
        let policy = LogPolicy::build(&cfg, &state).unwrap();
        policy.commit(&state);
        let method = http::Method::POST;
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("user-agent", "terraform/1.9".parse().unwrap());
        let who = principal();
        let req = RequestView {
            method: &method,
            path: "/api/v1/public_keys",
            query: Some("api_key=sekrit&x=1"),
            headers: &headers,
            route: None,
            params: &[],
            principal: Some(&who),
            tenant: None,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            request_id: "req-1",
        };
        let mut obs = RequestObs {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            request_body: Some(Bytes::from_static(br#"{"name":"k","password":"pw"}"#)),
            request_bytes: 28,
            upstream_status: Some(200),
            ..Default::default()
        };
        assert!(wants_request_body(&policy, &method));
        assert_eq!(audit_ready(&policy, &method), Ok(()));

        // The answer: a JSON body naming what was made, in two chunks.
        let mut answer = http::HeaderMap::new();
        answer.insert("content-type", "application/json".parse().unwrap());
        on_response_header(&policy, &req, &mut obs, 200, &answer);
        on_response_body(
            &policy,
            &req,
            &mut obs,
            Some(&Bytes::from_static(br#"{"id":"#)),
            false,
        );
        assert!(
            lines(&dir.path().join("audit.log")).is_empty(),
            "not before the end"
        );
        on_response_body(
            &policy,
            &req,
            &mut obs,
            Some(&Bytes::from_static(br#""pk-9"}"#)),
            true,
        );
        // In the trail as soon as the last body hook returned.
        let trail = lines(&dir.path().join("audit.log"));
        assert_eq!(trail.len(), 1);
        let r = &trail[0];
        assert_eq!(r["orion.resource.id"], "pk-9");
        assert_eq!(r["user.id"], "key:ci");
        assert_eq!(r["organization.id"], "acme");
        assert_eq!(r["orion.audit.result"], "success");
        assert_eq!(r["client.ip"], "192.0.2.7");
        assert_eq!(r["trace.id"], "0af7651916cd43dd8448eb211c80319c");
        let redacted =
            serde_json::to_vec(&serde_json::json!({"name":"k","password":"[redacted]"})).unwrap();
        assert_eq!(
            r["orion.http.request.body.digest"],
            format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&redacted))
            )
        );

        obs.response_bytes = 13;
        finish(&policy, &req, &mut obs, 200, None).await;
        // Only one record, whatever `finish` sees.
        assert_eq!(lines(&dir.path().join("audit.log")).len(), 1);
        let usage = state
            .usage()
            .report(&Default::default(), usage::now_secs())
            .await
            .unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(
            (usage[0].principal.as_str(), usage[0].windows[0].requests),
            ("key:ci", 1)
        );
        state.flush_all();
        let log = lines(&dir.path().join("access.log"));
        assert_eq!(log.len(), 1);
        let l = &log[0];
        assert_eq!(l["http.request.id"], "req-1");
        assert_eq!(l["url.query"], "api_key=[redacted]&x=1");
        assert_eq!(l["orion.route"], "unmatched");
        assert_eq!(l["user_agent.original"], "terraform/1.9");
        assert_eq!(l["http.response.body.bytes"], 13);
        assert_eq!(l["orion.upstream.status_code"], 200);
        assert_eq!(
            l["http.request.body.content"],
            r#"{"name":"k","password":"[redacted]"}"#
        );
        assert!(l.get("error.code").is_none());
    }

    #[tokio::test]
    async fn a_call_that_broke_off_is_recorded_by_finish() {
        let dir = tempfile::tempdir().unwrap();
        let state = ObserveState::default();
        let policy =
            LogPolicy::build(&files(dir.path(), "access.log", "audit.log"), &state).unwrap();
        policy.commit(&state);
        let method = http::Method::DELETE;
        let headers = http::HeaderMap::new();
        let params = [("id".to_string(), "vm-1".to_string())];
        let req = RequestView {
            method: &method,
            path: "/api/v1/instances/vm-1",
            query: None,
            headers: &headers,
            route: None,
            params: &params,
            principal: None,
            tenant: None,
            client_ip: None,
            request_id: "req-2",
        };
        let mut obs = RequestObs {
            error: Some(ErrorNote {
                code: "upstream_reset",
                detail: "OrionVM closed the connection".into(),
            }),
            upstream_failure: Some("reset"),
            ..Default::default()
        };
        finish(&policy, &req, &mut obs, 0, Some("ConnectionClosed")).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines(&dir.path().join("audit.log")).is_empty() {
            assert!(Instant::now() < deadline, "the record of a broken call");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = &lines(&dir.path().join("audit.log"))[0];
        assert_eq!(r["orion.resource.id"], "vm-1");
        assert_eq!(r["orion.audit.result"], "error");
        assert_eq!(r["error.code"], "upstream_reset");
        assert!(r.get("user.id").is_none());
        state.flush_all();
        let l = &lines(&dir.path().join("access.log"))[0];
        assert_eq!(l["log.level"], "error");
        assert_eq!(l["error.type"], "ConnectionClosed");
        assert_eq!(l["orion.upstream.failure"], "reset");
        // No principal, no usage.
        assert!(
            state
                .usage()
                .report(&Default::default(), usage::now_secs())
                .await
                .unwrap()
                .is_empty()
        );
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
