//! OpenTelemetry traces (`tracing:` in the config): a server span per request, a client span
//! per call to OrionVM (the proxied call, the facade's own calls, token fetches), exported over
//! OTLP/HTTP (protobuf) by `opentelemetry-otlp` (`docs/ARCHITECTURE.md`, "Traces").
//!
//! - Off (no `tracing:`): [`Traces::start_request`] answers `None` and the phases keep their
//!   plain `traceparent` propagation; no span object is built, nothing allocated.
//! - On: the server span continues a trusted caller's `traceparent` (the proxy decides trust,
//!   `server.trusted_networks`) or starts a trace; sampling is the SDK's
//!   `ParentBased(TraceIdRatioBased(sampling_ratio))`. Each call's `traceparent` names its own
//!   client span, with the sampled flag of the trace.
//! - Export never touches a request: finished spans go into a bounded queue ([`QUEUE`]) read by
//!   one thread of this module's that posts batches to the collector. A full queue or a failed
//!   export drops spans, counted in `orion_proxy_trace_spans_total{result="dropped"}` and told in
//!   a log line at most once a minute.
//!
//! The pipeline (exporter, thread) is started when a config is committed, never when it is only
//! staged; a reload with the same `tracing:` keeps it, one with other settings starts a new one
//! and the old one ends when its last request has.

use super::ObserveState;
use crate::config::model::{OtlpHeaderValue, TracingConfig};
use crate::config::secret::Secret;
use crate::upstream::trace::{CallKind, CallSpan, CallTracer};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Finished spans waiting for the exporter; past it, spans are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How long a span waits at most before its batch goes out.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// At most one log line a minute about dropped spans.
const WARN_EVERY_SECS: u64 = 60;

/// `tracing:` checked: what a pipeline is built from. Two equal plans share one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    endpoint: String,
    headers: Vec<(String, Secret)>,
    timeout: Duration,
    ratio: f64,
    service_name: String,
}

impl Plan {
    /// Checks `tracing:` (every error with its path; never a header's value).
    pub fn build(cfg: &TracingConfig) -> Result<Plan, Vec<String>> {
        let mut errors = Vec::new();
        let endpoint = match endpoint_of(&cfg.otlp.endpoint) {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!("tracing.otlp.endpoint: {e}"));
                String::new()
            }
        };
        let mut headers = Vec::new();
        for (name, value) in &cfg.otlp.headers {
            let key = format!("tracing.otlp.headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(format!("{key}: not a valid header name"));
                continue;
            }
            let value = match value {
                OtlpHeaderValue::Plain(v) => Ok(Secret::new(v.clone())),
                OtlpHeaderValue::Secret(r) => r.resolve(),
            };
            match value {
                Ok(v) if http::HeaderValue::from_str(v.expose()).is_ok() => {
                    headers.push((name.to_ascii_lowercase(), v));
                }
                Ok(_) => errors.push(format!("{key}: the value is not a valid header value")),
                Err(e) => errors.push(format!("{key}: {e}")),
            }
        }
        if !(1..=60_000).contains(&cfg.otlp.timeout_ms) {
            errors.push("tracing.otlp.timeout_ms: must be between 1 and 60000".into());
        }
        if !(0.0..=1.0).contains(&cfg.sampling_ratio) {
            errors.push("tracing.sampling_ratio: must be between 0.0 and 1.0".into());
        }
        if cfg.service_name.trim().is_empty() {
            errors.push("tracing.service_name: must not be empty".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Plan {
            endpoint,
            headers,
            timeout: Duration::from_millis(cfg.otlp.timeout_ms),
            ratio: cfg.sampling_ratio,
            service_name: cfg.service_name.clone(),
        })
    }
}

/// The collector's traces URL: `http(s)://host[:port]/path`, `/v1/traces` when it has no path.
fn endpoint_of(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials: put them in tracing.otlp.headers".into());
    }
    let mut out = url.to_string();
    if url.path() == "/" && url.query().is_none() {
        out = format!("{out}v1/traces");
    }
    out.parse::<http::Uri>()
        .map_err(|e| format!("not a valid URI ({e})"))?;
    Ok(out)
}

