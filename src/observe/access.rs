//! The JSON access log: one line per request, written by a background thread so that the
//! request path only formats and enqueues. Field names follow ECS so that ELK, Loki and Datadog
//! ingest the lines without a parser.

use super::rotate::{RotatePolicy, RotatingFile};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

pub struct Sink {
    target: String,
    tx: SyncSender<Vec<u8>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Rotation of a file target, updated on reload: (max_bytes, max_files).
    rotate: Arc<Mutex<RotatePolicy>>,
}

impl Sink {
    /// Queues one line (a newline is added). Never blocks: a full queue drops the line and
    /// counts it, rather than slowing requests down.
    pub fn write(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                super::metrics::log_line_dropped();
            }
        }
    }

    pub fn target(&self) -> &str {
        &self.target
    }
}

static SINKS: Lazy<Mutex<HashMap<String, Arc<Sink>>>> = Lazy::new(Default::default);

/// The sink for `stdout` or a file path, shared by every config that names it (a reload keeps
/// the writer and takes the new rotation settings).
pub fn sink_for(target: &str, rotate: RotatePolicy) -> Result<Arc<Sink>, String> {
    let mut sinks = SINKS.lock();
    if let Some(s) = sinks.get(target) {
        *s.rotate.lock() = rotate;
        return Ok(s.clone());
    }
    let shared_rotate = Arc::new(Mutex::new(rotate));
    let out = if target == "stdout" {
        Out::Stdout(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ))
    } else {
        let f = RotatingFile::open(std::path::Path::new(target), rotate)
            .map_err(|e| format!("cannot open {target}: {e}"))?;
        Out::File(f, shared_rotate.clone())
    };
    let (tx, rx) = sync_channel::<Vec<u8>>(16 * 1024);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer(rx, out))
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    let sink = Arc::new(Sink {
        target: target.to_string(),
        tx,
        dropped: Default::default(),
        rotate: shared_rotate,
    });
    sinks.insert(target.to_string(), sink.clone());
    Ok(sink)
}

enum Out {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(RotatingFile, Arc<Mutex<RotatePolicy>>),
}

fn writer(rx: Receiver<Vec<u8>>, mut out: Out) {
    // Lines are gathered into one buffer per wake-up, so a busy proxy makes few writes.
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Ok(line) = rx.recv() {
        batch.extend_from_slice(&line);
        while batch.len() < 256 * 1024
            && let Ok(more) = rx.try_recv()
        {
            batch.extend_from_slice(&more);
        }
        match &mut out {
            Out::Stdout(w) => {
                let _ = w.write_all(&batch);
                let _ = w.flush();
            }
            Out::File(f, policy) => {
                f.policy = *policy.lock();
                if let Err(e) = f.write(&batch) {
                    log::warn!("access log {}: {e}", f.path().display());
                }
            }
        }
        batch.clear();
    }
}

/// RFC 3339 UTC with milliseconds, as ECS `@timestamp` wants.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&fmt).unwrap_or_default()
}

/// Formats and queues the access-log line of one request.
pub fn log_request(
    policy: &super::LogPolicy,
    session: &pingora_proxy::Session,
    ctx: &crate::proxy::ctx::Ctx,
    status: u16,
    error: Option<&pingora::Error>,
) {
    let Some(sink) = &policy.sink else { return };
    let req = session.req_header();
    let mut line = serde_json::Map::with_capacity(24);
    let mut put = |k: &str, v: serde_json::Value| {
        line.insert(k.to_string(), v);
    };
    use serde_json::Value as V;
    put("@timestamp", V::String(timestamp(ctx.started_at)));
    put(
        "log.level",
        V::String(
            if status >= 500 || status == 0 {
                "error"
            } else if status >= 400 {
                "warn"
            } else {
                "info"
            }
            .into(),
        ),
    );
    put("event.dataset", V::String("orion_proxy.access".into()));
    put("http.request.id", V::String(ctx.request_id.clone()));
    put("trace.id", V::String(ctx.trace_id.clone()));
    if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
        put("client.ip", V::String(ip.ip().to_string()));
    }
    put(
        "http.request.method",
        V::String(req.method.as_str().to_string()),
    );
    let path = if ctx.path.is_empty() {
        truncate(req.uri.path(), 256)
    } else {
        ctx.path.clone()
    };
    put("url.path", V::String(path));
    if let Some(q) = req.uri.query() {
        put(
            "url.query",
            V::String(truncate(&policy.redact_query(q), 512)),
        );
    }
    put("route", V::String(ctx.route_name().to_string()));
    if let Some(p) = &ctx.principal {
        put("user.id", V::String(p.id.to_string()));
        put(
            "user.roles",
            V::Array(p.roles.iter().map(|r| V::String(r.to_string())).collect()),
        );
        put("organization.id", V::String(p.tenant.to_string()));
        put("auth.kind", V::String(p.kind.as_str().into()));
    }
    if let Some(ua) = req.headers.get("user-agent").and_then(|v| v.to_str().ok()) {
        put("user_agent.original", V::String(truncate(ua, 256)));
    }
    put("http.response.status_code", V::from(status));
    if let Some(s) = ctx.upstream_status {
        put("upstream.status_code", V::from(s));
    }
    if let Some(t) = &ctx.tenant
        && let Some(e) = ctx.endpoint.and_then(|i| t.account.endpoints.get(i))
    {
        put("upstream.endpoint", V::String(e.name.to_string()));
    }
    let elapsed = ctx.started.elapsed();
    put("event.duration", V::from(elapsed.as_nanos() as u64));
    put("latency_ms", V::from((elapsed.as_micros() as f64) / 1000.0));
    if let Some(u) = ctx.upstream_elapsed {
        put(
            "upstream.latency_ms",
            V::from((u.as_micros() as f64) / 1000.0),
        );
    }
    put("http.request.body.bytes", V::from(ctx.request_bytes));
    put("http.response.body.bytes", V::from(ctx.response_bytes));
    if ctx.attempts > 1 {
        put("upstream.attempts", V::from(ctx.attempts));
    }
    if let Some(err) = &ctx.error {
        put("error.code", V::String(err.code.to_string()));
        put("error.message", V::String(truncate(&err.detail, 256)));
    }
    if let Some(r) = ctx.auth_failure {
        put("auth.failure", V::String(r.into()));
    }
    if let Some(k) = ctx.upstream_failure {
        put("upstream.failure", V::String(k.into()));
    }
    if let Some(e) = error {
        put("error.type", V::String(format!("{:?}", e.etype())));
    }
    if policy.request_headers {
        put(
            "http.request.headers",
            policy.redactor.headers(&req.headers),
        );
    }
    if let Some(h) = ctx.obs.response_headers.clone() {
        put("http.response.headers", h);
    }
    if policy.request_body
        && let Some(b) = super::request_body(session, ctx)
    {
        let (text, cut) = policy.body_for_log(&b, false);
        put("http.request.body.content", V::String(text));
        if cut {
            put("http.request.body.truncated", V::Bool(true));
        }
    }
    if policy.response_body
        && let Some(b) = &ctx.obs.response_body
    {
        let (text, cut) = policy.body_for_log(b, ctx.obs.response_body_overflow);
        put("http.response.body.content", V::String(text));
        if cut {
            put("http.response.body.truncated", V::Bool(true));
        }
    }
    if let Ok(bytes) = serde_json::to_vec(&V::Object(line)) {
        sink.write(bytes);
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
