//! Peer selection for the proxied path (`upstream_peer` and the retry decisions around it):
//! report how the previous attempt ended, claim an endpoint (load balancer, breaker, budget)
//! and build its pingora peer. What these functions carry between Pingora's phases is in
//! [`AttemptState`], which the proxy's per-request context embeds; nothing here sees the
//! proxy or the session.

use super::error::{Failure, UpstreamError};
use super::stats::Outcome;
use super::{Account, Attempt, Tenant};
use pingora::ErrorType;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, Instant};

/// Raised from `upstream_response_filter` when an endpoint answers a GET with a 5xx and
/// another endpoint can take it.
pub const UPSTREAM_5XX: ErrorType = ErrorType::Custom("upstream_5xx_retry");

/// The upstream concern's part of one request: which endpoint the current attempt went to,
/// how many attempts were made, how the last one ended, and its claim on the endpoint.
#[derive(Default)]
pub struct AttemptState {
    /// Index of the endpoint of the current attempt.
    pub endpoint: Option<usize>,
    /// How many attempts were made.
    pub attempts: u8,
    /// How the current attempt failed, if it did.
    pub failure: Option<Failure>,
    /// OrionVM's status on the current attempt.
    pub status: Option<u16>,
    /// When the current attempt started, and how long OrionVM took to answer its headers.
    pub started: Option<Instant>,
    pub elapsed: Option<Duration>,
    /// The claim on the endpoint of the current attempt (breaker ticket, budget permit).
    pub attempt: Option<Attempt>,
    /// The one retry after OrionVM refused the proxy's token has been used.
    pub token_retry_used: bool,
    /// The OrionVM `Authorization` value sent on the current attempt.
    pub upstream_auth: Option<http::HeaderValue>,
}

impl AttemptState {
    /// The outcome of the current attempt, from what the phases recorded.
    fn outcome(&self) -> Option<Outcome> {
        match self.failure {
            Some(Failure::Connect | Failure::Credentials) => Some(Outcome::Connect),
            Some(Failure::Timeout) => Some(Outcome::Timeout),
            Some(Failure::Reset) => Some(Outcome::Reset),
            Some(Failure::Status5xx) | None => self.status.map(Outcome::Status),
        }
    }

    /// OrionVM's answer headers arrived: records the status and the time it took.
    pub fn answered(&mut self, status: u16) {
        self.status = Some(status);
        if let Some(t) = self.started {
            self.elapsed = Some(t.elapsed());
        }
    }

    /// The upstream answer is complete: its concurrency slot is free for the next call.
    pub fn release_budget(&mut self) {
        if let Some(a) = self.attempt.as_mut() {
            a.release_budget();
        }
    }
}

/// Reports the current attempt (if any) to its endpoint's stats and breaker.
pub fn finish_attempt(state: &mut AttemptState) {
    if let Some(attempt) = state.attempt.take()
        && let Some(outcome) = state.outcome()
    {
        attempt.finish(outcome, state.elapsed);
    }
}

/// Claims an endpoint of the tenant's account for the next attempt and returns its peer. On
/// a retry after a failed attempt the endpoint that failed is avoided; when no other endpoint
/// can take the call, the caller gets that failure ([`UpstreamError::NoOtherEndpoint`]).
pub async fn peer_for(
    state: &mut AttemptState,
    tenant: Option<&Tenant>,
) -> Result<Box<HttpPeer>, UpstreamError> {
    let Some(tenant) = tenant else {
        return Err(UpstreamError::Internal(
            "no tenant for an upstream call".into(),
        ));
    };
    let avoid = if state.attempts > 0 && state.failure.is_some() {
        state.endpoint
    } else {
        None
    };
    finish_attempt(state);
    let account = &tenant.account;
    let attempt = match account.acquire(avoid).await {
        Ok(a) => a,
        // A retry after a failed attempt found no other endpoint: report that failure.
        Err(UpstreamError::Open { .. }) if avoid.is_some() => {
            return Err(UpstreamError::NoOtherEndpoint);
        }
        Err(e) => {
            super::count_refusal(&e);
            return Err(e);
        }
    };
    let Some(endpoint) = account.endpoints.get(attempt.index) else {
        return Err(UpstreamError::Internal(
            "endpoint index out of range".into(),
        ));
    };
    state.endpoint = Some(attempt.index);
    state.attempts = state.attempts.saturating_add(1);
    state.failure = None;
    state.status = None;
    state.elapsed = None;
    state.started = Some(Instant::now());
    let peer = Box::new(endpoint.peer());
    state.attempt = Some(attempt);
    Ok(peer)
}

/// The connection to the endpoint of the current attempt failed (`fail_to_connect`): records
/// the failure and says whether another endpoint may take the call (nothing reached OrionVM,
/// so even a mutation can be retried).
pub fn connect_failed(
    state: &mut AttemptState,
    account: Option<&Account>,
    timed_out: bool,
) -> bool {
    let failure = if timed_out {
        Failure::Timeout
    } else {
        Failure::Connect
    };
    state.failure = Some(failure);
    crate::metrics::upstream_error(failure.as_str());
    let endpoints = account.map(|a| a.endpoints.len()).unwrap_or(0);
    (state.attempts as usize) < endpoints
}

/// The connection broke (or timed out) after the request was sent (`error_while_proxy`).
pub fn transport_failed(state: &mut AttemptState, timed_out: bool) {
    let failure = if timed_out {
        Failure::Timeout
    } else {
        Failure::Reset
    };
    state.failure = Some(failure);
    crate::metrics::upstream_error(failure.as_str());
}

/// After a 5xx to a GET: when another endpoint could take it, marks this attempt failed and
/// returns the error that makes pingora retry.
pub fn retry_on_5xx(
    state: &mut AttemptState,
    account: &Account,
    method: &http::Method,
    status: u16,
) -> Option<Box<Error>> {
    if status < 500 || *method != http::Method::GET {
        return None;
    }
    let endpoints = account.endpoints.len();
    if endpoints < 2
        || state.attempts as usize >= endpoints
        || !account.available_besides(state.endpoint?)
    {
        return None;
    }
    finish_attempt(state);
    state.failure = Some(Failure::Status5xx);
    let mut e = Error::explain(
        UPSTREAM_5XX,
        "OrionVM answered 5xx; trying another endpoint",
    );
    e.set_retry(true);
    Some(e)
}
