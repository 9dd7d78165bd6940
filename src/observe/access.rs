//! The JSON access log: one line per request, written by a background thread so that the
//! request path only formats and enqueues. Field names follow ECS so that ELK, Loki and Datadog
//! ingest the lines without a parser.

use super::RequestObs;
use super::rotate::{RotatePolicy, RotatingFile};
use crate::request::RequestView;
use parking_lot::Mutex;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the writer thread takes the pending lines.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Lines waiting for the writer beyond this are dropped (and counted), never blocking requests.
const MAX_PENDING: usize = 16 * 1024 * 1024;
/// The room each of the two pending buffers keeps between flushes (a burst may grow one; it is
/// shrunk back to this after it was written).
const SPARE_BYTES: usize = 256 * 1024;
/// How often a file that cannot be opened is tried again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// One access-log target (`stdout` or a file) and its writer thread.
///
/// A sink is made by [`super::LogPolicy::build`] without any side effect (no file, no thread);
/// [`Sink::start`] (from `LogPolicy::commit`) opens the file and starts the writer. A config
/// that names the same target again is handed the same sink. A sink the committed config no
/// longer names is retired: its writer keeps writing what requests of the old config still
/// send, then flushes, closes the file and ends once nothing but the writer holds the sink.
pub struct Sink {
    target: String,
    /// Lines appended by requests, taken whole by the writer thread every `FLUSH_INTERVAL`:
    /// a request costs an uncontended lock and a copy, never a thread wake-up or a syscall.
    pending: Mutex<Vec<u8>>,
    /// The writer's other buffer, swapped with `pending` at each flush: requests append into
    /// room already allocated instead of regrowing an empty vector every interval.
    spare: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    /// Rotation of a file target, set at commit.
    rotate: Mutex<RotatePolicy>,
    /// `None` until the file is open (or while it cannot be opened).
    out: Mutex<Output>,
    /// The writer should end once nothing else holds the sink.
    retired: AtomicBool,
    /// The writer thread is running.
    running: AtomicBool,
}

struct Output {
    out: Option<Out>,
    last_open_attempt: Option<Instant>,
}

impl Sink {
    /// A sink for `stdout` or a file path: memory only, nothing opened or started.
    pub fn new(target: &str, rotate: RotatePolicy) -> Arc<Sink> {
        Arc::new(Sink {
            target: target.to_string(),
            pending: Mutex::new(Vec::with_capacity(SPARE_BYTES)),
            spare: Mutex::new(Vec::with_capacity(SPARE_BYTES)),
            dropped: Default::default(),
            rotate: Mutex::new(rotate),
            out: Mutex::new(Output {
                out: None,
                last_open_attempt: None,
            }),
            retired: AtomicBool::new(false),
            running: AtomicBool::new(false),
        })
    }

    /// Queues one line (a newline is added). Never blocks on I/O: past `MAX_PENDING` the line
    /// is dropped and counted, rather than slowing requests down.
    pub fn write(&self, line: &[u8]) {
        let mut pending = self.pending.lock();
        if pending.len() + line.len() < MAX_PENDING {
            pending.extend_from_slice(line);
            pending.push(b'\n');
            return;
        }
        drop(pending);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        crate::metrics::log_line_dropped();
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the writer thread runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub(super) fn set_rotate(&self, rotate: RotatePolicy) {
        *self.rotate.lock() = rotate;
    }

    /// Opens the target and starts the writer thread (once). A file that cannot be opened is
    /// logged and tried again by the writer every second.
    pub(super) fn start(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.open_if_closed(&mut self.out.lock());
        let sink = self.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || sink.run());
        if let Err(e) = spawned {
            self.running.store(false, Ordering::Release);
            log::error!("access log {}: cannot start the writer: {e}", self.target);
        }
    }

