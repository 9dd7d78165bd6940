//! The JSON access log: one line per request, written by a background thread so that the
//! request path only formats and enqueues. Field names follow ECS so that ELK, Loki and Datadog
//! ingest the lines without a parser.

use super::rotate::{RotatePolicy, RotatingFile};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// How often the writer thread takes the pending lines.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Lines waiting for the writer beyond this are dropped (and counted), never blocking requests.
const MAX_PENDING: usize = 16 * 1024 * 1024;

pub struct Sink {
    target: String,
    /// Lines appended by requests, taken whole by the writer thread every `FLUSH_INTERVAL`:
    /// a request costs an uncontended lock and a copy, never a thread wake-up or a syscall.
    pending: Mutex<Vec<u8>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Rotation of a file target, updated on reload: (max_bytes, max_files).
    rotate: Arc<Mutex<RotatePolicy>>,
    out: Mutex<Out>,
}

impl Sink {
    /// Queues one line (a newline is added). Never blocks on I/O: past `MAX_PENDING` the line
    /// is dropped and counted, rather than slowing requests down.
    pub fn write(&self, line: Vec<u8>) {
        let mut pending = self.pending.lock();
        if pending.len() + line.len() < MAX_PENDING {
            pending.extend_from_slice(&line);
            pending.push(b'\n');
            return;
        }
        drop(pending);
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::log_line_dropped();
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Writes what is pending now (the writer thread, and shutdown).
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        let mut out = self.out.lock();
        match &mut *out {
            Out::Stdout(w) => {
                let _ = w.write_all(&batch);
                let _ = w.flush();
            }
            Out::File(f) => {
                f.policy = *self.rotate.lock();
                if let Err(e) = f.write_lines(&batch) {
                    log::warn!("access log {}: {e}", f.path().display());
                }
            }
        }
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
    let out = if target == "stdout" {
        Out::Stdout(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ))
    } else {
        let f = RotatingFile::open(std::path::Path::new(target), rotate)
            .map_err(|e| format!("cannot open {target}: {e}"))?;
        Out::File(f)
    };
    let sink = Arc::new(Sink {
        target: target.to_string(),
        pending: Mutex::new(Vec::with_capacity(256 * 1024)),
        dropped: Default::default(),
        rotate: Arc::new(Mutex::new(rotate)),
        out: Mutex::new(out),
    });
    let writer = Arc::downgrade(&sink);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            while let Some(sink) = writer.upgrade() {
                sink.flush();
                drop(sink);
                std::thread::sleep(FLUSH_INTERVAL);
            }
        })
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    sinks.insert(target.to_string(), sink.clone());
    Ok(sink)
}

/// Writes every sink's pending lines; called once the server has stopped.
pub fn flush_all() {
    let sinks: Vec<Arc<Sink>> = SINKS.lock().values().cloned().collect();
    for s in sinks {
        s.flush();
    }
}

