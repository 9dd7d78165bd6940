//! `request_filter`'s admission: the decisions a request goes through before anything is
//! answered or sent upstream, each asked of the concern that owns it (`docs/ARCHITECTURE.md`,
//! section 3). Every step keeps what it decided in the context and returns its refusal as the
//! error body; `request_filter` writes it.

use super::body;
use super::ctx::Ctx;
use crate::errors::ApiError;
use crate::routes::{self, Route, RouteError};
use crate::runtime::Runtime;
use crate::upstream::Tenant;
use crate::{observe, validate};
use pingora::http::RequestHeader;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// Path and route, identity and tenant, rate limits, body, audit. `Err`: answer with that error.
pub(super) async fn admit(session: &mut Session, ctx: &mut Ctx) -> Result<(), ApiError> {
    let Some(rt) = ctx.runtime.clone() else {
        return Err(ApiError::internal("no configuration loaded"));
    };
    if missing_host(session.req_header()) {
        return Err(ApiError::new(
            400,
            "invalid_request",
            "The request is invalid",
            "an HTTP/1.1 request must carry a Host header",
        ));
    }
    let route = resolve_route(session.req_header(), &rt, ctx)?;
    // Routes without a principal (health, readiness, the API document, the token endpoint)
    // are limited per source address by `limits.anonymous_policy`; the token endpoint also
    // has its own brute-force limit in auth.
    let tenant = match route.needs_principal() {
        true => Some(identify(session.req_header(), &rt, &route, ctx).await?),
        false => None,
    };
    let (view, rl) = super::limits_view(session.req_header(), ctx);
    crate::limits::admit(&rt.limits, &view, rl).await?;
    if let Some(tenant) = tenant {
        read_body(session, ctx, &rt, &route, &tenant).await?;
    }
    // With `logging.audit.on_failure: closed`, no mutating call goes on unaudited.
    observe::audit_ready(&rt.log, &session.req_header().method)?;
    Ok(())
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host` is refused with 400 (Pingora
/// refuses two of them, and an absolute-form target naming another host, before any phase).
fn missing_host(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST)
}

/// The routing step (`crate::routes::resolve`): keeps the normalised path, the route and its
/// parameters in the context. A refusal after normalisation still leaves the normalised path
/// for the logs.
fn resolve_route(
    req: &RequestHeader,
    rt: &Runtime,
    ctx: &mut Ctx,
) -> Result<Arc<Route>, RouteError> {
    let max = rt.config.server.max_header_bytes;
    match routes::resolve(&rt.routes, &req.method, req.uri.path(), &req.headers, max) {
        Ok(r) => {
            ctx.path = r.path;
            ctx.route = Some(r.route.clone());
            ctx.params = r.params;
            Ok(r.route)
        }
        Err(e) => {
            if let Some(path) = e.path() {
                ctx.path = path.to_string();
            }
            Err(e)
        }
    }
}

/// Who is calling (`crate::auth`, which counts a refusal) and the tenant their calls go out
/// under (`crate::upstream`). A refusal's reason, and who was refused, stay for the logs.
async fn identify(
    req: &RequestHeader,
    rt: &Runtime,
    route: &Route,
    ctx: &mut Ctx,
) -> Result<Arc<Tenant>, ApiError> {
    let admitted = rt.auth.admit(&req.headers, route.permission.as_ref()).await;
    let principal = admitted.map_err(|e| {
        ctx.auth_failure = Some(e.reason());
        ctx.principal = e.principal().cloned();
        ApiError::from(e)
    })?;
    let tenant = rt.upstreams.tenant_for(&principal);
    ctx.principal = Some(principal);
    let tenant = tenant?;
    ctx.tenant = Some(tenant.clone());
    Ok(tenant)
}

/// `crate::validate` plans whether the body is read whole (a JSON body to check, a body to
/// sign); the proxy reads it within the limit and `validate` checks it. What was read and
/// checked is what goes upstream.
async fn read_body(
    session: &mut Session,
    ctx: &mut Ctx,
    rt: &Runtime,
    route: &Route,
    tenant: &Tenant,
) -> Result<(), ApiError> {
    let signs = tenant.account.credentials.signer().is_some();
    let method = &session.req_header().method;
    let has_body = body::declares_body(session);
    let plan = validate::plan(
        method,
        route,
        &rt.body_rules,
        rt.max_body_bytes,
        signs,
        has_body,
    );
    let validate::BodyPlan::Read { limit, json, rules } = plan else {
        return Ok(());
    };
    let deadline = Duration::from_millis(rt.config.server.timeouts.body_read_ms);
    let bytes = body::read_whole(session, limit, deadline)
        .await
        .map_err(validate::AdmitError::Body)?;
    let read = validate::finish(json, rules, bytes)?;
    ctx.request_bytes = read.received;
    ctx.body = read.body;
    ctx.validated = read.validated;
    Ok(())
}
