//! Prometheus metrics (the `prometheus` 0.14 default registry, served by pingora-prometheus on
//! the metrics listener). Label sets are bounded: route names, methods, status classes and
//! tenants from the config, never raw paths or ids.
//!
//! Recording functions for the other concerns: [`rate_limited`] (limits), [`breaker_transition`]
//! (breaker), [`coalesced`] and [`cache_lookup`] (coalescing and cache), [`auth_failure`]
//! (identity), [`upstream_error`], [`token_refreshed`] / [`token_refresh_failed`] (upstream).

use once_cell::sync::Lazy;
use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    register_gauge, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec,
};
use std::sync::{Arc, OnceLock};

/// Latency buckets: half a millisecond up to a minute (the read timeout toward OrionVM is 30 s
/// by default, and a facade composite may take longer).
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0, 60.0,
];

/// The policy name under which OrionVM's own 429 answers are counted by [`rate_limited`].
pub const UPSTREAM_POLICY: &str = "orionvm";

static UPSTREAM_REFUSED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_upstream_refused_total",
        "Calls refused before reaching OrionVM (busy: budget exhausted, open: circuit open)",
        &["reason"]
    )
    .ok()
});

/// A call refused before reaching OrionVM: `busy` or `open`.
pub fn upstream_refused(reason: &str) {
    if let Some(c) = UPSTREAM_REFUSED.as_ref() {
        c.with_label_values(&[reason]).inc();
    }
}

static RATE_LIMITED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_rate_limited_total",
        "Requests refused with 429, by rate-limit policy ('orionvm': OrionVM's own refusals)",
        &["policy"]
    )
    .ok()
});

static BREAKER_TRANSITIONS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_breaker_transitions_total",
        "Circuit breaker state changes per endpoint (the breaker of an OrionVM URL, shared by the accounts that use it), by the state entered",
        &["endpoint", "to"]
    )
    .ok()
});

static COALESCED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_coalesced_requests_total",
        "Requests answered from another identical request's upstream call, by route",
        &["route"]
    )
    .ok()
});

static CACHE: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_cache_requests_total",
        "Cache lookups by route and result (hit, miss, stale)",
        &["route", "result"]
    )
    .ok()
});

static IDEMPOTENCY: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_idempotency_requests_total",
        "Requests with an Idempotency-Key by route and result (first, replayed, recovered, retried, mismatch, in_flight, unresolved, error; stored, unknown, released when the first ends)",
        &["route", "result"]
    )
    .ok()
});

/// A request with an `Idempotency-Key`: how its key was handled.
pub fn idempotency(route: &str, result: &'static str) {
    if let Some(c) = IDEMPOTENCY.as_ref() {
        c.with_label_values(&[route, result]).inc();
    }
}

static AUDIT_RECORDS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_audit_records_total",
        "Audit records by write result (ok, error)",
        &["result"]
    )
    .ok()
});

static AUDIT_WRITABLE: Lazy<Option<IntGauge>> = Lazy::new(|| {
    register_int_gauge!(
        "orion_proxy_audit_writable",
        "1 while the audit trail takes records, 0 while it cannot be written"
    )
    .ok()
});

static AUDIT_SYNCS: Lazy<Option<IntCounter>> = Lazy::new(|| {
    register_int_counter!(
        "orion_proxy_audit_fsyncs_total",
        "Flushes of the audit file to the disk (logging.audit.durability: fsync; one per batch of records)"
    )
    .ok()
});

static LOG_DROPPED: Lazy<Option<IntCounter>> = Lazy::new(|| {
    register_int_counter!(
        "orion_proxy_access_log_dropped_total",
        "Access-log lines dropped because the writer fell behind"
    )
    .ok()
});

static TRACE_SPANS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_trace_spans_total",
        "Trace spans handed to the OTLP exporter (`exported`) or dropped: the queue was full or \
         the collector did not take them (`dropped`)",
        &["result"]
    )
    .ok()
});

static REQUESTS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_requests_total",
        "Requests answered, by route, method, status class, exact status code and tenant",
        &["route", "method", "status_class", "code", "tenant"]
    )
    .ok()
});

static LATENCY: Lazy<Option<HistogramVec>> = Lazy::new(|| {
    register_histogram_vec!(
        "orion_proxy_request_duration_seconds",
        "Time from request start to the last byte of the response",
        &["route"],
        BUCKETS.to_vec()
    )
    .ok()
});

