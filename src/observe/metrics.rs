//! Prometheus metrics (the `prometheus` 0.14 default registry, served by pingora-prometheus on
//! the metrics listener). Label sets are bounded: route names, methods, status classes and
//! tenants from the config, never raw paths or ids.

use once_cell::sync::Lazy;
use prometheus::{
    HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, register_histogram_vec,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};

static REQUESTS: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_requests_total",
        "Requests answered, by route, method, status class and tenant",
        &["route", "method", "status_class", "tenant"]
    )
    .ok()
});

static LATENCY: Lazy<Option<HistogramVec>> = Lazy::new(|| {
    register_histogram_vec!(
        "orion_proxy_request_duration_seconds",
        "Time from request start to the last byte of the response",
        &["route"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .ok()
});

static UPSTREAM_LATENCY: Lazy<Option<HistogramVec>> = Lazy::new(|| {
    register_histogram_vec!(
        "orion_proxy_upstream_duration_seconds",
        "Time OrionVM took to answer, per route",
        &["route"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
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

pub fn init(config_version: &str) {
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

pub fn request_done(
    route: &str,
    method: &str,
    status: u16,
    tenant: &str,
    seconds: f64,
    upstream_seconds: Option<f64>,
) {
    if let Some(c) = REQUESTS.as_ref() {
        c.with_label_values(&[route, method, status_class(status), tenant])
            .inc();
    }
    if let Some(h) = LATENCY.as_ref() {
        h.with_label_values(&[route]).observe(seconds);
    }
    if let (Some(h), Some(s)) = (UPSTREAM_LATENCY.as_ref(), upstream_seconds) {
        h.with_label_values(&[route]).observe(s);
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

pub fn config_reloaded(ok: bool, version: &str) {
    if let Some(c) = RELOADS.as_ref() {
        c.with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
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