/// The runtime's traces: the plan of its config and, once committed, the pipeline.
#[derive(Default)]
pub struct Traces {
    plan: Option<Plan>,
    live: Option<Arc<Pipeline>>,
}

impl Traces {
    /// Checks `tracing:`; starts nothing (see [`Traces::commit`]).
    pub fn build(cfg: Option<&TracingConfig>) -> Result<Traces, Vec<String>> {
        Ok(Traces {
            plan: cfg.map(Plan::build).transpose()?,
            live: None,
        })
    }

    /// Puts the plan in force: the pipeline in use when it has the same plan, a new one
    /// otherwise (the previous one ends with its last request).
    pub fn commit(&mut self, state: &ObserveState) {
        let mut current = state.tracing.lock();
        let Some(plan) = &self.plan else {
            *current = None;
            return;
        };
        if let Some(p) = current.as_ref().filter(|p| p.plan == *plan) {
            self.live = Some(p.clone());
            return;
        }
        match Pipeline::start(plan.clone()) {
            Ok(p) => {
                let p = Arc::new(p);
                *current = Some(p.clone());
                self.live = Some(p);
            }
            Err(e) => {
                log::error!("traces are off: the OTLP exporter could not start: {e}");
                *current = None;
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.live.is_some()
    }

    /// The request's server span (`None` when traces are off): a child of `inbound`, a
    /// trusted caller's `traceparent`, when it is well formed.
    pub fn start_request(
        &self,
        method: &http::Method,
        inbound: Option<&str>,
    ) -> Option<Box<RequestTrace>> {
        let pipeline = self.live.as_ref()?;
        Some(Box::new(pipeline.start_request(method, inbound)))
    }
}

/// One OTLP pipeline: the SDK's provider (sampler, resource) and the shipping thread.
pub struct Pipeline {
    plan: Plan,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("endpoint", &self.plan.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Tells the shipping thread to send what it holds and end; does not wait for it.
        let _ = self
            .provider
            .shutdown_with_timeout(Duration::from_millis(1));
    }
}

impl Pipeline {
    /// Sends the spans still queued, waiting at most the export timeout and a second: the
    /// server calls it once it has stopped (`ObserveState::flush_all`).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    fn start(plan: Plan) -> Result<Pipeline, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(plan.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let headers = plan
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        // The blocking reqwest client: the exporter runs on the shipping thread, outside every
        // tokio runtime (the exporter builds the client on a thread of its own).
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(plan.endpoint.clone())
            .with_timeout(plan.timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| e.to_string())?;
        exporter.set_resource(&resource);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let warn = Arc::new(Warner::default());
        let stop = Arc::new(AtomicBool::new(false));
        let endpoint = plan.endpoint.clone();
        {
            let (warn, stop) = (warn.clone(), stop.clone());
            std::thread::Builder::new()
                .name("otlp-export".into())
                .spawn(move || ship(rx, exporter, &endpoint, &warn, &stop))
                .map_err(|e| format!("the export thread: {e}"))?;
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Shipper {
                tx,
                warn,
                stop,
                flush_wait: plan.timeout + Duration::from_secs(1),
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                plan.ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("orion-proxy");
        Ok(Pipeline {
            plan,
            provider,
            tracer,
        })
    }

    fn start_request(&self, method: &http::Method, inbound: Option<&str>) -> RequestTrace {
        let parent = match inbound.and_then(remote_parent) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(crate::metrics::method_label(method.as_str()))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context().clone();
        RequestTrace {
            trace_id: sc.trace_id().to_string(),
            span_id: sc.span_id().to_string(),
            calls: Arc::new(Calls {
                tracer: self.tracer.clone(),
                cx: parent.with_span(span),
            }),
            proxied: None,
        }
    }
}

/// A trusted caller's `traceparent` as the remote parent.
fn remote_parent(traceparent: &str) -> Option<SpanContext> {
    let (trace, parent, flags) = super::request_id::parse_traceparent(traceparent)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(parent).ok()?,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

fn traceparent_of(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8() & 1
    )
}

/// One request's trace: its server span and the calls it makes.
pub struct RequestTrace {
    trace_id: String,
    span_id: String,
    calls: Arc<Calls>,
    /// The proxied call's span (the attempt under way).
    proxied: Option<Box<dyn CallSpan>>,
}

/// How the request ended, for its server span.
pub struct Finished<'a> {
    pub method: &'a str,
    /// The route's template (`/api/v1/instances/{id}`), when a route matched.
    pub route: Option<&'a str>,
    pub path: &'a str,
    /// The status answered (0: none was).
    pub status: u16,
    pub tenant: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub request_id: &'a str,
    /// The error's code (`validation_failed`, `upstream_timeout`, ...), when it failed.
    pub error: Option<&'a str>,
}

impl RequestTrace {
    /// The trace's id (32 hex digits): the access log's `trace.id`.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The server span's id (16 hex digits): the access log's `span.id`.
    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// For the calls the facade and the limits make on the request's behalf.
    pub fn calls(&self) -> Arc<dyn CallTracer> {
        self.calls.clone()
    }

    /// [`Self::calls`], borrowed.
    pub fn tracer(&self) -> &dyn CallTracer {
        &*self.calls
    }

    /// An attempt of the proxied call begins (the previous attempt, if any, ended as
    /// `previous` says: OrionVM's status or the failure).
    pub fn begin_proxied(
        &mut self,
        method: &str,
        path: &str,
        previous: (Option<u16>, Option<&str>),
    ) {
        self.end_proxied(previous.0, previous.1);
        self.proxied = Some(self.calls.begin(CallKind::Proxied, method, path));
    }

    /// The `traceparent` of the proxied call's attempt under way.
    pub fn proxied_traceparent(&self) -> Option<&str> {
        self.proxied.as_ref().map(|s| s.traceparent())
    }

    fn end_proxied(&mut self, status: Option<u16>, failure: Option<&str>) {
        if let Some(span) = self.proxied.take() {
            span.end(status, failure);
        }
    }

    /// Ends the proxied call (as `upstream` says) and the server span (as `done` says).
    pub fn finish(mut self, done: &Finished<'_>, upstream: (Option<u16>, Option<&str>)) {
        self.end_proxied(upstream.0, upstream.1);
        let span = self.calls.cx.span();
        if !span.is_recording() {
            span.end();
            return;
        }
        let name = match done.route {
            Some(route) => format!("{} {route}", done.method),
            None => done.method.to_string(),
        };
        span.update_name(name);
        let mut attrs = vec![
            KeyValue::new("http.request.method", done.method.to_string()),
            KeyValue::new("url.path", done.path.to_string()),
            KeyValue::new("orion.request_id", done.request_id.to_string()),
        ];
        if let Some(route) = done.route {
            attrs.push(KeyValue::new("http.route", route.to_string()));
        }
        if done.status > 0 {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(done.status),
            ));
        }
        if let Some(t) = done.tenant {
            attrs.push(KeyValue::new("orion.tenant", t.to_string()));
        }
        if let Some(p) = done.principal {
            attrs.push(KeyValue::new("orion.principal.id", p.to_string()));
        }
        let failed = done.status >= 500 || done.status == 0;
        let error_type = match (done.error, failed) {
            (Some(code), _) => Some(code.to_string()),
            (None, true) if done.status > 0 => Some(done.status.to_string()),
            (None, true) => Some("_OTHER".to_string()),
            (None, false) => None,
        };
        if let Some(e) = &error_type {
            attrs.push(KeyValue::new("error.type", e.clone()));
        }
        span.set_attributes(attrs);
        if failed {
            span.set_status(Status::error(error_type.unwrap_or_default()));
        }
        span.end();
    }
}

