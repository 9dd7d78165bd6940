//! `upstream_peer` for the proxy pipeline: report how the previous attempt ended, claim an
//! endpoint (load balancer, breaker, budget) and build its pingora peer.

use super::stats::Outcome;
use crate::errors::ApiError;
use crate::proxy::ctx::Ctx;
use pingora::ErrorType;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use std::time::Instant;

/// Raised from `upstream_response_filter` when an endpoint answers a GET with a 5xx and
/// another endpoint can take it.
pub const UPSTREAM_5XX: ErrorType = ErrorType::Custom("upstream_5xx_retry");

/// The outcome of the current attempt, from what the phases recorded in the context.
fn outcome_of(ctx: &Ctx) -> Option<Outcome> {
    match ctx.upstream_failure {
        Some("connect") | Some("credentials") => Some(Outcome::Connect),
        Some("timeout") => Some(Outcome::Timeout),
        Some("reset") => Some(Outcome::Reset),
        _ => ctx.upstream_status.map(Outcome::Status),
    }
}

/// Reports the current attempt (if any) to its endpoint's stats and breaker.
pub fn finish_attempt(ctx: &mut Ctx) {
    if let Some(attempt) = ctx.limits.attempt.take()
        && let Some(outcome) = outcome_of(ctx)
    {
        attempt.finish(outcome, ctx.upstream_elapsed);
    }
}

pub async fn peer_for(ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let Some(tenant) = ctx.tenant.clone() else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "no tenant for an upstream call",
        ));
    };
    let avoid = if ctx.attempts > 0 && ctx.upstream_failure.is_some() {
        ctx.endpoint
    } else {
        None
    };
    finish_attempt(ctx);
    let attempt = match tenant.account.acquire(avoid).await {
        Ok(a) => a,
        Err(crate::limits::LimitsError::Open { .. }) if avoid.is_some() => {
            // A retry after a failed attempt found no other endpoint: report that failure.
            ctx.error = Some(ApiError::bad_gateway(
                "upstream_unreachable",
                "the proxy could not connect to OrionVM",
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no other OrionVM endpoint can take the call",
            ));
        }
        Err(e) => {
            let err = ApiError::from(e);
            let status = err.status;
            ctx.error = Some(err);
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "no OrionVM endpoint can take the call",
            ));
        }
    };
    let Some(endpoint) = tenant.account.endpoints.get(attempt.index) else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "endpoint index out of range",
        ));
    };
    ctx.endpoint = Some(attempt.index);
    ctx.attempts = ctx.attempts.saturating_add(1);
    ctx.upstream_failure = None;
    ctx.upstream_status = None;
    ctx.upstream_elapsed = None;
    ctx.upstream_started = Some(Instant::now());
    let peer = Box::new(endpoint.peer());
    ctx.limits.attempt = Some(attempt);
    Ok(peer)
}

/// After a 5xx to a GET: when another endpoint could take it, marks this attempt failed and
/// returns the error that makes pingora retry.
pub fn retry_on_5xx(ctx: &mut Ctx, method: &http::Method, status: u16) -> Option<Box<Error>> {
    if status < 500 || *method != http::Method::GET {
        return None;
    }
    let account = &ctx.tenant.as_ref()?.account;
    let endpoints = account.endpoints.len();
    if endpoints < 2
        || ctx.attempts as usize >= endpoints
        || !account.available_besides(ctx.endpoint?)
    {
        return None;
    }
    finish_attempt(ctx);
    ctx.upstream_failure = Some("5xx");
    let mut e = Error::explain(
        UPSTREAM_5XX,
        "OrionVM answered 5xx; trying another endpoint",
    );
    e.set_retry(true);
    Some(e)
}
