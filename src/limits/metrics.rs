//! The limits' own metric: calls refused before reaching OrionVM. Rate limits, the cache and
//! the breaker report through `crate::observe::metrics` (`orion_proxy_rate_limited_total`,
//! `orion_proxy_cache_requests_total`, `orion_proxy_coalesced_requests_total`,
//! `orion_proxy_breaker_state`, `orion_proxy_breaker_transitions_total`).

use once_cell::sync::Lazy;
use prometheus::{IntCounterVec, register_int_counter_vec};

static REFUSED: Lazy<Option<IntCounterVec>> = Lazy::new(|| {
    register_int_counter_vec!(
        "orion_proxy_upstream_refused_total",
        "Calls refused before reaching OrionVM (busy: budget exhausted, open: circuit open)",
        &["reason"]
    )
    .ok()
});

/// A call refused before reaching OrionVM: `busy` or `open`.
pub fn refused(reason: &str) {
    if let Some(c) = REFUSED.as_ref() {
        c.with_label_values(&[reason]).inc();
    }
}