static UPSTREAM_LATENCY: Lazy<Option<HistogramVec>> = Lazy::new(|| {
    register_histogram_vec!(
        "orion_proxy_upstream_duration_seconds",
        "Time OrionVM took to answer, per route",
        &["route"],
        BUCKETS.to_vec()
    )
    .ok()
});

static UPSTREAM_ERRORS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_upstream_errors_total",
        "Failed calls to OrionVM by kind (connect, timeout, reset, 5xx)",
        &["kind"]
    )
    .ok()
});

static AUTH_FAILURES: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_auth_failures_total",
        "Refused authentications and authorizations by reason",
        &["reason"]
    )
    .ok()
});

static TOKEN_REFRESHES: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_upstream_token_refreshes_total",
        "Tokens fetched from OrionVM's token endpoint",
        &["result"]
    )
    .ok()
});

static RELOADS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_config_reloads_total",
        "Config reloads by result",
        &["result"]
    )
    .ok()
});

static CONFIG_INFO: Lazy<Option<IntGaugeVec>> = Lazy::new(|| {
    register_int_gauge_vec!(
        "orion_proxy_config_info",
        "The loaded config's version (value 1)",
        &["version"]
    )
    .ok()
});

static IN_FLIGHT: Lazy<Option<IntGauge>> = Lazy::new(|| {
    register_int_gauge!("orion_proxy_requests_in_flight", "Requests being served").ok()
});

static BUILD_INFO: Lazy<Option<IntGaugeVec>> = Lazy::new(|| {
    register_int_gauge_vec!(
        "orion_proxy_build_info",
        "Build information (value 1)",
        &["version"]
    )
    .ok()
});

static UPSTREAM_CALLS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_upstream_requests_total",
        "Calls to OrionVM (proxied and the proxy's own: facade, cached reads) by account, endpoint and result (status class, or connect, timeout, reset); errors are the 5xx, connect, timeout and reset results",
        &["account", "endpoint", "result"]
    )
    .ok()
});

static UPSTREAM_CALL_LATENCY: Lazy<Option<HistogramVec>> = Lazy::new(|| {
    register_histogram_vec!(
        "orion_proxy_upstream_request_duration_seconds",
        "Time OrionVM took to answer one call, by account and endpoint (proxied and the proxy's own calls)",
        &["account", "endpoint"],
        BUCKETS.to_vec()
    )
    .ok()
});

static REQUEST_BYTES: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_request_bytes_total",
        "Request body bytes received from callers, by tenant",
        &["tenant"]
    )
    .ok()
});

static RESPONSE_BYTES: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_response_bytes_total",
        "Response body bytes sent to callers, by tenant",
        &["tenant"]
    )
    .ok()
});

static LAST_RELOAD_OK: Lazy<Option<IntGauge>> = Lazy::new(|| {
    register_int_gauge!(
        "orion_proxy_config_last_reload_successful",
        "Whether the last config load or reload succeeded (1) or was refused (0)"
    )
    .ok()
});

static LAST_RELOAD_SUCCESS: Lazy<Option<Gauge>> = Lazy::new(|| {
    register_gauge!(
        "orion_proxy_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config load or reload"
    )
    .ok()
});

static TENANT_INFO: Lazy<Option<IntGaugeVec>> = Lazy::new(|| {
    register_int_gauge_vec!(
        "orion_proxy_tenant_info",
        "The OrionVM account each configured tenant's calls go out under (value 1); join account-level series on it to select by tenant",
        &["tenant", "account"]
    )
    .ok()
});

/// The exact status codes as label values, made once (no formatting per request).
static CODES: Lazy<Vec<String>> = Lazy::new(|| (0..600).map(|c| c.to_string()).collect());

/// The exact status code as a bounded label: 100 to 599, anything else (0: no answer) `none`.
pub fn code_label(status: u16) -> &'static str {
    match status {
        100..=599 => CODES
            .get(usize::from(status))
            .map_or("none", String::as_str),
        _ => "none",
    }
}

/// Results of [`UpstreamSeries::observe`], in the order of its counters.
const UPSTREAM_RESULTS: [&str; 8] = [
    "1xx", "2xx", "3xx", "4xx", "5xx", "connect", "timeout", "reset",
];

/// How one call to OrionVM ended, for [`UpstreamSeries::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    Status(u16),
    Connect,
    Timeout,
    Reset,
}