    /// The config in force no longer names this sink: its writer ends once the requests of
    /// the old config are done with it.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    fn run(self: Arc<Self>) {
        yield_to_requests();
        loop {
            self.flush();
            // Only this thread holds the sink: no request can add a line any more.
            if self.retired.load(Ordering::Acquire) && Arc::strong_count(&self) == 1 {
                self.flush();
                self.out.lock().out = None;
                self.running.store(false, Ordering::Release);
                return;
            }
            std::thread::sleep(FLUSH_INTERVAL);
        }
    }

    fn open_if_closed(&self, out: &mut Output) {
        if out.out.is_some()
            || out
                .last_open_attempt
                .is_some_and(|t| t.elapsed() < REOPEN_INTERVAL)
        {
            return;
        }
        out.last_open_attempt = Some(Instant::now());
        out.out = if self.target == "stdout" {
            Some(Out::Stdout(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )))
        } else {
            match RotatingFile::open(std::path::Path::new(&self.target), *self.rotate.lock()) {
                Ok(f) => Some(Out::File(f)),
                Err(e) => {
                    log::error!("access log: cannot open {}: {e}", self.target);
                    None
                }
            }
        };
    }

    /// Closes a file target so that the next write opens the path again (`SIGUSR1`, after
    /// logrotate renamed the file). What is pending is written to the old file first.
    pub fn reopen(&self) {
        if self.target == "stdout" {
            return;
        }
        self.flush();
        let mut out = self.out.lock();
        out.out = None;
        out.last_open_attempt = None;
        self.open_if_closed(&mut out);
    }

    /// Writes what is pending now (the writer thread, and shutdown).
    pub fn flush(&self) {
        let mut spare = self.spare.lock();
        std::mem::swap(&mut *spare, &mut *self.pending.lock());
        let batch = &mut *spare;
        if batch.is_empty() {
            return;
        }
        self.write_out(batch);
        batch.clear();
        batch.shrink_to(SPARE_BYTES);
    }

    fn write_out(&self, batch: &[u8]) {
        let mut out = self.out.lock();
        self.open_if_closed(&mut out);
        match &mut out.out {
            Some(Out::Stdout(w)) => {
                let _ = w.write_all(batch);
                let _ = w.flush();
            }
            Some(Out::File(f)) => {
                f.policy = *self.rotate.lock();
                if let Err(e) = f.write_lines(batch) {
                    log::warn!("access log {}: {e}", f.path().display());
                }
            }
            None => {
                let lines = batch.iter().filter(|b| **b == b'\n').count() as u64;
                self.dropped.fetch_add(lines, Ordering::Relaxed);
                for _ in 0..lines {
                    crate::metrics::log_line_dropped();
                }
            }
        }
    }
}

/// How much less CPU the writer thread claims than request work: nice values above the
/// process's own (capped at 19, the lowest priority).
const WRITER_NICE: i32 = 10;

/// The nice value of the writer of a process whose threads run at `process`.
fn writer_nice(process: i32) -> i32 {
    (process + WRITER_NICE).min(19)
}

/// Lowers the calling thread's scheduling priority (`WRITER_NICE` lower): a flush writes the lines of
/// 20 ms at once, several hundred kilobytes under load, and at the default priority the worker
/// thread it shares a CPU with waits until it is done, so requests queue behind the access
/// log; niced, the writer gives the CPU back as soon as a request needs it, and still gets a
/// tenth of a busy CPU, far more than writing the lines takes (README "Where the time goes").
/// Lowering one's own priority needs no privilege; a failure leaves the writer as it was.
fn yield_to_requests() {
    // SAFETY: neither call takes a pointer; `setpriority` with `PRIO_PROCESS` and a thread id
    // changes that thread only (Linux).
    let done = unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, writer_nice(now))
    };
    if done != 0 {
        log::debug!(
            "access log writer: priority unchanged: {}",
            std::io::Error::last_os_error()
        );
    }
}

enum Out {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(RotatingFile),
}

/// Formats and queues the access-log line of one request. `status` is what the caller got (0:
/// no answer); `error_type` the kind of error that ended the request early, if any.
pub fn log_request(
    policy: &super::LogPolicy,
    req: &RequestView<'_>,
    obs: &RequestObs,
    status: u16,
    error_type: Option<&str>,
) {
    let Some(sink) = &policy.sink else { return };
    if !policy.logs(req) {
        return;
    }
    // The line is formatted into this thread's buffer, reused from request to request: no
    // allocation per line, only the copy into the sink's pending lines.
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            line(&mut buf, policy, req, obs, status, error_type);
            sink.write(&buf);
            if buf.capacity() > MAX_KEPT_LINE {
                *buf = Vec::with_capacity(LINE_BYTES);
            }
        }
        Err(_) => {
            let mut buf = Vec::with_capacity(LINE_BYTES);
            line(&mut buf, policy, req, obs, status, error_type);
            sink.write(&buf);
        }
    });
}

