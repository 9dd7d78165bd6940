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
    /// The request reached OrionVM on some attempt (it may have carried it out): set once the
    /// connection carried it, kept across retries.
    pub request_sent: bool,
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
        self.request_sent = true;
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
    principal: Option<&str>,
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
    let caller = principal.map(|principal| super::budget::Caller {
        tenant: &tenant.name,
        principal,
    });
    let attempt = account
        .acquire_for(avoid, caller)
        .await
        .map_err(|e| match e {
            // A retry after a failed attempt found no other endpoint: report that failure (the
            // refusal itself was counted by `acquire`).
            UpstreamError::Open { .. } if avoid.is_some() => UpstreamError::NoOtherEndpoint,
            e => e,
        })?;
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

#[cfg(test)]
mod tests {
    use super::super::testing::{self, METRICS, NO_CHECKS, refused};
    use super::super::{UpstreamState, breaker};
    use super::*;
    use std::collections::HashSet;

    const GET: http::Method = http::Method::GET;

    /// An in-process OrionVM stand-in on 127.0.0.1:0 that answers every request with `status`.
    async fn answering(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let code = http::StatusCode::from_u16(status).unwrap();
        let app = axum::Router::new().fallback(move || async move { code });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// One attempt that OrionVM answers with `status`: claimed, answered, reported.
    async fn call(tenant: &Tenant, status: u16) -> Result<usize, UpstreamError> {
        let mut s = AttemptState::default();
        peer_for(&mut s, Some(tenant), None).await?;
        let i = s.endpoint.unwrap();
        s.answered(status);
        finish_attempt(&mut s);
        Ok(i)
    }

    fn breaker_config(threshold: u32, reset: f64, probes: u32) -> String {
        format!(
            "limits:\n  breaker: {{failure_threshold: {threshold}, reset_timeout_seconds: {reset}, half_open_probes: {probes}}}\n"
        )
    }

    #[tokio::test]
    async fn round_robin_over_the_healthy_endpoints() {
        let urls = vec![
            answering(200).await,
            answering(503).await,
            answering(200).await,
        ];
        let extra = "    health_check: {interval_ms: 60000, timeout_ms: 2000, healthy_threshold: 1, unhealthy_threshold: 1}\n";
        let state = UpstreamState::default();
        let tenant = testing::tenant(&testing::config(&urls, extra, ""), &state);
        let account = &tenant.account;
        assert!(account.pool.check_if_due(&account.endpoints).await);
        assert!(!account.endpoints[1].health.is_up());
        let mut picks = Vec::new();
        for _ in 0..6 {
            picks.push(call(&tenant, 200).await.unwrap());
        }
        assert_eq!(
            picks.iter().copied().collect::<HashSet<_>>(),
            HashSet::from([0, 2]),
            "{picks:?}"
        );
        assert!(
            picks.windows(2).all(|w| w[0] != w[1]),
            "alternates: {picks:?}"
        );
        // With no endpoint healthy, the first whose breaker lets a call through is used.
        let down = vec![answering(503).await, answering(500).await];
        let tenant = testing::tenant(&testing::config(&down, extra, ""), &state);
        let account = &tenant.account;
        assert!(account.pool.check_if_due(&account.endpoints).await);
        assert!(account.endpoints.iter().all(|e| !e.health.is_up()));
        assert_eq!(call(&tenant, 200).await, Ok(0));
        assert_eq!(call(&tenant, 200).await, Ok(0));
    }

    #[tokio::test]
    async fn a_retry_avoids_the_endpoint_that_failed_and_reports_it() {
        let state = UpstreamState::default();
        let tenant = testing::tenant(&testing::config(&testing::urls(2), NO_CHECKS, ""), &state);
        let account = &tenant.account;
        for _ in 0..4 {
            let mut s = AttemptState::default();
            peer_for(&mut s, Some(&tenant), None).await.unwrap();
            let first = s.endpoint.unwrap();
            assert!(
                connect_failed(&mut s, Some(account), false),
                "one more endpoint"
            );
            peer_for(&mut s, Some(&tenant), None).await.unwrap();
            assert_ne!(s.endpoint, Some(first));
            assert_eq!(s.attempts, 2);
            assert_eq!(s.failure, None);
            // The second endpoint failed too: nothing left to try.
            assert!(!connect_failed(&mut s, Some(account), true));
            finish_attempt(&mut s);
        }
        for e in &account.endpoints {
            let v = e.stats.snapshot();
            assert_eq!(v["requests"], 4, "{v}");
            assert_eq!(v["errors"], 4, "{v}");
        }
        assert_eq!(
            account.endpoints[0].stats.snapshot()["timeouts"]
                .as_u64()
                .unwrap()
                + account.endpoints[1].stats.snapshot()["timeouts"]
                    .as_u64()
                    .unwrap(),
            4
        );
    }

    #[tokio::test]
    async fn open_breakers_refuse_with_retry_after_and_are_counted() {
        let _one = METRICS.lock().await;
        let state = UpstreamState::default();
        let config = testing::config(&testing::urls(2), NO_CHECKS, &breaker_config(1, 30.0, 1));
        let tenant = testing::tenant(&config, &state);
        assert!(call(&tenant, 500).await.is_ok());
        assert!(call(&tenant, 502).await.is_ok());
        assert!(!tenant.account.available());
        let before = refused("open");
        let mut s = AttemptState::default();
        match peer_for(&mut s, Some(&tenant), None).await {
            Err(UpstreamError::Open { retry_after }) => {
                assert!((29..=30).contains(&retry_after), "{retry_after}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(s.attempts, 0);
        assert_eq!(refused("open"), before + 1);
        // The fast check before any upstream work counts its refusal too.
        assert!(matches!(
            tenant.account.refuse_open(),
            UpstreamError::Open { .. }
        ));
        assert_eq!(refused("open"), before + 2);
    }

    #[tokio::test]
    async fn an_open_breaker_on_the_retry_path_is_counted() {
        let _one = METRICS.lock().await;
        let state = UpstreamState::default();
        let config = testing::config(&testing::urls(2), NO_CHECKS, &breaker_config(1, 60.0, 1));
        let tenant = testing::tenant(&config, &state);
        let account = &tenant.account;
        let settings = account.breaker.unwrap();
        let b = &account.endpoints[1].breaker;
        b.try_acquire(&settings).unwrap().finish(false);
        assert_eq!(b.state(), breaker::State::Open);
        let before = refused("open");
        let mut s = AttemptState::default();
        peer_for(&mut s, Some(&tenant), None).await.unwrap();
        assert_eq!(s.endpoint, Some(0), "the open endpoint is skipped");
        assert!(connect_failed(&mut s, Some(account), false));
        let retry = peer_for(&mut s, Some(&tenant), None).await.map(|_| ());
        assert_eq!(retry, Err(UpstreamError::NoOtherEndpoint));
        assert_eq!(
            refused("open"),
            before + 1,
            "the refusal on the retry path is counted"
        );
    }

    #[tokio::test]
    async fn a_full_budget_refuses_with_busy_after_the_wait() {
        let _one = METRICS.lock().await;
        let state = UpstreamState::default();
        let top = "limits:\n  upstream: {max_concurrent_per_endpoint: 1, max_wait_ms: 80, max_waiting: 10}\n";
        let tenant = testing::tenant(&testing::config(&testing::urls(1), NO_CHECKS, top), &state);
        let mut holder = AttemptState::default();
        peer_for(&mut holder, Some(&tenant), None).await.unwrap();
        let before = refused("busy");
        let started = Instant::now();
        let mut s = AttemptState::default();
        let got = peer_for(&mut s, Some(&tenant), None).await.map(|_| ());
        assert!(matches!(got, Err(UpstreamError::Busy { .. })), "{got:?}");
        assert!(started.elapsed() >= Duration::from_millis(75));
        assert_eq!(refused("busy"), before + 1);
        // The answer is complete: the slot is free again.
        holder.release_budget();
        peer_for(&mut s, Some(&tenant), None).await.unwrap();
        assert_eq!(s.attempts, 1);
    }

    #[tokio::test]
    async fn half_open_lets_the_probes_through_then_closes() {
        let _one = METRICS.lock().await;
        let state = UpstreamState::default();
        let config = testing::config(&testing::urls(1), NO_CHECKS, &breaker_config(1, 1.0, 2));
        let tenant = testing::tenant(&config, &state);
        let breaker = &tenant.account.endpoints[0].breaker;
        assert!(call(&tenant, 503).await.is_ok());
        assert_eq!(breaker.state(), breaker::State::Open);
        assert!(matches!(
            call(&tenant, 200).await,
            Err(UpstreamError::Open { .. })
        ));
        // Past the reset timeout (1 s: long enough that a loaded machine's stall can't
        // half-open it before the assert that it is open).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut p1 = AttemptState::default();
        let mut p2 = AttemptState::default();
        peer_for(&mut p1, Some(&tenant), None).await.unwrap();
        peer_for(&mut p2, Some(&tenant), None).await.unwrap();
        assert_eq!(breaker.state(), breaker::State::HalfOpen);
        let third = peer_for(&mut AttemptState::default(), Some(&tenant), None)
            .await
            .map(|_| ());
        assert!(
            matches!(third, Err(UpstreamError::Open { .. })),
            "two probes only"
        );
        p1.answered(200);
        finish_attempt(&mut p1);
        assert_eq!(breaker.state(), breaker::State::HalfOpen);
        p2.answered(204);
        finish_attempt(&mut p2);
        assert_eq!(breaker.state(), breaker::State::Closed);
        assert_eq!(call(&tenant, 200).await, Ok(0));
    }

    #[tokio::test]
    async fn a_5xx_to_a_get_is_retried_on_another_endpoint_only_when_one_can_take_it() {
        let state = UpstreamState::default();
        let config = testing::config(&testing::urls(2), NO_CHECKS, &breaker_config(5, 60.0, 1));
        let tenant = testing::tenant(&config, &state);
        let account = &tenant.account;
        let mut s = AttemptState::default();
        peer_for(&mut s, Some(&tenant), None).await.unwrap();
        let first = s.endpoint.unwrap();
        for (method, status) in [(GET, 404), (http::Method::POST, 503), (GET, 499)] {
            s.answered(status);
            assert!(retry_on_5xx(&mut s, account, &method, status).is_none());
        }
        s.answered(503);
        let e = retry_on_5xx(&mut s, account, &GET, 503).expect("retried");
        assert!(e.retry());
        assert_eq!(*e.etype(), UPSTREAM_5XX);
        assert_eq!(s.failure, Some(Failure::Status5xx));
        assert!(s.attempt.is_none(), "the failed attempt was reported");
        let v = account.endpoints[first].stats.snapshot();
        assert_eq!(v["server_errors"], 1, "{v}");
        peer_for(&mut s, Some(&tenant), None).await.unwrap();
        assert_ne!(s.endpoint, Some(first));
        // Every endpoint was tried: the 5xx goes to the caller.
        s.answered(502);
        assert!(retry_on_5xx(&mut s, account, &GET, 502).is_none());

        // The other endpoint's breaker is open: no retry either.
        let settings = account.breaker.unwrap();
        let other = 1 - first;
        for _ in 0..5 {
            account.endpoints[other]
                .breaker
                .try_acquire(&settings)
                .unwrap()
                .finish(false);
        }
        let mut s = AttemptState::default();
        peer_for(&mut s, Some(&tenant), None).await.unwrap();
        assert_eq!(s.endpoint, Some(first));
        s.answered(503);
        assert!(retry_on_5xx(&mut s, account, &GET, 503).is_none());

        // One endpoint: nothing else to try.
        let single = testing::tenant(
            &testing::config(&testing::urls(1), NO_CHECKS, ""),
            &UpstreamState::default(),
        );
        let mut s = AttemptState::default();
        peer_for(&mut s, Some(&single), None).await.unwrap();
        s.answered(503);
        assert!(retry_on_5xx(&mut s, &single.account, &GET, 503).is_none());
    }

    #[tokio::test]
    async fn no_tenant_is_an_internal_error() {
        let got = peer_for(&mut AttemptState::default(), None, None)
            .await
            .map(|_| ());
        assert!(matches!(got, Err(UpstreamError::Internal(_))));
    }
}