/// The series of one account's endpoint: call counts by result and the latency histogram,
/// resolved once on the first call (no label lookup per call after that, nothing registered
/// for a config that never served a call).
pub struct UpstreamSeries {
    account: Arc<str>,
    endpoint: Arc<str>,
    handles: OnceLock<Option<UpstreamHandles>>,
}

struct UpstreamHandles {
    results: Vec<IntCounter>,
    latency: Histogram,
}

impl UpstreamSeries {
    pub fn new(account: &str, endpoint: &str) -> UpstreamSeries {
        UpstreamSeries {
            account: account.into(),
            endpoint: endpoint.into(),
            handles: OnceLock::new(),
        }
    }

    fn handles(&self) -> Option<&UpstreamHandles> {
        self.handles
            .get_or_init(|| {
                let calls = UPSTREAM_CALLS.as_ref()?;
                let latency = UPSTREAM_CALL_LATENCY.as_ref()?;
                let labels = [&*self.account, &*self.endpoint];
                Some(UpstreamHandles {
                    results: UPSTREAM_RESULTS
                        .iter()
                        .map(|r| calls.with_label_values(&[labels[0], labels[1], r]))
                        .collect(),
                    latency: latency.with_label_values(&labels),
                })
            })
            .as_ref()
    }

    /// One call ended: counted by result, its latency observed when OrionVM answered.
    pub fn observe(&self, result: UpstreamResult, seconds: Option<f64>) {
        let Some(h) = self.handles() else { return };
        let i = match result {
            UpstreamResult::Status(s) => usize::from((s / 100).clamp(1, 5)) - 1,
            UpstreamResult::Connect => 5,
            UpstreamResult::Timeout => 6,
            UpstreamResult::Reset => 7,
        };
        if let Some(c) = h.results.get(i) {
            c.inc();
        }
        if let Some(s) = seconds {
            h.latency.observe(s);
        }
    }
}

/// The tenants of the config in force and their accounts (`orion_proxy_tenant_info`).
pub fn set_tenants<'a>(tenants: impl Iterator<Item = (&'a str, &'a str)>) {
    if let Some(g) = TENANT_INFO.as_ref() {
        g.reset();
        for (tenant, account) in tenants {
            g.with_label_values(&[tenant, account]).set(1);
        }
    }
}

