//! Prometheus metrics of the limits (the default registry that `/metrics` serves). Labels are
//! bounded: policy names from the config, fixed outcome names, endpoint names.

use once_cell::sync::Lazy;
use prometheus::{IntCounter, IntCounterVec, register_int_counter_vec};

static RATE_LIMITED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_rate_limited_total",
        "Requests refused with 429, by policy",
        &["policy"]
    )
    .ok()
});

static CACHE: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_read_cache_total",
        "Cached reads by how they were answered (hit, coalesced, miss, stale)",
        &["result"]
    )
    .ok()
});

static REFUSED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_upstream_refused_total",
        "Calls refused before reaching OrionVM (busy: budget exhausted, open: circuit open)",
        &["reason"]
    )
    .ok()
});

static BREAKER_OPENED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_breaker_opened_total",
        "Times an endpoint's circuit breaker opened",
        &["endpoint"]
    )
    .ok()
});

fn counter(vec: &Lazy<Option<IntCounterVec>>, label: &str) -> Option<IntCounter> {
    vec.as_ref()?.get_metric_with_label_values(&[label]).ok()
}

static HIT: Lazy<Option<IntCounter>> = Lazy::new(|| counter(&CACHE, "hit"));
static COALESCED: Lazy<Option<IntCounter>> = Lazy::new(|| counter(&CACHE, "coalesced"));
static MISS: Lazy<Option<IntCounter>> = Lazy::new(|| counter(&CACHE, "miss"));
static STALE: Lazy<Option<IntCounter>> = Lazy::new(|| counter(&CACHE, "stale"));

pub fn cache(result: &str) {
    let c = match result {
        "hit" => &HIT,
        "coalesced" => &COALESCED,
        "miss" => &MISS,
        _ => &STALE,
    };
    if let Some(c) = c.as_ref() {
        c.inc();
    }
}

pub fn rate_limited(policy: &str) {
    if let Some(c) = counter(&RATE_LIMITED, policy) {
        c.inc();
    }
}

pub fn refused(reason: &str) {
    if let Some(c) = counter(&REFUSED, reason) {
        c.inc();
    }
}

pub fn breaker_opened(endpoint: &str) {
    if let Some(c) = counter(&BREAKER_OPENED, endpoint) {
        c.inc();
    }
}