/// The request's server span as the parent of its calls (`crate::upstream::trace`).
#[derive(Debug)]
struct Calls {
    tracer: SdkTracer,
    cx: Context,
}

impl CallTracer for Calls {
    fn begin(&self, kind: CallKind, method: &str, target: &str) -> Box<dyn CallSpan> {
        let template = template_of(target);
        let mut span = self
            .tracer
            .span_builder(format!("{method} {template}"))
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &self.cx);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", target.to_string()),
                KeyValue::new("url.template", template),
                KeyValue::new(
                    "orion.call",
                    match kind {
                        CallKind::Proxied => "proxied",
                        CallKind::Own => "own",
                        CallKind::Token => "token",
                    },
                ),
            ]);
        }
        let traceparent = traceparent_of(span.span_context());
        Box::new(Call { span, traceparent })
    }
}

/// A call's path with its ids as `{id}` (a span's name stays of low cardinality).
fn template_of(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let id_like = seg.len() >= 8
            && seg.bytes().any(|b| b.is_ascii_digit())
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        out.push_str(if id_like { "{id}" } else { seg });
    }
    out
}

struct Call {
    span: opentelemetry_sdk::trace::Span,
    traceparent: String,
}

impl CallSpan for Call {
    fn traceparent(&self) -> &str {
        &self.traceparent
    }