/// A listener's certificate (`proxy`: `server.tls`, `admin`: `server.admin_tls`) expires at
/// `not_after` (Unix seconds): `orion_proxy_tls_certificate_expiration_timestamp_seconds{listener}`,
/// set when a certificate is put in force (a reload that renewed it sets it again). A timestamp
/// in seconds, as Prometheus' naming rules ask (`promtool check metrics` refuses a days unit) and
/// as cert-manager and the blackbox exporter report it: the days left are
/// `(... - time()) / 86400`, which the alert and the dashboard compute.
pub fn register_certificate_expiry(listener: &'static str, not_after: i64) {
    static NOT_AFTER: Lazy<Option<prometheus::GaugeVec>> = Lazy::new(|| {
        prometheus::register_gauge_vec!(
            "orion_proxy_tls_certificate_expiration_timestamp_seconds",
            "When a listener's TLS certificate expires (its notAfter), in Unix seconds",
            &["listener"]
        )
        .ok()
    });
    if let Some(g) = NOT_AFTER.as_ref() {
        g.with_label_values(&[listener]).set(not_after as f64);
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn init(config_version: &str) {
    // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...
    #[cfg(target_os = "linux")]
    {
        let _ = prometheus::register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    if let Some(g) = LAST_RELOAD_OK.as_ref() {
        g.set(1);
    }
    if let Some(g) = LAST_RELOAD_SUCCESS.as_ref() {
        g.set(unix_now());
    }
    Lazy::force(&UPSTREAM_CALLS);
    Lazy::force(&UPSTREAM_CALL_LATENCY);
    Lazy::force(&REQUEST_BYTES);
    Lazy::force(&RESPONSE_BYTES);
    if let Some(b) = BUILD_INFO.as_ref() {
        b.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    }
    set_config_version(config_version);
    Lazy::force(&REQUESTS);
    Lazy::force(&LATENCY);
    Lazy::force(&UPSTREAM_LATENCY);
    Lazy::force(&UPSTREAM_ERRORS);
    Lazy::force(&AUTH_FAILURES);
    Lazy::force(&TOKEN_REFRESHES);
    Lazy::force(&RELOADS);
    Lazy::force(&IN_FLIGHT);
    Lazy::force(&BREAKER_TRANSITIONS);
    Lazy::force(&COALESCED);
    Lazy::force(&CACHE);
    Lazy::force(&IDEMPOTENCY);
    Lazy::force(&LOG_DROPPED);
    Lazy::force(&TRACE_SPANS);
    Lazy::force(&AUDIT_SYNCS);
    // Known label values start at zero, so that rate() and alerts see them before the first event.
    for r in ["exported", "dropped"] {
        if let Some(c) = TRACE_SPANS.as_ref() {
            c.with_label_values(&[r]);
        }
    }
    for r in ["ok", "error"] {
        if let Some(c) = RELOADS.as_ref() {
            c.with_label_values(&[r]);
        }
        if let Some(c) = TOKEN_REFRESHES.as_ref() {
            c.with_label_values(&[r]);
        }
        if let Some(c) = AUDIT_RECORDS.as_ref() {
            c.with_label_values(&[r]);
        }
    }
    for k in ["connect", "timeout", "reset", "5xx", "auth"] {
        if let Some(c) = UPSTREAM_ERRORS.as_ref() {
            c.with_label_values(&[k]);
        }
    }
    if let Some(c) = RATE_LIMITED.as_ref() {
        c.with_label_values(&[UPSTREAM_POLICY]);
    }
    Lazy::force(&CONNECTIONS_OPEN);
    for r in ["header_timeout", "closed", "read_error", "invalid_header"] {
        if let Some(c) = CONNECTIONS_ABORTED.as_ref() {
            c.with_label_values(&[r]);
        }
    }
    for r in ["total", "per_ip"] {
        if let Some(c) = CONNECTIONS_REFUSED.as_ref() {
            c.with_label_values(&[r]);
        }
    }
}

/// Declares the series of configured endpoints (breaker closed until the breaker says
/// otherwise) and GET routes (coalesced and cached answers) at zero.
pub fn declare_series<'a>(
    endpoints: impl Iterator<Item = &'a str>,
    get_routes: impl Iterator<Item = &'a str>,
) {
    for e in endpoints {
        if let Some(c) = BREAKER_TRANSITIONS.as_ref() {
            for to in ["open", "half_open", "closed"] {
                c.with_label_values(&[e, to]);
            }
        }
    }
    for r in get_routes {
        if let Some(c) = COALESCED.as_ref() {
            c.with_label_values(&[r]);
        }
        if let Some(c) = CACHE.as_ref() {
            for result in ["hit", "miss"] {
                c.with_label_values(&[r, result]);
            }
        }
    }
}

/// One configured endpoint of one account at scrape time.
pub struct EndpointReport {
    pub account: String,
    pub endpoint: String,
    /// Answered its last health probe.
    pub up: bool,
    /// Its breaker: 0 closed, 1 half-open, 2 open ([`breaker_state_value`]).
    pub breaker: i64,
}

/// Endpoint health and breakers at scrape time, for every configured endpoint of every account.
pub type HealthSource = Box<dyn Fn() -> Vec<EndpointReport> + Send + Sync>;

/// Starts reporting endpoint health (`orion_proxy_upstream_up`) and breaker state
/// (`orion_proxy_breaker_state`), both by account and endpoint, read from `source` at every
/// scrape. Two accounts on one OrionVM host have their own series (the breaker of a URL is
/// shared by the accounts that use it; each reports it under its own name).
pub fn register_endpoint_health(source: HealthSource) {
    if let Ok(c) = EndpointHealth::new(source) {
        let _ = prometheus::register(Box::new(c));
    }
}

/// A collector that reads endpoint health and breakers at scrape time.
struct EndpointHealth {
    source: HealthSource,
    descs: Vec<prometheus::core::Desc>,
}

impl EndpointHealth {
    const UP: (&'static str, &'static str) = (
        "orion_proxy_upstream_up",
        "Whether an OrionVM endpoint answered its last health probe (1) or not (0), by account and endpoint",
    );
    const BREAKER: (&'static str, &'static str) = (
        "orion_proxy_breaker_state",
        "Circuit breaker state by account and endpoint: 0 closed, 1 half-open, 2 open",
    );

    fn new(source: HealthSource) -> prometheus::Result<Self> {
        let desc = |(name, help): (&str, &str)| {
            prometheus::core::Desc::new(
                name.into(),
                help.into(),
                vec!["account".into(), "endpoint".into()],
                Default::default(),
            )
        };
        Ok(EndpointHealth {
            source,
            descs: vec![desc(Self::UP)?, desc(Self::BREAKER)?],
        })
    }
}

impl prometheus::core::Collector for EndpointHealth {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let gauge = |(name, help): (&str, &str)| {
            IntGaugeVec::new(prometheus::Opts::new(name, help), &["account", "endpoint"])
        };
        let (Ok(up), Ok(breaker)) = (gauge(Self::UP), gauge(Self::BREAKER)) else {
            return Vec::new();
        };
        for r in (self.source)() {
            let labels = [r.account.as_str(), r.endpoint.as_str()];
            up.with_label_values(&labels).set(i64::from(r.up));
            breaker.with_label_values(&labels).set(r.breaker);
        }
        let mut out = prometheus::core::Collector::collect(&up);
        out.extend(prometheus::core::Collector::collect(&breaker));
        out
    }
}

/// A request refused by a rate-limit policy (a config name, bounded).
pub fn rate_limited(policy: &str) {
    if let Some(c) = RATE_LIMITED.as_ref() {
        c.with_label_values(&[policy]).inc();
    }
}

/// Breaker state values of `orion_proxy_breaker_state`.
pub fn breaker_state_value(state: &str) -> i64 {
    match state {
        "open" => 2,
        "half_open" => 1,
        _ => 0,
    }
}

/// A breaker of `endpoint` (the endpoint's name) entered `to`: `closed`, `half_open` or `open`.
pub fn breaker_transition(endpoint: &str, to: &str) {
    let to = match to {
        "open" | "half_open" => to,
        _ => "closed",
    };
    if let Some(c) = BREAKER_TRANSITIONS.as_ref() {
        c.with_label_values(&[endpoint, to]).inc();
    }
}

/// A request answered by sharing another identical request's upstream call.
pub fn coalesced(route: &str) {
    if let Some(c) = COALESCED.as_ref() {
        c.with_label_values(&[route]).inc();
    }
}

/// A cache lookup: `result` is `hit`, `miss` or `stale`.
pub fn cache_lookup(route: &str, result: &str) {
    let result = match result {
        "hit" | "stale" => result,
        _ => "miss",
    };
    if let Some(c) = CACHE.as_ref() {
        c.with_label_values(&[route, result]).inc();
    }
}

pub fn audit_written(ok: bool) {
    if let Some(c) = AUDIT_RECORDS.as_ref() {
        c.with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }
}

/// The audit writer found the trail writable (or not).
pub fn audit_writable(ok: bool) {
    if let Some(g) = AUDIT_WRITABLE.as_ref() {
        g.set(i64::from(ok));
    }
}

pub fn audit_synced() {
    if let Some(c) = AUDIT_SYNCS.as_ref() {
        c.inc();
    }
}

pub fn log_line_dropped() {
    if let Some(c) = LOG_DROPPED.as_ref() {
        c.inc();
    }
}

/// HTTP methods as a bounded label: anything unusual is `OTHER`.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

fn set_config_version(version: &str) {
    if let Some(g) = CONFIG_INFO.as_ref() {
        g.reset();
        g.with_label_values(&[version]).set(1);
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// The request and response body bytes of one request.
pub fn bytes(tenant: &str, request: usize, response: usize) {
    if let (Some(c), true) = (REQUEST_BYTES.as_ref(), request > 0) {
        c.with_label_values(&[tenant]).inc_by(request as u64);
    }
    if let (Some(c), true) = (RESPONSE_BYTES.as_ref(), response > 0) {
        c.with_label_values(&[tenant]).inc_by(response as u64);
    }
}

/// A route's latency series, resolved at the first request that records one (not when a
/// config is staged: a reload that is not committed leaves no series behind) and kept with the
/// route, so that a request does not look them up by label.
#[derive(Default)]
pub struct RouteSeries {
    latency: OnceLock<Option<Histogram>>,
    upstream: OnceLock<Option<Histogram>>,
}

impl std::fmt::Debug for RouteSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteSeries")
    }
}

/// Observes `value` in `vec`'s series of `route`, through the route's `cell` when it has one.
fn observe_route(
    cell: Option<&OnceLock<Option<Histogram>>>,
    vec: &Lazy<Option<HistogramVec>>,
    route: &str,
    value: f64,
) {
    match cell {
        Some(cell) => {
            let resolved = cell.get_or_init(|| vec.as_ref().map(|h| h.with_label_values(&[route])));
            if let Some(h) = resolved {
                h.observe(value);
            }
        }
        None => {
            if let Some(h) = vec.as_ref() {
                h.with_label_values(&[route]).observe(value);
            }
        }
    }
}

/// A finished request: counted, and its latencies observed in `series` (the route's, `None`
/// for a request that matched no route).
pub fn request_done(
    route: &str,
    series: Option<&RouteSeries>,
    method: &str,
    status: u16,
    tenant: &str,
    seconds: f64,
    upstream_seconds: Option<f64>,
) {
    if let Some(c) = REQUESTS.as_ref() {
        c.with_label_values(&[
            route,
            method_label(method),
            status_class(status),
            code_label(status),
            tenant,
        ])
        .inc();
    }
    observe_route(series.map(|s| &s.latency), &LATENCY, route, seconds);
    if let Some(s) = upstream_seconds {
        observe_route(series.map(|s| &s.upstream), &UPSTREAM_LATENCY, route, s);
    }
}

pub fn upstream_error(kind: &str) {
    if let Some(c) = UPSTREAM_ERRORS.as_ref() {
        c.with_label_values(&[kind]).inc();
    }
}

pub fn auth_failure(reason: &str) {
    if let Some(c) = AUTH_FAILURES.as_ref() {
        c.with_label_values(&[reason]).inc();
    }
}

pub fn token_refreshed() {
    if let Some(c) = TOKEN_REFRESHES.as_ref() {
        c.with_label_values(&["ok"]).inc();
    }
}

/// A token fetch from OrionVM failed.
/// Trace spans the collector took (`exported`) or that were dropped (queue full, export failed).
pub fn trace_spans(exported: bool, n: u64) {
    if let Some(c) = TRACE_SPANS.as_ref() {
        c.with_label_values(&[if exported { "exported" } else { "dropped" }])
            .inc_by(n);
    }
}

pub fn token_refresh_failed() {
    if let Some(c) = TOKEN_REFRESHES.as_ref() {
        c.with_label_values(&["error"]).inc();
    }
}

pub fn config_reloaded(ok: bool, version: &str) {
    if let Some(c) = RELOADS.as_ref() {
        c.with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }
    if let Some(g) = LAST_RELOAD_OK.as_ref() {
        g.set(i64::from(ok));
    }
    if ok && let Some(g) = LAST_RELOAD_SUCCESS.as_ref() {
        g.set(unix_now());
    }
    if ok {
        set_config_version(version);
    }
}

pub fn in_flight(delta: i64) {
    if let Some(g) = IN_FLIGHT.as_ref() {
        g.add(delta);
    }
}

static STATE_ERRORS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_state_errors_total",
        "Failed commands to the shared state backend (Redis), by operation: counters, kv, tasks, usage, ping",
        &["op"]
    )
    .ok()
});