/// A GET's line is about 1,000 bytes.
const LINE_BYTES: usize = 2048;
/// A line that logged a large body leaves no large buffer behind.
const MAX_KEPT_LINE: usize = 64 * 1024;

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(LINE_BYTES));
}

/// The ECS version the log lines follow (`ecs.version`), as a literal for `concat!`.
macro_rules! ecs_version {
    () => {
        "8.11.0"
    };
}

/// The ECS version the log lines follow (`ecs.version`).
pub const ECS_VERSION: &str = ecs_version!();

/// A field's key with the comma before it and the colon after it, as one literal: a line
/// writes each key with one copy.
macro_rules! key {
    ($k:literal) => {
        concat!(",\"", $k, "\":")
    };
}

/// The access-log line of one request: ECS 8.x fields, and the proxy's own under `orion.*`
/// (ECS's guidance for custom fields: one namespace of one's own).
fn line(
    buf: &mut Vec<u8>,
    policy: &super::LogPolicy,
    req: &RequestView<'_>,
    obs: &RequestObs,
    status: u16,
    error_type: Option<&str>,
) {
    let mut line = Line { buf };
    line.buf.extend_from_slice(b"{\"@timestamp\":\"");
    line.buf
        .extend_from_slice(&crate::clock::timestamp_bytes(obs.started_at));
    line.buf.push(b'"');
    line.plain(
        key!("log.level"),
        if status >= 500 || status == 0 {
            "error"
        } else if status >= 400 {
            "warn"
        } else {
            "info"
        },
    );
    line.fields(r#","log.logger":"orion_proxy.access""#);
    line.message(req.method.as_str(), req.path, status);
    line.fields(concat!(
        key!("ecs.version"),
        "\"",
        ecs_version!(),
        "\"",
        r#","event.dataset":"orion_proxy.access","event.kind":"event","event.category":["web"]"#
    ));
    line.fields(if status >= 400 || status == 0 {
        r#","event.type":["access","error"]"#
    } else {
        r#","event.type":["access"]"#
    });
    line.plain(
        key!("event.outcome"),
        match status {
            0 => "unknown",
            s if s >= 400 => "failure",
            _ => "success",
        },
    );
    // Request ids are checked to be `[A-Za-z0-9._:-]` when they come in, made of those
    // characters when the proxy makes them.
    line.plain(key!("http.request.id"), req.request_id);
    line.str(key!("trace.id"), &obs.trace_id);
    if !obs.span_id.is_empty() {
        line.str(key!("span.id"), &obs.span_id);
    }
    if let Some(ip) = req.client_ip {
        line.ip(key!("client.ip"), ip);
    }
    // A method is an HTTP token: no character of it needs escaping.
    line.plain(key!("http.request.method"), req.method.as_str());
    line.str(key!("url.path"), cut(req.path, 256));
    if let Some(q) = req.query {
        line.str(key!("url.query"), cut(&policy.redact_query(q), 512));
    }
    if let Some(p) = req.principal {
        line.str(key!("user.id"), &p.id);
        line.str_list(key!("user.roles"), p.roles.iter().map(|r| &**r));
        line.str(key!("organization.id"), &p.tenant);
    }
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        line.str(key!("user_agent.original"), cut(ua, 256));
    }
    line.num(key!("http.response.status_code"), status as u64);
    let elapsed = obs.started.elapsed();
    line.num(key!("event.duration"), elapsed.as_nanos() as u64);
    line.num(key!("http.request.body.bytes"), obs.request_bytes as u64);
    line.num(key!("http.response.body.bytes"), obs.response_bytes as u64);
    if let Some(err) = &obs.error {
        line.str(key!("error.code"), err.code);
        line.str(key!("error.message"), cut(&err.detail, 256));
    }
    if let Some(e) = error_type {
        line.str(key!("error.type"), e);
    }
    if policy.request_body
        && let Some(b) = &obs.request_body
    {
        let (text, truncated) = policy.body_for_log(b, false);
        line.str(key!("http.request.body.content"), &text);
        if truncated {
            line.fields(r#","orion.http.request.body.truncated":true"#);
        }
    }
    if policy.response_body
        && let Some(b) = &obs.response_body
    {
        let (text, truncated) = policy.body_for_log(b, obs.response_body_overflow);
        line.str(key!("http.response.body.content"), &text);
        if truncated {
            line.fields(r#","orion.http.response.body.truncated":true"#);
        }
    }
    // The proxy's own fields.
    line.str(key!("orion.route"), req.route_name());
    line.millis(key!("orion.latency_ms"), elapsed);
    if let Some(p) = req.principal {
        line.plain(key!("orion.auth.kind"), p.kind.as_str());
    }
    if let Some(r) = obs.auth_failure {
        line.str(key!("orion.auth.failure"), r);
    }
    if let (Some(t), Some(_)) = (req.tenant, &obs.upstream_endpoint) {
        line.str(key!("orion.upstream.account"), &t.account.name);
    }
    if let Some(s) = obs.upstream_status {
        line.num(key!("orion.upstream.status_code"), s as u64);
    }
    if let Some(e) = &obs.upstream_endpoint {
        line.str(key!("orion.upstream.endpoint"), e);
    }
    if let Some(u) = obs.upstream_elapsed {
        line.millis(key!("orion.upstream.latency_ms"), u);
    }
    if obs.attempts > 1 {
        line.num(key!("orion.upstream.attempts"), obs.attempts as u64);
    }
    if let Some(k) = obs.upstream_failure {
        line.str(key!("orion.upstream.failure"), k);
    }
    if obs.request_sent && obs.upstream_status.is_none() {
        line.fields(r#","orion.upstream.request_sent":true"#);
    }
    if policy.request_headers {
        line.value(
            key!("orion.http.request.headers"),
            &policy.redactor.headers(req.headers),
        );
    }
    if let Some(h) = &obs.response_headers {
        line.value(key!("orion.http.response.headers"), h);
    }
    line.buf.push(b'}');
}

/// A JSON object written straight into bytes: keys are trusted ASCII literals written with
/// their separators (`key!`), values are escaped as serde_json escapes them. No map, no
/// intermediate `Value`s on the hot path. The object's `{` and first field are written by
/// the caller; every method here writes `,"key":value`.
struct Line<'a> {
    buf: &'a mut Vec<u8>,
}

impl Line<'_> {
    fn str(&mut self, k: &'static str, v: &str) {
        self.buf.extend_from_slice(k.as_bytes());
        json_string(self.buf, v);
    }

    /// A value that needs no escaping by construction (a fixed word, an id made of token
    /// characters): copied between quotes.
    fn plain(&mut self, k: &'static str, v: &str) {
        debug_assert!(!v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'));
        self.buf.reserve(k.len() + v.len() + 2);
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.push(b'"');
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(b'"');
    }

    /// `message`: `METHOD PATH STATUS`, the line a person reads first (Kibana's and Datadog's
    /// default column).
    fn message(&mut self, method: &str, path: &str, status: u16) {
        self.buf.extend_from_slice(key!("message").as_bytes());
        self.buf.push(b'"');
        self.buf.extend_from_slice(method.as_bytes());
        self.buf.push(b' ');
        // The path, escaped as a JSON string's inside (json_string writes the quotes too).
        let at = self.buf.len();
        json_string(self.buf, cut(path, 256));
        self.buf.remove(at);
        self.buf.pop();
        self.buf.push(b' ');
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        self.buf.push(b'"');
    }

    /// An address: its text needs no escaping (digits, dots, colons, hex letters).
    fn ip(&mut self, k: &'static str, ip: std::net::IpAddr) {
        let mut text = String::with_capacity(40);
        crate::upstream::forward::push_ip(&mut text, ip);
        self.plain(k, &text);
    }

    fn str_list<'b>(&mut self, k: &'static str, items: impl Iterator<Item = &'b str>) {
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.push(b'[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            json_string(self.buf, item);
        }
        self.buf.push(b']');
    }

    fn num(&mut self, k: &'static str, v: u64) {
        self.buf.extend_from_slice(k.as_bytes());
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// Milliseconds with microsecond precision.
    fn millis(&mut self, k: &'static str, d: std::time::Duration) {
        self.buf.extend_from_slice(k.as_bytes());
        let micros = d.as_micros() as u64;
        let mut b = itoa::Buffer::new();
        self.buf
            .extend_from_slice(b.format(micros / 1000).as_bytes());
        let frac = micros % 1000;
        self.buf.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }

    /// Fields that never change, written as one piece: `json` is `,"key":value[,...]`.
    fn fields(&mut self, json: &'static str) {
        self.buf.extend_from_slice(json.as_bytes());
    }

    fn value(&mut self, k: &'static str, v: &serde_json::Value) {
        self.buf.extend_from_slice(k.as_bytes());
        let _ = serde_json::to_writer(&mut *self.buf, v);
    }
}

/// `v` as a JSON string. Most values (ids, names, paths, addresses) need no escaping: those are
/// copied between quotes; the rest go through serde_json's escaper, which works byte by byte
/// through its escape table (`serialize_str` was the largest self cost of the line).
fn json_string(buf: &mut Vec<u8>, v: &str) {
    // Without an early exit the check compiles to vector compares, 16 bytes at a time.
    let needs_escape = v.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        buf.reserve(v.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(v.as_bytes());
        buf.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(buf, v);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_json_serde_json_writes() {
        for v in [
            "",
            "plain /api/v1/instances/3b0c",
            "quote \" and backslash \\",
            "tab\tnewline\ncontrol\u{1}",
            "del\u{7f}",
            "unicode é ✓ 🚀",
            "</script>",
        ] {
            let mut fast = Vec::new();
            json_string(&mut fast, v);
            let parsed: String = serde_json::from_slice(&fast).unwrap();
            assert_eq!(parsed, v);
            assert_eq!(fast, serde_json::to_vec(v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn milliseconds_keep_three_decimals() {
        let mut buf = Vec::new();
        let mut line = Line { buf: &mut buf };
        line.millis(key!("a"), Duration::from_micros(12_034));
        line.millis(key!("b"), Duration::from_micros(7));
        line.millis(key!("c"), Duration::from_micros(1_999_999));
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text, r#","a":12.034,"b":0.007,"c":1999.999"#);
    }

    /// A sink for `access.log` in `dir` (1 MiB files, one kept), not started.
    fn file_sink(dir: &tempfile::TempDir) -> (Arc<Sink>, std::path::PathBuf) {
        let path = dir.path().join("access.log");
        let rotate = RotatePolicy {
            max_bytes: 1 << 20,
            max_files: 1,
        };
        (Sink::new(path.to_str().unwrap(), rotate), path)
    }

    /// The nice value of this process's `access-log` thread, field 19 of its /proc stat line.
    fn access_log_thread_nice() -> Option<i32> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            if comm.trim() != "access-log" {
                return None;
            }
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(16)?.parse::<i32>().ok()
        })
    }

    #[test]
    fn the_writer_thread_yields_to_request_work() {
        let dir = tempfile::tempdir().unwrap();
        // This thread's priority, which the writer starts with (threads inherit it).
        let mine = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let want = writer_nice(mine);
        let (sink, _) = file_sink(&dir);
        sink.start();
        let deadline = Instant::now() + Duration::from_secs(30);
        let nice = loop {
            match access_log_thread_nice() {
                Some(n) if n == want => break n,
                found if Instant::now() > deadline => panic!("writer nice {found:?}, want {want}"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        assert!(
            nice > mine || mine == 19,
            "writer {nice}, this thread {mine}"
        );
        // The thread that made the sink keeps its priority.
        let after = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_eq!(after, mine);
        sink.retire();
    }

    #[test]
    fn a_flush_leaves_both_buffers_ready_for_more_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, path) = file_sink(&dir);
        sink.write(b"{}");
        sink.flush();
        sink.write(b"{\"n\":2}");
        sink.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n{\"n\":2}\n");
        assert!(sink.pending.lock().is_empty());
        assert!(sink.pending.lock().capacity() >= SPARE_BYTES);
        assert!(sink.spare.lock().is_empty());
        assert!(sink.spare.lock().capacity() >= SPARE_BYTES);
    }
}