enum Out {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(RotatingFile),
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
    let mut line = Line::with_capacity(640);
    line.str("@timestamp", &timestamp(ctx.started_at));
    line.str(
        "log.level",
        if status >= 500 || status == 0 {
            "error"
        } else if status >= 400 {
            "warn"
        } else {
            "info"
        },
    );
    line.str("event.dataset", "orion_proxy.access");
    line.str("http.request.id", &ctx.request_id);
    line.str("trace.id", &ctx.trace_id);
    if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
        line.display("client.ip", &ip.ip());
    }
    line.str("http.request.method", req.method.as_str());
    if ctx.path.is_empty() {
        line.str("url.path", cut(req.uri.path(), 256));
    } else {
        line.str("url.path", &ctx.path);
    }
    if let Some(q) = req.uri.query() {
        line.str("url.query", cut(&policy.redact_query(q), 512));
    }
    line.str("route", ctx.route_name());
    if let Some(p) = &ctx.principal {
        line.str("user.id", &p.id);
        line.str_list("user.roles", p.roles.iter().map(|r| &**r));
        line.str("organization.id", &p.tenant);
        line.str("auth.kind", p.kind.as_str());
    }
    if let Some(ua) = req.headers.get("user-agent").and_then(|v| v.to_str().ok()) {
        line.str("user_agent.original", cut(ua, 256));
    }
    line.num("http.response.status_code", status as u64);
    if let Some(s) = ctx.upstream.status {
        line.num("upstream.status_code", s as u64);
    }
    if let Some(t) = &ctx.tenant
        && let Some(e) = ctx
            .upstream
            .endpoint
            .and_then(|i| t.account.endpoints.get(i))
    {
        line.str("upstream.endpoint", &e.name);
    }
    let elapsed = ctx.started.elapsed();
    line.num("event.duration", elapsed.as_nanos() as u64);
    line.millis("latency_ms", elapsed);
    if let Some(u) = ctx.upstream.elapsed {
        line.millis("upstream.latency_ms", u);
    }
    line.num("http.request.body.bytes", ctx.request_bytes as u64);
    line.num("http.response.body.bytes", ctx.response_bytes as u64);
    if ctx.upstream.attempts > 1 {
        line.num("upstream.attempts", ctx.upstream.attempts as u64);
    }
    if let Some(err) = &ctx.error {
        line.str("error.code", err.code);
        line.str("error.message", cut(&err.detail, 256));
    }
    if let Some(r) = ctx.auth_failure {
        line.str("auth.failure", r);
    }
    if let Some(k) = ctx.upstream.failure {
        line.str("upstream.failure", k.as_str());
    }
    if let Some(e) = error {
        line.str("error.type", &format!("{:?}", e.etype()));
    }
    if policy.request_headers {
        line.value(
            "http.request.headers",
            &policy.redactor.headers(&req.headers),
        );
    }
    if let Some(h) = &ctx.obs.response_headers {
        line.value("http.response.headers", h);
    }
    if policy.request_body
        && let Some(b) = super::request_body(session, ctx)
    {
        let (text, truncated) = policy.body_for_log(&b, false);
        line.str("http.request.body.content", &text);
        if truncated {
            line.raw("http.request.body.truncated", "true");
        }
    }
    if policy.response_body
        && let Some(b) = &ctx.obs.response_body
    {
        let (text, truncated) = policy.body_for_log(b, ctx.obs.response_body_overflow);
        line.str("http.response.body.content", &text);
        if truncated {
            line.raw("http.response.body.truncated", "true");
        }
    }
    sink.write(line.finish());
}

/// A JSON object written straight into bytes: keys are trusted ASCII literals, values are
/// escaped by serde_json. No map, no intermediate `Value`s on the hot path.
struct Line {
    buf: Vec<u8>,
}

impl Line {
    fn with_capacity(n: usize) -> Self {
        let mut buf = Vec::with_capacity(n);
        buf.push(b'{');
        Line { buf }
    }

    fn key(&mut self, k: &str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, v);
    }

    fn display(&mut self, k: &str, v: &dyn std::fmt::Display) {
        self.str(k, &v.to_string());
    }

    fn str_list<'a>(&mut self, k: &str, items: impl Iterator<Item = &'a str>) {
        self.key(k);
        self.buf.push(b'[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            let _ = serde_json::to_writer(&mut self.buf, item);
        }
        self.buf.push(b']');
    }

    fn num(&mut self, k: &str, v: u64) {
        self.key(k);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// Milliseconds with microsecond precision.
    fn millis(&mut self, k: &str, d: std::time::Duration) {
        self.key(k);
        let micros = d.as_micros() as u64;
        let mut b = itoa::Buffer::new();
        self.buf
            .extend_from_slice(b.format(micros / 1000).as_bytes());
        let frac = micros % 1000;
        self.buf.push(b'.');
        self.buf.extend_from_slice(format!("{frac:03}").as_bytes());
    }

    fn raw(&mut self, k: &str, json: &str) {
        self.key(k);
        self.buf.extend_from_slice(json.as_bytes());
    }

    fn value(&mut self, k: &str, v: &serde_json::Value) {
        self.key(k);
        let _ = serde_json::to_writer(&mut self.buf, v);
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

/// The first `max` bytes of `s`, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