    fn end(mut self: Box<Self>, status: Option<u16>, failure: Option<&str>) {
        if self.span.is_recording() {
            if let Some(s) = status {
                self.span
                    .set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            let error = match (failure, status) {
                (Some(f), _) => Some(f.to_string()),
                (None, Some(s)) if s >= 400 => Some(s.to_string()),
                _ => None,
            };
            if let Some(e) = error {
                self.span
                    .set_attribute(KeyValue::new("error.type", e.clone()));
                self.span.set_status(Status::error(e));
            }
        }
        self.span.end();
    }
}

/// Rate-limits the log lines about dropped spans.
#[derive(Debug, Default)]
struct Warner {
    last: AtomicU64,
}

impl Warner {
    fn warn(&self, what: &dyn Fn() -> String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        if (last == 0 || now >= last + WARN_EVERY_SECS)
            && self
                .last
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "{} (told at most once a minute; see orion_proxy_trace_spans_total)",
                what()
            );
        }
    }
}

enum Msg {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

/// The span processor: hands each finished, sampled span to the shipping thread, never
/// waiting; a full queue drops it.
#[derive(Debug)]
struct Shipper {
    tx: SyncSender<Msg>,
    warn: Arc<Warner>,
    stop: Arc<AtomicBool>,
    /// How long a flush waits for the export thread at most.
    flush_wait: Duration,
}

impl SpanProcessor for Shipper {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                crate::metrics::trace_spans(false, 1);
                self.warn.warn(&|| {
                    format!("trace spans dropped: the export queue ({QUEUE} spans) is full")
                });
            }
            Err(TrySendError::Disconnected(_)) => crate::metrics::trace_spans(false, 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.tx.try_send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(self.flush_wait);
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.stop.store(true, Ordering::Release);
        Ok(())
    }
}

/// The shipping thread: batches of up to [`MAX_BATCH`] spans, sent at least every
/// [`BATCH_DELAY`]; ends when told to stop (after sending what it holds) or when the
/// processor is gone.
fn ship(
    rx: Receiver<Msg>,
    exporter: opentelemetry_otlp::SpanExporter,
    endpoint: &str,
    warn: &Warner,
    stop: &AtomicBool,
) {
    let send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match futures_executor::block_on(exporter.export(std::mem::take(batch))) {
            Ok(()) => crate::metrics::trace_spans(true, n),
            Err(e) => {
                crate::metrics::trace_spans(false, n);
                warn.warn(&|| format!("exporting {n} trace spans to {endpoint} failed: {e}"));
            }
        }
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut due = Instant::now() + BATCH_DELAY;
    loop {
        let wait = due.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(span)) => {
                batch.push(*span);
                if batch.len() < MAX_BATCH && Instant::now() < due {
                    continue;
                }
            }
            Ok(Msg::Flush(ack)) => {
                send(&mut batch);
                let _ = ack.send(());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                break;
            }
        }
        send(&mut batch);
        due = Instant::now() + BATCH_DELAY;
        if stop.load(Ordering::Acquire) {
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Span(span) = msg {
                    batch.push(*span);
                }
                if batch.len() >= MAX_BATCH {
                    send(&mut batch);
                }
            }
            send(&mut batch);
            break;
        }
    }
}