static STATE_UP: Lazy<Option<IntGauge>> = Lazy::new(|| {
    register_int_gauge!(
        "orion_proxy_state_up",
        "Whether the shared state backend (Redis) answered its last command (1) or not (0); always 1 with the memory backend"
    )
    .ok()
});

/// A failed command to the shared state backend.
pub fn state_error(op: &'static str) {
    if let Some(c) = STATE_ERRORS.as_ref() {
        c.with_label_values(&[op]).inc();
    }
}

/// The shared state backend became reachable (`true`) or unreachable.
pub fn state_up(up: bool) {
    if let Some(g) = STATE_UP.as_ref() {
        g.set(i64::from(up));
    }
}

/// Declares the state series (0 errors, up) so that they exist before the first failure.
pub fn declare_state(ops: &[&str]) {
    if let Some(c) = STATE_ERRORS.as_ref() {
        for op in ops {
            c.with_label_values(&[op]);
        }
    }
    state_up(true);
}

static CONNECTIONS_OPEN: Lazy<Option<IntGaugeVec>> = Lazy::new(|| {
    register_int_gauge_vec!(
        "orion_proxy_connections_open",
        "Client connections open, by listener (proxy, admin, metrics)",
        &["listener"]
    )
    .ok()
});

static CONNECTIONS_ACCEPTED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_connections_accepted_total",
        "Client connections accepted, by listener (counted at accept, before the TLS handshake \
         and the connection caps)",
        &["listener"]
    )
    .ok()
});