/// The pipeline in force, kept by `ObserveState` across reloads.
pub type Slot = parking_lot::Mutex<Option<Arc<Pipeline>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> TracingConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_when_it_has_none() {
        assert_eq!(
            endpoint_of("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            endpoint_of("https://otel.example/custom/traces").unwrap(),
            "https://otel.example/custom/traces"
        );
        assert!(endpoint_of("ftp://x").is_err());
        assert!(endpoint_of("http://user:pw@x:4318").is_err());
        assert!(endpoint_of("not a url").is_err());
    }

    #[test]
    fn errors_name_their_key_and_never_a_value() {
        let errs = Plan::build(&config(
            "otlp: {endpoint: 'gopher://x', timeout_ms: 0, headers: {'bad name': x, ok: \"hunter2\\n\", s: {env: ORION_TRACE_TEST_UNSET}}}\nsampling_ratio: 1.5\nservice_name: ' '\n",
        ))
        .unwrap_err()
        .join("\n");
        for key in [
            "tracing.otlp.endpoint",
            "tracing.otlp.timeout_ms",
            "tracing.otlp.headers.bad name",
            "tracing.otlp.headers.ok: the value is not a valid header value",
            "tracing.otlp.headers.s: environment variable ORION_TRACE_TEST_UNSET",
            "tracing.sampling_ratio",
            "tracing.service_name",
        ] {
            assert!(errs.contains(key), "{key}: {errs}");
        }
        assert!(!errs.contains("hunter2"), "{errs}");
        let plan = Plan::build(&config("otlp: {endpoint: 'http://127.0.0.1:4318'}\n")).unwrap();
        assert_eq!(plan.ratio, 1.0);
        assert_eq!(plan.service_name, "orion-proxy");
        assert_eq!(plan.timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_commit_keeps_the_pipeline_of_an_unchanged_plan() {
        let state = ObserveState::default();
        let cfg = |endpoint: &str| config(&format!("otlp: {{endpoint: '{endpoint}'}}\n"));
        let commit = |cfg: Option<&TracingConfig>| {
            let mut t = Traces::build(cfg).unwrap();
            assert!(!t.enabled(), "staged only");
            t.commit(&state);
            t
        };
        let a = commit(Some(&cfg("http://127.0.0.1:9")));
        let same = commit(Some(&cfg("http://127.0.0.1:9")));
        let (pa, psame) = (a.live.clone().unwrap(), same.live.clone().unwrap());
        assert!(Arc::ptr_eq(&pa, &psame));
        let other = commit(Some(&cfg("http://127.0.0.1:10")));
        assert!(!Arc::ptr_eq(&pa, other.live.as_ref().unwrap()));
        let off = commit(None);
        assert!(!off.enabled() && state.tracing.lock().is_none());
        let unsampled = commit(Some(&config(
            "otlp: {endpoint: 'http://127.0.0.1:9'}\nsampling_ratio: 0.0\n",
        )));
        let t = unsampled.start_request(&http::Method::GET, None).unwrap();
        assert_eq!(t.trace_id().len(), 32);
        assert_eq!(t.span_id().len(), 16);
        let call = t.tracer().begin(CallKind::Own, "GET", "/api/v1/regions");
        assert!(
            call.traceparent().ends_with("-00"),
            "{}",
            call.traceparent()
        );
        assert!(call.traceparent().contains(t.trace_id()));
        // A trusted caller's sampled flag wins over the ratio.
        let t = unsampled
            .start_request(
                &http::Method::GET,
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            )
            .unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let call = t.tracer().begin(CallKind::Own, "GET", "/api/v1/regions");
        assert!(call.traceparent().ends_with("-01"));
        assert!(
            Traces::default()
                .start_request(&http::Method::GET, None)
                .is_none()
        );
    }

    #[test]
    fn templates_hide_ids() {
        assert_eq!(
            template_of("/api/v1/instances/0b8e2f6c-54f3-4b6a-9a53-5b1f0a7f3c11/start"),
            "/api/v1/instances/{id}/start"
        );
        assert_eq!(template_of("/oauth/token"), "/oauth/token");
        assert_eq!(
            template_of("/api/v1/performance_tiers/instances"),
            "/api/v1/performance_tiers/instances"
        );
    }

    #[test]
    fn an_inbound_traceparent_is_the_remote_parent() {
        let sc = remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            traceparent_of(&sc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let unsampled =
            remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        assert!(remote_parent("00-xyz-00f067aa0ba902b7-01").is_none());
    }
}