static TLS_HANDSHAKES: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_tls_handshakes_total",
        "TLS handshakes with clients, by listener and result (success, failure, timeout)",
        &["listener", "result"]
    )
    .ok()
});

/// One open connection of a listener (`ListenerSeries::open`).
pub struct OpenConnection<'a>(&'a ListenerSeries);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        if let Some(g) = &self.0.open {
            g.dec();
        }
    }
}

/// The connection series of one listener, resolved once (when the listener is built) so that
/// counting a connection looks no label up; creating them also declares them at 0.
pub struct ListenerSeries {
    pub name: &'static str,
    open: Option<IntGauge>,
    accepted: Option<IntCounter>,
    /// `[success, failure, timeout]`, on a TLS listener only.
    tls: Option<[IntCounter; 3]>,
}

impl ListenerSeries {
    /// The series of the listener `name`; `tls`: it has TLS handshakes to count.
    pub fn new(name: &'static str, tls: bool) -> ListenerSeries {
        let tls = if tls {
            TLS_HANDSHAKES
                .as_ref()
                .map(|c| ["success", "failure", "timeout"].map(|r| c.with_label_values(&[name, r])))
        } else {
            None
        };
        ListenerSeries {
            name,
            open: CONNECTIONS_OPEN
                .as_ref()
                .map(|g| g.with_label_values(&[name])),
            accepted: CONNECTIONS_ACCEPTED
                .as_ref()
                .map(|c| c.with_label_values(&[name])),
            tls,
        }
    }

    /// A connection was accepted.
    pub fn accepted(&self) {
        if let Some(c) = &self.accepted {
            c.inc();
        }
    }

    /// A connection is served until the guard is dropped (also when the serving future is
    /// dropped, at shutdown).
    pub fn open(&self) -> OpenConnection<'_> {
        if let Some(g) = &self.open {
            g.inc();
        }
        OpenConnection(self)
    }

    /// A TLS handshake ended: `Some(true)` succeeded, `Some(false)` failed, `None` timed out.
    pub fn handshake(&self, ok: Option<bool>) {
        if let Some(t) = &self.tls {
            t[match ok {
                Some(true) => 0,
                Some(false) => 1,
                None => 2,
            }]
            .inc();
        }
    }
}

static CONNECTIONS_REFUSED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_connections_refused_total",
        "Client connections closed at accept time, by cap (total: server.max_connections, \
         per_ip: server.max_connections_per_ip)",
        &["cap"]
    )
    .ok()
});

static CONNECTIONS_ABORTED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_connections_aborted_total",
        "Client connections that ended before a request header was read, by reason \
         (header_timeout, closed, read_error, invalid_header)",
        &["reason"]
    )
    .ok()
});

/// A client connection closed at accept time by the cap `cap` (`total` or `per_ip`).
pub fn connection_refused(cap: &'static str) {
    if let Some(c) = CONNECTIONS_REFUSED.as_ref() {
        c.with_label_values(&[cap]).inc();
    }
}

/// A client connection that ended before its request header was read.
pub fn connection_aborted(reason: &'static str) {
    if let Some(c) = CONNECTIONS_ABORTED.as_ref() {
        c.with_label_values(&[reason]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_codes_are_bounded_labels() {
        assert_eq!(code_label(200), "200");
        assert_eq!(code_label(599), "599");
        assert_eq!(code_label(0), "none");
        assert_eq!(code_label(600), "none");
    }

    #[test]
    fn certificate_expiry_is_the_not_after_time() {
        register_certificate_expiry("proxy", 1_900_000_000);
        register_certificate_expiry("admin", 1_910_000_000);
        let at = |listener: &str| {
            prometheus::gather()
                .into_iter()
                .find(|f| f.name() == "orion_proxy_tls_certificate_expiration_timestamp_seconds")
                .and_then(|f| {
                    f.get_metric()
                        .iter()
                        .find(|m| m.get_label().iter().any(|l| l.value() == listener))
                        .map(|m| m.get_gauge().value())
                })
        };
        assert_eq!(at("proxy"), Some(1_900_000_000.0));
        assert_eq!(at("admin"), Some(1_910_000_000.0));
        // A renewed certificate moves it.
        register_certificate_expiry("proxy", 1_950_000_000);
        assert_eq!(at("proxy"), Some(1_950_000_000.0));
    }
}
